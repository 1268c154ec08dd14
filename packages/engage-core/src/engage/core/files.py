"""Files only their owner may read: keys, credentials, job contracts, model weights."""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: str | os.PathLike[str], data: str | bytes, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` readable and writable by its owner only (mode 0600), atomically.

    The data goes to a scratch file beside ``path`` (named by process and thread, so concurrent
    writers never share one), created 0600 and never through a symbolic link, and is then renamed
    over ``path``: a reader sees the old file or the new one, never half of one, and no other user
    can open it between creation and rename. With ``durable``, the data is on disk before it is
    named (a crash leaves no empty file behind the name). Returns the path.

    Example::

        >>> import stat, tempfile
        >>> path = write_private(Path(tempfile.mkdtemp()) / "token", "s3cret")
        >>> path.read_text(), oct(stat.S_IMODE(path.stat().st_mode))
        ('s3cret', '0o600')
    """
    path = Path(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # a scratch file left by a crash may have had another mode
            handle.write(data.encode() if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return path
