"""The interface every placement solver implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from engage.deploy.placement.plan import PlacementPlan
from engage.deploy.placement.problem import PlacementProblem, PlacementProblemError


class PlacementSolver(ABC):
    """Chooses, for every request class, the node(s) and variant that serve it, and so what each
    node holds. ``previous`` is the plan in force: solvers start from it and count the moves.

    Example::

        >>> from engage.deploy.placement import GreedySolver, random_tree_problem
        >>> plan = GreedySolver().solve(random_tree_problem(nodes=5, models=3, seed=0))
        >>> plan.status
        'HEURISTIC'
    """

    #: what plans say in ``PlacementPlan.solver``
    name: str = "solver"

    @abstractmethod
    def solve(self, problem: PlacementProblem, previous: PlacementPlan | None = None) -> PlacementPlan:
        """The best plan this solver finds; raises ``PlacementInfeasible`` when none fits."""


def refuse_services(solver: str, problem: PlacementProblem) -> None:
    """For solvers that place model variants only: one line when ``problem`` has services."""
    if problem.services:
        raise PlacementProblemError(
            f"the {solver} solver places model variants only, and this problem has services "
            f"({', '.join(problem.services)}); use the cpsat or greedy solver"
        )
