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
- :mod:`~engage.deploy.serve.split`: split computing, a model's head on one host and its tail on
  another, with the measured figures the placement engine decides from;
- :class:`engage.deploy.callbacks.PublishWeights`: the Lightning callback that sends the weights
  being trained to every replica.
"""

from engage.deploy.serve.load import RequestGenerator, ServedRequest
from engage.deploy.serve.replica import ModelSpec, ReplicaSpec
from engage.deploy.serve.supervisor import ReplicaSupervisor
from engage.deploy.serve.weights import WeightStore

__all__ = ["ModelSpec", "ReplicaSpec", "ReplicaSupervisor", "RequestGenerator", "ServedRequest", "WeightStore"]
