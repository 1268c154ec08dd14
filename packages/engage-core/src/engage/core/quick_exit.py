"""Exit without the interpreter's last garbage collection.

A process that imported PyTorch, Lightning and MLflow holds millions of objects, and at exit
CPython walks them all to collect the reference cycles among them: 1.7 s after
``engage run trainer.fast_dev_run=true`` had returned, 0.7 s after a one-job sweep of the engage
launcher. Nothing a process still has to do by then needs that walk: the exit handlers (logging's
flush, MLflow's asynchronous logging, multiprocessing's children, ``weakref.finalize``) all run,
and objects freed by their reference counts when the modules are cleared are still freed, files
flushed and closed. Only objects caught in reference cycles keep their finalizers unrun at exit,
which CPython does not promise to run then anyway.

Example::

    >>> from engage.core.quick_exit import skip_last_collection
    >>> skip_last_collection()  # at exit, gc.freeze() puts every object beyond the last collection
"""

from __future__ import annotations

import atexit
import gc

__all__ = ["skip_last_collection"]


def skip_last_collection() -> None:
    """Freeze every object of the process at exit (``gc.freeze()``), so that no collection walks
    them again. Registered once however often it is called, and only for the exit: a process
    that goes on (a sweeper launching batch after batch, a test session) keeps collecting."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
