"""Starts programs by forking a Python process that has imported what they need already, instead
of starting a new interpreter for each.

A short program's own work is often shorter than a fresh interpreter's start-up: ``engage run``
trains after importing Lightning, PyTorch and MLflow (about 8 CPU seconds on a small host), and a
sweep's job imports Hydra and cloudpickle. The server pays that once, importing the modules it is
told to preload; each program is then a forked child that runs ``module:function(argv)`` as
``python -m module ARGV`` would: its own process and session (signal its process group to stop it
and what it started), its own working directory (first on ``sys.path``), environment, command line
(``sys.argv``, and ``__main__.__spec__`` and ``__file__`` naming the module, as Lightning reads
them to start a DDP fit's other ranks) and log files; when the function returns it waits for its
non-daemon threads and runs its ``atexit`` handlers, as an interpreter ending would.

A program's ``PYTHONPATH`` may add folders to the server's: its ``sys.path`` then starts as a new
interpreter's would (the working directory, then its ``PYTHONPATH`` in order), so what it imports
from them is found.

What differs from a new interpreter: the module runs under its own name, not as ``__main__``;
a module the server preloaded stays the one it imported, even where an added folder holds another;
what the preloaded modules read when imported (thread-count variables such as
``OMP_NUM_THREADS``, ``PYTHONHASHSEED``, warning filters, the terminal's size) is the server's;
and what they printed or warned while imported went to the server's log. A program that depends
on these needs a new interpreter (the launcher's ``fork_jobs=false``).

The server talks to its client over its stdin and stdout, one JSON object per line::

    <- {"ready": true}                        (once it has imported what it preloads)
    -> {"id": 1, "target": "engage.deploy.runner:main", "argv": ["jobs/0"], "env": {...},
        "cwd": "...", "stdout": "...", "stderr": "..."}
    <- {"id": 1, "pid": 4242}                 (or {"id": 1, "error": "..."})
    <- {"pid": 4242, "returncode": 0}         (when that program's process ends)

Once its stdin closes (the client finished or died) it takes no more work, and exits when the
programs still running have ended.

Example (what the launcher does for each host that shares this machine's files)::

    >>> command = ForkServer.server_command(sys.executable, ["engage.deploy.runner"])  # doctest: +SKIP
    >>> server = ForkServer(command)  # doctest: +SKIP
    >>> process = server.start(  # doctest: +SKIP
    ...     "engage.deploy.runner:main", ["jobs/0"], env, cwd, "jobs/0/stdout.log", "jobs/0/stderr.log"
    ... )
    >>> process.wait()  # doctest: +SKIP
    0
    >>> server.close()  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

#: exit code of a forked program whose set-up (log files, working directory) failed; a module
#: that fails to import exits with 1, as ``python -m`` does
EXIT_SETUP_FAILED = 71
#: how long a client waits for the server to have imported what it preloads (seconds)
READY_TIMEOUT_S = 600.0


class ForkServerError(RuntimeError):
    """The fork server could not start a program (its client then starts an interpreter for it)."""


class ForkedProcess:
    """A program forked by a :class:`ForkServer`, with the part of :class:`subprocess.Popen` its
    clients use: ``pid``, ``returncode``, ``poll``, ``wait``, ``send_signal``, ``kill``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._orphaned = False

    def _set_returncode(self, code: int) -> None:
        self.returncode = code
        self._ended.set()

    def _orphan(self) -> None:
        # the server died: nobody will report the exit status; watch the pid instead
        self._orphaned = True
        self._ended.set()

    def poll(self) -> int | None:
        if self._orphaned and self.returncode is None and not _pid_alive(self.pid):
            self.returncode = -1  # its exit status went with the server
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout)
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The client's side: starts the server (``command``, an argv that runs this module, see
    :meth:`server_command`) and hands it programs to run. Thread-safe; :meth:`start` raises
    :class:`ForkServerError` when the server is gone or refuses."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        log_path: str | os.PathLike[str] = os.devnull,
    ) -> None:
        self.command = list(command)
        self.log_path = str(log_path)
        with open(self.log_path, "ab") as log:  # a file, not a pipe nobody reads, that could fill up
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(env) if env is not None else None,
                # where the server starts: the working directory of what it forks unless told another
                cwd=cwd,
                # its own session: Ctrl-C in the terminal reaches the client, which stops programs itself
                start_new_session=True,
            )
        self._lock = threading.Lock()
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._reply_ready = threading.Condition(self._lock)
        self._by_pid: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}  # exits reported before their start reply was read
        self._closed = False
        self._ready = False  # the server has imported what it preloads and reads requests
        self._reader = threading.Thread(target=self._read, name="engage-forkserver", daemon=True)
        self._reader.start()

    @staticmethod
    def server_command(python: str, preload: Sequence[str] = ()) -> list[str]:
        """The argv that runs a server with ``python``, importing the modules ``preload`` names
        before its first fork."""
        return [python, "-m", __name__, *(f"--preload={module}" for module in preload)]

    @property
    def alive(self) -> bool:
        return not self._closed and self._process.poll() is None

    def start(
        self,
        target: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        stdout: str,
        stderr: str,
        timeout_s: float = 60.0,
    ) -> ForkedProcess:
        """Fork a process that runs ``target`` (``"module:function"``) on ``argv``, as ``python -m
        module ARGV`` would, with exactly ``env``, in ``cwd``, appending to the files ``stdout``
        and ``stderr``; its exit status is the function's return value."""
        module, _, function = target.partition(":")
        if not module or not function:
            raise ValueError(f"target {target!r}: expected 'module:function'")
        request = {
            "target": target,
            "argv": list(argv),
            "env": dict(env),
            "cwd": cwd,
            "stdout": stdout,
            "stderr": stderr,
        }
        with self._lock:
            if not self.alive:
                raise ForkServerError(f"the fork server ({' '.join(self.command)}) is not running")
            # its preloading does not count against ``timeout_s``: a request is written once the
            # server reads them, so one given up on is never forked later
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not self._ready:
                if time.monotonic() >= deadline or not self.alive:
                    self._kill()
                    raise ForkServerError(f"the fork server did not get ready within {READY_TIMEOUT_S:.0f}s")
                self._reply_ready.wait(0.5)
            self._next_id += 1
            request_id = request["id"] = self._next_id
            try:
                assert self._process.stdin is not None
                self._process.stdin.write((json.dumps(request) + "\n").encode())
                self._process.stdin.flush()
            except OSError as exc:
                raise ForkServerError(f"the fork server stopped taking work: {exc}") from None
            deadline = time.monotonic() + timeout_s
            while request_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    self._kill()  # nothing it still holds is forked once given up on
                    raise ForkServerError(f"no answer from the fork server within {timeout_s:.0f}s")
                self._reply_ready.wait(min(left, 0.5))
            reply = self._replies.pop(request_id)
            if "error" in reply:
                raise ForkServerError(reply["error"])
            process = ForkedProcess(int(reply["pid"]))
            if process.pid in self._early_exits:
                process._set_returncode(self._early_exits.pop(process.pid))
            else:
                self._by_pid[process.pid] = process
            return process

    def close(self) -> None:
        """Stop the server (running programs go on; their exits are still reported until it is gone)."""
        with self._lock:
            self._closed = True
            try:
                if self._process.stdin is not None:
                    self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _kill(self) -> None:
        self._closed = True
        try:
            self._process.kill()
        except OSError:
            pass

    def log_tail(self, size: int = 2000) -> str:
        """The end of what the server wrote to its log (for error messages)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.fstat(log.fileno()).st_size - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                if message.get("ready"):
                    self._ready = True
                    self._reply_ready.notify_all()
                elif "id" in message:
                    self._replies[int(message["id"])] = message
                    self._reply_ready.notify_all()
                elif "returncode" in message:
                    pid, code = int(message["pid"]), int(message["returncode"])
                    process = self._by_pid.pop(pid, None)
                    if process is None:
                        self._early_exits[pid] = code
                    else:
                        process._set_returncode(code)
        # the server is gone: wake everyone waiting on it
        with self._lock:
            self._closed = True
            for process in self._by_pid.values():
                process._orphan()
            self._by_pid.clear()
            self._reply_ready.notify_all()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------- the server


#: the interpreter's variable for folders ahead of its own on ``sys.path``
PYTHONPATH_ENV = "PYTHONPATH"


def python_path_folders(env: Mapping[str, str]) -> list[str]:
    """The folders ``env``'s ``PYTHONPATH`` names, in order (an empty entry is the working
    directory, as for an interpreter)."""
    value = env.get(PYTHONPATH_ENV, "")
    return value.split(os.pathsep) if value else []


def _child(request: dict[str, Any], replies: int) -> None:
    """In the forked child: become the program's process, run it, never return."""
    code, interrupted = EXIT_SETUP_FAILED, False
    try:
        os.setsid()  # its own session and process group, as ``start_new_session`` gives
        # the handlers a new interpreter has
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(replies)
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for source, target in ((stdin, 0), (out, 1), (err, 2)):
            os.dup2(source, target)
            os.close(source)
        served = python_path_folders(os.environ)
        served_paths = {*served, *(os.path.abspath(entry) for entry in served)}  # as the server resolved them
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        code = 1  # from here on, what an uncaught exception in ``python -m module`` exits with
        # what ``python -m module`` has: the working directory first on the path, the module's
        # file as the program and its spec on ``__main__``
        if not sys.flags.safe_path:
            sys.path[0] = os.getcwd()
        wanted = python_path_folders(os.environ)
        if wanted != served:
            # its PYTHONPATH where an interpreter puts it, ahead of the rest of the server's path
            folders = list(dict.fromkeys(os.path.abspath(entry) for entry in wanted))
            start = 0 if sys.flags.safe_path else 1
            rest = [p for p in sys.path[start:] if p not in served_paths and p not in folders]
            sys.path[start:] = folders + rest
        name, _, function = request["target"].partition(":")
        module = importlib.import_module(name)
        sys.argv = [module.__file__ or name, *request["argv"]]
        main = sys.modules["__main__"]
        main.__spec__, main.__file__ = module.__spec__, module.__file__
        code = getattr(module, function)(list(request["argv"]))
        code = 0 if code is None else code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # anything at all: the child must not return into the server's loop
        import traceback

        traceback.print_exc()
        interrupted = isinstance(exc, KeyboardInterrupt)
    finally:
        try:
            _end_as_an_interpreter()
        finally:
            if interrupted:  # as Python ends on Ctrl-C: killed by SIGINT, for its parent to see
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(code if isinstance(code, int) else 1)


def _end_as_an_interpreter() -> None:
    """What a Python process does when its program returns: the threading module's exit hooks
    (executors shut down their workers there), then wait for its non-daemon threads, run its
    ``atexit`` handlers and flush its output (CPython's own order, through the function its
    finalization calls)."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # in every CPython this package supports
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def serve(preload: Sequence[str] = ()) -> int:
    """The server's loop: read requests from stdin, fork programs, report them and their exits on
    stdout (moved aside first, so that nothing printed by an import garbles the replies).
    ``preload``: the modules imported before any fork, so that every program starts with them in
    memory."""
    from engage.core.preimport import preimport

    commands, replies = 0, os.dup(1)
    os.dup2(2, 1)
    for module in preload:
        try:
            preimport(module)  # collector paused; frozen, so forked programs' collections skip them
        except Exception:  # the program that needs it imports it again, and says why it fails
            import traceback

            print(f"engage fork server: could not preload {module}:", file=sys.stderr)
            traceback.print_exc()
    sys.stdout.flush()  # nothing an import printed is copied into every program
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client decides when programs stop
    children: set[int] = set()
    buffered = b""
    open_input = True

    def send(message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(replies, data) :]

    send({"ready": True})
    while open_input or children:
        ready, _, _ = select.select([commands] if open_input else [], [], [], 0.05)
        if ready:
            chunk = os.read(commands, 1 << 16)
            if not chunk:
                open_input = False  # the client is done (or gone): exit once no program is left to report
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as exc:
                    send({"id": request["id"], "error": f"fork failed: {exc}"})
                    continue
                if pid == 0:
                    _child(request, replies)
                children.add(pid)
                send({"id": request["id"], "pid": pid})
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            try:
                send({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})
            except BrokenPipeError:
                pass  # the launcher is gone; keep reaping
        if not open_input and not children:
            break
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engage.core.forkserver [--preload=MODULE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m engage.core.forkserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE", help="a module to import first")
    return serve(parser.parse_args(argv).preload)


if __name__ == "__main__":
    sys.exit(main())
