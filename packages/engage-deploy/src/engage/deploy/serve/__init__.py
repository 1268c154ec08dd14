"""Serving a model while it trains (``engage-deploy[serve]``, LitServe).

- :mod:`~engage.deploy.serve.weights`: a replica's versioned weights on disk, checked against the
  model before they are kept;
- :mod:`~engage.deploy.serve.replica`: one inference replica, a LitServe server with two
  endpoints behind one API key: ``/predict`` (answers name the model version behind them) and
  ``/weights`` (a new version, swapped in between two requests);
- :mod:`~engage.deploy.serve.supervisor`: ``engage serve``, which runs a replica and starts it
  again when it dies;
- :mod:`~engage.deploy.serve.load`: a seeded request generator measuring latency, throughput and
  the answers' error against ground truth, logged to MLflow;
- :mod:`~engage.deploy.serve.demand`: request rates per source and served model, constant or on
  a schedule;
- :mod:`~engage.deploy.serve.placing`: where a sweep's replicas run, by the placement engine;
- :mod:`~engage.deploy.serve.services`: a job's replica and sender processes on their hosts;
- :mod:`~engage.deploy.serve.replacing`: replicas and routes re-placed every slot from the
  measured request rates;
- :mod:`~engage.deploy.serve.record`: what a job served, judged and recorded (``serving.json``,
  plots, one MLflow run per service);
- :mod:`~engage.deploy.serve.split`: split computing, a model's head on one host and its tail on
  another, with the measured figures the placement engine decides from;
- :class:`engage.deploy.callbacks.PublishWeights`: the Lightning callback that sends the weights
  being trained to every replica.
"""

from typing import TYPE_CHECKING

from engage.core.lazy import lazy_exports

if TYPE_CHECKING:
    from engage.deploy.serve.load import RequestGenerator, RequestPool, ServedRequest
    from engage.deploy.serve.replica import ModelSpec, ReplicaSpec
    from engage.deploy.serve.supervisor import ReplicaSupervisor
    from engage.deploy.serve.weights import WeightStore

# imported on first use: the launcher plans serving without loading torch
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ModelSpec": "engage.deploy.serve.replica",
        "ReplicaSpec": "engage.deploy.serve.replica",
        "ReplicaSupervisor": "engage.deploy.serve.supervisor",
        "RequestGenerator": "engage.deploy.serve.load",
        "RequestPool": "engage.deploy.serve.load",
        "ServedRequest": "engage.deploy.serve.load",
        "WeightStore": "engage.deploy.serve.weights",
    },
    globals(),
)

__all__ = [
    "ModelSpec",
    "ReplicaSpec",
    "ReplicaSupervisor",
    "RequestGenerator",
    "RequestPool",
    "ServedRequest",
    "WeightStore",
]
