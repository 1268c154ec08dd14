"""Reference surrogate models."""

from engage.core.models.heat_surrogate import HeatSurrogate

__all__ = ["HeatSurrogate"]
