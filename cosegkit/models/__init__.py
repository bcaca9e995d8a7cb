"""Assembled models."""

from cosegkit.models.lcco import VARIANTS, LCCo, get_variant
from cosegkit.models.output import LCCoOutput

__all__ = ["VARIANTS", "LCCo", "LCCoOutput", "get_variant"]
