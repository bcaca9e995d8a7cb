"""Assembled models."""

from cosegkit.models.lcco import VARIANTS, LCCo, get_variant
from cosegkit.models.output import LCCoOutput
from cosegkit.models.readout import GroupingReadout, GroupingReadoutOutput
from cosegkit.models.set_aware import GradientReport, SetAwareNetwork, SetAwareOutput, default_modules

__all__ = [
    "VARIANTS",
    "GradientReport",
    "GroupingReadout",
    "GroupingReadoutOutput",
    "LCCo",
    "LCCoOutput",
    "SetAwareNetwork",
    "SetAwareOutput",
    "default_modules",
    "get_variant",
]
