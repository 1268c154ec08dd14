"""Lightning callbacks of engage-core, one public class a module."""

from engage.core.callbacks.last_validation import LastValidation
from engage.core.callbacks.progress_bar import EngageProgressBar

__all__ = ["EngageProgressBar", "LastValidation"]
