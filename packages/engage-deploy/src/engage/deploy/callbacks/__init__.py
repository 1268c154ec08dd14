"""Lightning callbacks of engage-deploy, one public class a module."""

from engage.deploy.callbacks.publish_weights import PublishWeights
from engage.deploy.callbacks.serve_while_training import ServeWhileTraining
from engage.deploy.callbacks.slurm_requeue import SlurmRequeue

__all__ = ["PublishWeights", "ServeWhileTraining", "SlurmRequeue"]
