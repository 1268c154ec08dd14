"""OR-Tools CP-SAT solvers that leave Ctrl-C to Python.

CP-SAT catches SIGINT while it solves (``catch_sigint_signal``, on by default) and, when it is
done, puts back the system's default action rather than the handler that was there: after one
solve, Ctrl-C killed a process on the spot, without Python's ``KeyboardInterrupt`` (measured with
OR-Tools 9.15: ``SigCgt`` lost SIGINT while ``signal.getsignal`` still named Python's handler),
and a process that ignored SIGINT (a background job of a shell script) no longer did. A sweep
that placed its services, or a fit whose memory plan was solved, then died by Ctrl-C without
stopping its jobs, hosts or simulations and left its MLflow runs RUNNING. :func:`cp_solver`
turns that catching off: a Ctrl-C during a solve reaches Python when the solve returns (within
its time limit), as for any other call into a library.

ENGAGE's packages that solve with CP-SAT (engage-deploy's placement, engage-memory's planner)
depend on OR-Tools; engage-core does not, and imports it only when this is called.

Example (where OR-Tools is installed)::

    from engage.core.cpsat import cp_solver

    solver = cp_solver()
    solver.parameters.max_time_in_seconds = 10.0
    status = solver.solve(model)
"""

from __future__ import annotations

from typing import Any

__all__ = ["cp_solver"]


def cp_solver() -> Any:
    """A new ``ortools.sat.python.cp_model.CpSolver`` that does not touch SIGINT."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.catch_sigint_signal = False
    return solver
