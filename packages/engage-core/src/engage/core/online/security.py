"""Who may take part in a run: per-run CURVE keys, a ZAP handler that admits only them, and the
private folder where local simulations' sockets and keys live.

The trainer's socket is reachable by anyone who can reach its host and port, and its address is
on every simulation's command line. So, by default (``transport_security="curve"``), the socket
is a ZeroMQ CURVE server: the trainer makes one server keypair per run and one client keypair per
simulation attempt, and a ZAP handler (pyzmq's :mod:`zmq.auth`) admits only the client keys it
issued and not yet revoked. Every message a client sends then carries, as its ZAP ``User-Id``,
the attempt its key was issued for (``"<simulation id>:<attempt>"``); a message that claims
another simulation is dropped and counted. A client learns its keys from a ``0600`` file in the
run's ``0700`` folder (:data:`KEY_FILE_ENV` names it), or, for executors whose processes cannot
read the trainer's files, from the environment (:data:`KEYS_ENV`): never from its command line,
which every user of the host can read. The file is deleted when the attempt ends, and the folder
when the run does.

For simulations on the trainer's own host, ``transport_security="ipc"`` replaces CURVE with an
``ipc://`` socket inside the ``0700`` folder: only the trainer's OS user can connect, and no
message is encrypted.

Example::

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     keys = RunKeys(folder)
    ...     issued = keys.issue(7, 1)
    ...     keys.attempt_of(issued.public_key), sorted(load_client_keys({KEY_FILE_ENV: issued.path}))
    ...     keys.revoke(7, 1)
    ...     keys.attempt_of(issued.public_key)
    ('7:1', ['public', 'secret', 'server'])
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from engage.core.files import read_private, write_private

#: environment variable with the path of a simulation attempt's key file
KEY_FILE_ENV = "ENGAGE_KEY_FILE"
#: environment variable with a simulation attempt's keys themselves (JSON), for executors whose
#: processes cannot read the trainer's files
KEYS_ENV = "ENGAGE_KEYS"
#: the ZAP domain of the trainer's socket
ZAP_DOMAIN = "engage"
#: how a run's simulations reach the trainer: ``curve`` (authenticated, encrypted) or ``ipc``
#: (a socket file only the trainer's OS user can open: local simulations only)
TRANSPORT_SECURITY = ("curve", "ipc")

log = logging.getLogger("engage.online")


@dataclass(frozen=True)
class ClientKeys:
    """The keys issued to one simulation attempt, and the file that holds them (or None)."""

    simulation_id: int
    attempt: int
    public_key: bytes  # Z85
    secret_key: bytes  # Z85
    path: str | None

    @property
    def user_id(self) -> str:
        """The ZAP User-Id every message of this attempt carries."""
        return f"{self.simulation_id}:{self.attempt}"


def private_folder(path: str) -> str:
    """Create ``path`` (and its parents) with mode ``0700``, or make it so; returns it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


#: the name of a run's private folder starts with this
RUN_FOLDER_PREFIX = "engage-run-"
#: the file in a run's private folder that names the trainer process owning it
_OWNER_FILE = "owner.json"


def run_folder(parent: str | None = None) -> str:
    """A new ``0700`` folder for one run's keys and ``ipc`` socket in ``parent`` (default: the
    system's temporary folder), marked with this process.

    A trainer removes its folder when the run ends; one killed with SIGKILL cannot. So the
    folders of this user's trainers that are no longer running are removed here first (their
    keys admit nobody once their trainer is gone, but they should not outlive it).
    """
    import tempfile

    import psutil

    base = parent or tempfile.gettempdir()
    removed = remove_stale_run_folders(base)
    if removed:
        log.info("removed %d run folder(s) left by trainers that were killed: %s", len(removed), ", ".join(removed))
    path = private_folder(tempfile.mkdtemp(prefix=RUN_FOLDER_PREFIX, dir=base))
    owner = {"pid": os.getpid(), "started": psutil.Process().create_time()}
    with open(os.open(os.path.join(path, _OWNER_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(owner, out)
    return path


def remove_stale_run_folders(base: str) -> list[str]:
    """Remove the run folders in ``base`` of this OS user whose trainer process is gone (another
    process now holding its pid does not count); returns their paths."""
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.name.startswith(RUN_FOLDER_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, _OWNER_FILE)) as source:
                owner = json.load(source)
        except (OSError, ValueError):
            continue  # not a run folder, or one being created
        if not _trainer_alive(owner):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _trainer_alive(owner: Any) -> bool:
    import psutil

    try:
        process = psutil.Process(int(owner["pid"]))
        return abs(process.create_time() - float(owner["started"])) < 1.0
    except psutil.AccessDenied:
        return True
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


class RunKeys:
    """The keys of one run: its server keypair and the client keypairs it issued, by attempt.

    Thread-safe: the scheduler issues and revokes, the ZAP thread looks keys up.
    """

    def __init__(self, folder: str):
        self.folder = private_folder(folder)
        public, secret = zmq.curve_keypair()
        self.server_public, self.server_secret = public, secret
        self._lock = threading.Lock()
        self._by_key: dict[bytes, ClientKeys] = {}
        self._by_attempt: dict[tuple[int, int], ClientKeys] = {}

    def issue(self, simulation_id: int, attempt: int, to_file: bool = True) -> ClientKeys:
        """A new client keypair for one attempt; with ``to_file``, written to a ``0600`` file in
        the run's folder."""
        public, secret = zmq.curve_keypair()
        path = None
        if to_file:
            path = os.path.join(self.folder, f"sim-{simulation_id}-{attempt}.key")
            write_private(path, self.describe(public, secret))
        keys = ClientKeys(int(simulation_id), int(attempt), public, secret, path)
        with self._lock:
            self._by_key[public] = keys
            self._by_attempt[(keys.simulation_id, keys.attempt)] = keys
        return keys

    def describe(self, public: bytes, secret: bytes) -> str:
        """The JSON a client reads its keys from."""
        return json.dumps({"server": self.server_public.decode(), "public": public.decode(), "secret": secret.decode()})

    def environment(self, keys: ClientKeys) -> dict[str, str]:
        """The environment that gives a simulation process its keys."""
        if keys.path is not None:
            return {KEY_FILE_ENV: keys.path}
        return {KEYS_ENV: self.describe(keys.public_key, keys.secret_key)}

    def revoke(self, simulation_id: int, attempt: int) -> None:
        """Forget an attempt's key (its connection may no longer authenticate) and delete its file."""
        with self._lock:
            keys = self._by_attempt.pop((int(simulation_id), int(attempt)), None)
            if keys is not None:
                self._by_key.pop(keys.public_key, None)
        if keys is not None and keys.path is not None:
            try:
                os.unlink(keys.path)
            except FileNotFoundError:
                pass

    def attempt_of(self, public_key: bytes) -> str | None:
        """The User-Id of the attempt ``public_key`` (Z85) was issued to, if it is still valid."""
        with self._lock:
            keys = self._by_key.get(public_key)
        return None if keys is None else keys.user_id

    def close(self) -> None:
        """Revoke every key and delete the run's key folder."""
        with self._lock:
            self._by_key.clear()
            self._by_attempt.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


class _Provider:
    def __init__(self, keys: RunKeys):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return self.keys.attempt_of(key) is not None


def serve_curve(context: zmq.Context, sock: zmq.Socket, keys: RunKeys) -> Any:
    """Make ``sock`` a CURVE server admitting only ``keys``' clients, each message labelled with
    its attempt's User-Id; returns the started ZAP handler (``stop()`` it after closing ``sock``)."""
    from zmq.auth.thread import ThreadAuthenticator

    class _Authenticator(ThreadAuthenticator):
        def curve_user_id(self, client_public_key: bytes) -> str:
            from zmq.utils import z85

            return keys.attempt_of(z85.encode(client_public_key)) or ""

    authenticator = _Authenticator(context, log=logging.getLogger("engage.online.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_Provider(keys))
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.curve_secretkey = keys.server_secret
    sock.curve_publickey = keys.server_public
    sock.curve_server = True
    return authenticator


def load_client_keys(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """A simulation's keys from its environment (the key file, or the keys themselves); None when
    the trainer gave none (an ``ipc`` run). ``ValueError`` when they cannot be read."""
    environ = os.environ if environ is None else environ
    text = environ.get(KEYS_ENV)
    path = environ.get(KEY_FILE_ENV)
    if not text and path:
        text = read_private(path)
    if not text:
        return None
    try:
        keys = json.loads(text)
    except ValueError:
        raise ValueError("the keys from the trainer are not JSON") from None
    if not isinstance(keys, dict) or not all(
        isinstance(keys.get(k), str) and len(keys[k]) == 40 for k in ("server", "public", "secret")
    ):
        raise ValueError("the keys from the trainer need 'server', 'public' and 'secret' (Z85, 40 characters)")
    return keys


def use_client_keys(sock: zmq.Socket, keys: Mapping[str, str]) -> None:
    """Make ``sock`` a CURVE client with ``keys`` (before it connects)."""
    sock.curve_serverkey = keys["server"].encode()
    sock.curve_publickey = keys["public"].encode()
    sock.curve_secretkey = keys["secret"].encode()


class PeerWarnings:
    """Warnings about misbehaving peers, at most ``per_minute`` lines a minute for each, the
    rest counted and reported in the next line that is written."""

    def __init__(self, per_minute: int = 3):
        self.per_minute = per_minute
        self._windows: dict[str, tuple[float, int, int]] = {}  # peer -> (window start, written, held back)

    def warn(self, peer: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` about ``peer`` unless it had its lines this minute; whether it did."""
        now = time.monotonic()
        start, written, held = self._windows.get(peer, (now, 0, 0))
        if now - start >= 60:
            start, written = now, 0
        if written >= self.per_minute:
            self._windows[peer] = (start, written, held + 1)
            return False
        if len(self._windows) > 10_000:  # bounded, whatever the number of peers
            self._windows.clear()
        suffix = f" ({held} more from {peer} not shown)" if held else ""
        log.warning(message + "%s", *args, suffix)
        self._windows[peer] = (start, written + 1, 0)
        return True
