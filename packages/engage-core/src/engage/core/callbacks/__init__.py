"""Lightning callbacks of engage-core, one public class a module."""

from engage.core.callbacks.last_validation import LastValidation
from engage.core.callbacks.progress_bar import EngageProgressBar
from engage.core.callbacks.trained_checkpoint import TrainedCheckpoint

__all__ = ["EngageProgressBar", "LastValidation", "TrainedCheckpoint"]
