"""Files only their owner may read: keys, credentials, job contracts, model weights."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

__all__ = ["read_private", "write_private"]


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


def read_private(path: str | os.PathLike[str], limit: int = 4096) -> str:
    """The text of ``path``, a file only its owner may read or write (as :func:`write_private`
    writes them), at most ``limit`` bytes.

    The file is opened first (never through a symbolic link, never waiting on a FIFO) and checked
    on what was opened, so it cannot be swapped between the check and the read: a regular file,
    this user's, that no one else may read or write. :class:`ValueError`, one line naming the file
    and the fix, otherwise, or when it is larger than ``limit`` or cannot be read.

    Example::

        >>> import tempfile
        >>> path = write_private(Path(tempfile.mkdtemp()) / "key", "s3cret")
        >>> read_private(path)
        's3cret'
        >>> path.chmod(0o644)
        >>> read_private(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../key is readable by others (mode 644); chmod 600 it
    """
    try:
        # never through a link; a FIFO or device must not block the open
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise ValueError(f"{path} is a symbolic link; give the file itself") from None
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise ValueError(f"{path} is not a regular file")
    with os.fdopen(descriptor, "rb") as handle:
        if info.st_uid != os.geteuid():
            raise ValueError(f"{path} belongs to another user (uid {info.st_uid}); only its owner's files are read")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ValueError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes; it is not a key or credentials file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text") from None
