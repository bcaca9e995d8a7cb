"""Assembled models."""

from cosegkit.models.lcco import VARIANTS, LCCo, get_variant
from cosegkit.models.output import LCCoOutput
from cosegkit.models.loading import ARCHITECTURES, load_model, read_model_config
from cosegkit.models.ufo import UFO
from cosegkit.models.ufo_output import UFOOutput
from cosegkit.models.readout import GroupingReadout, GroupingReadoutOutput
from cosegkit.models.set_aware import GradientReport, SetAwareNetwork, SetAwareOutput, default_modules

__all__ = [
    "ARCHITECTURES",
    "VARIANTS",
    "GradientReport",
    "GroupingReadout",
    "GroupingReadoutOutput",
    "LCCo",
    "LCCoOutput",
    "SetAwareNetwork",
    "SetAwareOutput",
    "UFO",
    "UFOOutput",
    "default_modules",
    "get_variant",
    "load_model",
    "read_model_config",
]
