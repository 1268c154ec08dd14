"""engage.core.cpsat: a CP-SAT solve leaves Python's Ctrl-C handling as it found it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytest.importorskip("ortools")

from engage.core.cpsat import cp_solver


def sigint_disposition() -> str:
    """What the kernel does with SIGINT for this process: caught, ignored or default (kills)."""
    status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    bit = 1 << (signal.SIGINT - 1)
    if int(status["SigCgt"], 16) & bit:
        return "caught"
    return "ignored" if int(status["SigIgn"], 16) & bit else "default"


def solve_once(solver) -> None:
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    x = model.new_int_var(0, 10, "x")
    model.maximize(x)
    assert solver.solve(model) == cp_model.OPTIMAL


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
@pytest.mark.parametrize(("handler", "expected"), [(signal.default_int_handler, "caught"), (signal.SIG_IGN, "ignored")])
def test_a_solve_leaves_ctrl_c_as_it_was(handler, expected) -> None:
    previous = signal.signal(signal.SIGINT, handler)
    try:
        assert sigint_disposition() == expected
        solve_once(cp_solver())
        assert sigint_disposition() == expected
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_the_packages_solvers_leave_ctrl_c_to_python() -> None:
    """A sweep that placed its services, or a fit whose memory plan was solved, still stops
    cleanly on Ctrl-C (they died on the spot, leaving hosts, jobs and RUNNING runs)."""
    placement = pytest.importorskip("engage.deploy.placement")
    placement.CpSatSolver(time_limit_s=5).solve(placement.random_tree_problem(nodes=4, models=2, seed=0))
    assert sigint_disposition() == "caught"
    pytest.importorskip("engage.memory")
    from engage.memory.profile import BlockProfile, DecisionCost, Profile
    from engage.memory.solver_cpsat import CpSatSolver

    def cost(nbytes, seconds):
        return DecisionCost(nbytes, nbytes, nbytes, -nbytes, seconds, seconds)

    blocks = [
        BlockProfile(str(i), {"keep": cost(100 * 1024, 1.0), "recompute": cost(10 * 1024, 2.0)}) for i in range(3)
    ]
    zero = {"keep": 0, "recompute": 0}
    profile = Profile(blocks, 0, 0, zero, zero, 0, [0, 1, 2], [2, 1, 0], True, 8.0, decisions=["keep", "recompute"])
    CpSatSolver().solve(profile, 250 * 1024)
    assert sigint_disposition() == "caught"
