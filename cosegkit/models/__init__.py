"""Assembled models."""

from cosegkit.models.lcco import LCCo
from cosegkit.models.output import LCCoOutput

__all__ = ["LCCo", "LCCoOutput"]
