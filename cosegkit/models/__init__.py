"""Assembled models."""

from cosegkit.models.lcco import VARIANTS, LCCo, get_variant
from cosegkit.models.loading import ARCHITECTURES, load_model, read_model_config
from cosegkit.models.output import LCCoOutput
from cosegkit.models.readout import GroupingReadout, GroupingReadoutOutput
from cosegkit.models.segclip import SegClip, SegClipConfig
from cosegkit.models.set_aware import GradientReport, SetAwareNetwork, SetAwareOutput, default_modules
from cosegkit.models.ufo import UFO
from cosegkit.models.ufo_output import UFOOutput

__all__ = [
    "ARCHITECTURES",
    "UFO",
    "VARIANTS",
    "GradientReport",
    "GroupingReadout",
    "GroupingReadoutOutput",
    "LCCo",
    "LCCoOutput",
    "SegClip",
    "SegClipConfig",
    "SetAwareNetwork",
    "SetAwareOutput",
    "UFOOutput",
    "default_modules",
    "get_variant",
    "load_model",
    "read_model_config",
]
