"""Assembled models."""

from cosegkit.models.lcco import VARIANTS, LCCo, get_variant
from cosegkit.models.output import LCCoOutput
from cosegkit.models.readout import GroupingReadout, GroupingReadoutOutput

__all__ = ["VARIANTS", "GroupingReadout", "GroupingReadoutOutput", "LCCo", "LCCoOutput", "get_variant"]
