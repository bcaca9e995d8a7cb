"""Top-down decoder blocks over an smp encoder's features.

Axis legend: (b n) images of all sets flattened, c channels, h w spatial.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "DecoderBlock", "feature_levels"]


class ConvBNReLU(nn.Sequential):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two :class:`ConvBNReLU` (a U-Net block)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = ConvBNReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


def feature_levels(out_channels: list[int] | tuple[int, ...]) -> list[int]:
    """Positions of an smp encoder's real feature maps, shallow to deep.

    smp encoders return the input image itself first, and transformer encoders put a
    0-channel placeholder at stride 2; both are skipped.
    """
    return [i for i, c in enumerate(out_channels) if i > 0 and c > 0]
