"""A program forked by the fork server is what ``python -m module ARGV`` would have been: its own
process and session, command line, working directory, environment and output files; it ends as
an interpreter does (threads joined, ``atexit`` handlers run) with its function's exit code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from engage.core.forkserver import ForkServer, ForkServerError

PROGRAM = """
import atexit, json, os, sys, threading, time, __main__
from concurrent.futures import ThreadPoolExecutor

def main(argv):
    facts = {
        "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "pid": os.getpid(),
        "sid": os.getsid(0), "env": os.environ.get("PROBE"), "home": os.environ.get("HOME"),
        "spec": __main__.__spec__.name, "main_file": __main__.__file__,
    }
    print(json.dumps(facts))
    print("to stderr", file=sys.stderr)
    late = threading.Thread(target=lambda: (time.sleep(0.3), open("thread-done", "w").close()))
    late.start()
    ThreadPoolExecutor(1).submit(time.sleep, 0.1)  # never shut down: Python's exit hook does it
    atexit.register(lambda: open("atexit-done", "w").write(str(os.getpid())))
    if argv and argv[0] == "raise":
        sys.exit(5)
    return int(argv[0]) if argv else 0
"""


@pytest.fixture
def server(tmp_path: Path):
    server = ForkServer(ForkServer.server_command(sys.executable, ["json"]), cwd=str(tmp_path))
    yield server
    server.close()


def test_a_forked_program_is_what_python_dash_m_would_run(tmp_path: Path, server: ForkServer) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "probe_program.py").write_text(PROGRAM)
    out, err = work / "out.log", work / "err.log"
    process = server.start("probe_program:main", ["3"], {"PROBE": "yes"}, str(work), str(out), str(err))
    assert process.wait(timeout=30) == 3
    facts = json.loads(out.read_text())
    assert facts["argv"] == [str(work / "probe_program.py"), "3"] and facts["spec"] == "probe_program"
    assert facts["main_file"] == str(work / "probe_program.py")
    assert facts["cwd"] == facts["path0"] == str(work)
    assert facts["env"] == "yes" and facts["home"] is None  # exactly the environment it was given
    assert facts["sid"] == facts["pid"] == process.pid  # its own session
    assert err.read_text() == "to stderr\n"
    # it ended as an interpreter ends: its executor shut down, its thread finished, its atexit handlers ran
    assert (work / "thread-done").exists() and (work / "atexit-done").read_text() == str(process.pid)

    raised = server.start("probe_program:main", ["raise"], {}, str(work), str(out), str(err))
    assert raised.wait(timeout=30) == 5  # sys.exit(5) is exit code 5


def test_a_program_that_cannot_start_fails_alone(tmp_path: Path, server: ForkServer) -> None:
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    missing = server.start("no_such_module_here:main", [], {}, str(tmp_path), str(out), str(err))
    assert missing.wait(timeout=30) == 1 and "ModuleNotFoundError" in err.read_text()
    assert server.alive
    with pytest.raises(ValueError, match="module:function"):
        server.start("no_colon", [], {}, str(tmp_path), str(out), str(err))
    server.close()
    with pytest.raises(ForkServerError, match="not running"):
        server.start("json:main", [], dict(os.environ), str(tmp_path), str(out), str(err))


def test_an_interrupted_program_ends_killed_by_sigint_as_python_does(tmp_path: Path, server: ForkServer) -> None:
    (tmp_path / "interrupted_program.py").write_text("def main(argv):\n    raise KeyboardInterrupt\n")
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    process = server.start("interrupted_program:main", [], {}, str(tmp_path), str(out), str(err))
    assert process.wait(timeout=30) == -2 and "KeyboardInterrupt" in err.read_text()


def test_a_slow_preload_is_not_counted_against_a_start_and_its_output_is_not_copied(tmp_path: Path) -> None:
    # what a server imports first may take long (Lightning: seconds) and print; neither reaches a program
    (tmp_path / "slow_import.py").write_text("import time\nprint('imported once')\ntime.sleep(2)\n")
    (tmp_path / "quick_program.py").write_text("def main(argv):\n    print('ran')\n")
    server = ForkServer(ForkServer.server_command(sys.executable, ["slow_import"]), cwd=str(tmp_path))
    try:
        out, err = tmp_path / "out.log", tmp_path / "err.log"
        process = server.start("quick_program:main", [], {}, str(tmp_path), str(out), str(err), timeout_s=1)
        assert process.wait(timeout=30) == 0
        assert out.read_text() == "ran\n"
    finally:
        server.close()


def test_a_program_finds_modules_in_the_folders_its_pythonpath_adds(tmp_path: Path, server: ForkServer) -> None:
    helpers, work = tmp_path / "helpers", tmp_path / "work"
    helpers.mkdir()
    work.mkdir()
    program = "import os, sys\n\ndef main(argv):\n    print(sys.path.index(os.path.dirname(__file__)))\n"
    (helpers / "helper_module.py").write_text(program)
    out, err = work / "out.log", work / "err.log"
    found = server.start("helper_module:main", [], {"PYTHONPATH": str(helpers)}, str(work), str(out), str(err))
    assert found.wait(timeout=30) == 0, err.read_text()
    assert out.read_text() == "1\n"  # after the working directory, where an interpreter puts PYTHONPATH
    alone = server.start("helper_module:main", [], {}, str(work), str(out), str(err))
    assert alone.wait(timeout=30) == 1 and "ModuleNotFoundError" in err.read_text()  # added for that program only
