"""Placement on the edge-to-cloud continuum with OR-Tools.

* inference delivery networks: which model variant on which node, which node serves each request
  class, where a model is split (:class:`PlacementProblem`; :class:`CpSatSolver`,
  :class:`GreedySolver`, :class:`ExhaustiveSolver`; :func:`pareto_front`; re-placement through
  ``previous`` and ``max_moves``);
* services placed whole (a trainer, simulators) beside the models, on the same nodes, links and
  capacities (:class:`Service`, :mod:`~engage.deploy.placement.services`); an infrastructure's
  services are one such problem (:func:`~engage.deploy.placement.workflow.place_services`, what
  the launcher's ``placement: optimize`` and ``engage place INFRASTRUCTURE`` solve).

Example::

    >>> from engage.deploy.placement import CpSatSolver, GreedySolver, random_tree_problem
    >>> problem = random_tree_problem(nodes=10, models=5, seed=0)
    >>> optimal, greedy = CpSatSolver().solve(problem), GreedySolver().solve(problem)
    >>> optimal.objective <= greedy.objective + 1e-9
    True
"""

from engage.deploy.placement.cpsat import CpSatSolver
from engage.deploy.placement.exhaustive import ExhaustiveSolver
from engage.deploy.placement.greedy import GreedySolver
from engage.deploy.placement.instances import random_tree_problem
from engage.deploy.placement.pareto import metric_value, pareto_front
from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan, Route
from engage.deploy.placement.problem import (
    Link,
    Measured,
    Model,
    Node,
    PlacementProblem,
    PlacementProblemError,
    Requests,
    SplitPoint,
    Variant,
    Weights,
)
from engage.deploy.placement.services import Service
from engage.deploy.placement.solver import PlacementSolver

__all__ = [
    "CpSatSolver",
    "ExhaustiveSolver",
    "GreedySolver",
    "Link",
    "Measured",
    "Model",
    "Node",
    "PlacementInfeasible",
    "PlacementPlan",
    "PlacementProblem",
    "PlacementProblemError",
    "PlacementSolver",
    "Requests",
    "Route",
    "Service",
    "SplitPoint",
    "Variant",
    "Weights",
    "metric_value",
    "pareto_front",
    "random_tree_problem",
]
