"""The interface every placement solver implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from engage.deploy.placement.plan import PlacementPlan
from engage.deploy.placement.problem import PlacementProblem


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
