"""Lightning callbacks of engage-deploy, one public class a module."""

from engage.deploy.callbacks.publish_weights import PublishWeights

__all__ = ["PublishWeights"]
