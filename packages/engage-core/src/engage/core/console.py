"""A quiet console for ``engage run``: Lightning's advertising tips and the warnings about its own
internals that a user cannot act on are left out; everything else is printed as it comes."""

from __future__ import annotations

import logging
import warnings

#: how Lightning's tips start (``rank_zero_info("💡 Tip: ...")``)
TIP_PREFIX = "💡 Tip:"
#: the loggers Lightning's rank-zero messages go through
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
#: Lightning's package loggers, which print its messages
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
#: warnings a user of ``engage run`` cannot act on (regular expressions): Lightning's about its
#: own use of other libraries, and its advice to prefix the command with ``srun`` wherever Slurm
#: is installed (``engage run`` puts runs in Slurm jobs through its launcher, never so)
INTERNAL_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The `srun` command is available on your system but is not used",
)


class NoTips(logging.Filter):
    """Drops Lightning's tips (records whose message starts with :data:`TIP_PREFIX`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


#: libraries whose DEBUG lines ``hydra.verbose=true`` would otherwise show by the hundred (font
#: lookups, image encoders) unless named on their own
LIBRARY_CHATTER = ("matplotlib", "PIL")


def quiet_lightning() -> None:
    """Print Lightning's messages once, on standard error, whenever it was imported; leave its tips
    and its internal deprecation warnings out of the console (once per process; calling it again
    changes nothing).

    Example::

        >>> quiet_lightning()
        >>> any(isinstance(f, NoTips) for f in logging.getLogger(RANK_ZERO_LOGGERS[0]).filters)
        True
    """
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.propagate and not logger.handlers:
            # as Lightning sets itself up when imported before logging is configured: its messages
            # once, on standard error (imported after Hydra configured the root logger, they
            # would also reach the root's handlers, beside the ``lightning`` logger's own)
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoTips) for f in logger.filters):
            logger.addFilter(NoTips())
    for pattern in INTERNAL_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIBRARY_CHATTER:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # hydra.verbose=true; hydra.verbose=[matplotlib] sets it
            logger.setLevel(logging.INFO)


class WarningsAndAbove(logging.Filter):
    """Lets records of level WARNING and above through (a console that says only what went wrong)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_other_ranks(rank: int) -> None:
    """On a rank other than 0 of a distributed fit, the console shows only warnings and errors:
    rank 0 says how the run goes, and every rank's own log file keeps everything (Hydra's file
    handlers are left as they are). Nothing on rank 0.

    Example::

        >>> quiet_other_ranks(0)  # rank 0 keeps its console as it is
    """
    if rank == 0:
        return
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and not any(isinstance(f, WarningsAndAbove) for f in handler.filters):
            handler.addFilter(WarningsAndAbove())
