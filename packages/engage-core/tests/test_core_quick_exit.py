"""A process that asked to skip the last garbage collection still collects until it exits, runs
every exit handler, flushes what it wrote, and keeps its exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import atexit, gc, logging, sys
    # registered first, so run last: after the freeze, as every handler registered before the call
    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
    from engage.core.quick_exit import skip_last_collection
    skip_last_collection()
    skip_last_collection()  # a second sweep in the same process
    logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
    logging.info("written before exit")
    class Cycle:
        pass
    a, b = Cycle(), Cycle()
    a.other, b.other = b, a
    del a, b
    print("collected while running:", gc.collect() > 0, "frozen:", gc.get_freeze_count(), flush=True)
    sys.exit(3)
    """
)


def test_the_process_collects_until_its_exit_and_exits_as_it_would(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["collected while running: True frozen: 0", "frozen at exit: True"]
    assert log.read_text().strip() == "INFO:root:written before exit"
    assert done.stderr == ""
