"""Small building blocks shared by the LCCo layers.

Axis legend: b batch of sets, n images per set, c channels, h w spatial, d vector width.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvFFN(nn.Sequential):
    """Convolutional feed-forward network: 1x1 conv, GELU, 1x1 conv.

    The paper's FFN_1 ... FFN_5 are "convolutional feed-forward networks"; this is that block,
    the transformer FFN applied per pixel.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        hidden_channels: width of the hidden layer (default: ``max(in_channels, out_channels)``).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int | None = None) -> None:
        hidden = hidden_channels or max(in_channels, out_channels)
        super().__init__(
            nn.Conv2d(in_channels, hidden, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(hidden, out_channels, kernel_size=1),
        )


class QuickGELU(nn.Module):
    r""":math:`x \cdot \sigma(1.702 x)`: the GELU approximation that OpenAI's CLIP and SegCLIP were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
"""Activations by name: ``"gelu"`` (exact, :class:`torch.nn.GELU`) or ``"quick_gelu"``."""


class MLP(nn.Sequential):
    """Two-layer perceptron on the last axis: Linear, activation (GELU by default), Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        hidden = hidden_features or max(in_features, out_features)
        super().__init__(
            nn.Linear(in_features, hidden),
            act_layer(),
            nn.Linear(hidden, out_features),
        )


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``(b, n, ...)`` over the valid images of each set: ``(b, ...)``."""
    w = valid.to(x.dtype).reshape(valid.shape + (1,) * (x.ndim - 2))
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def masked_sum(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` ``(b, n, ...)`` over the valid images of each set: ``(b, ...)``."""
    w = valid.to(x.dtype).reshape(valid.shape + (1,) * (x.ndim - 2))
    return (x * w).sum(dim=1)


def masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Max of ``x`` ``(b, n, ...)`` over the valid images of each set: ``(b, ...)``."""
    keep = valid.reshape(valid.shape + (1,) * (x.ndim - 2))
    return x.masked_fill(~keep, torch.finfo(x.dtype).min).amax(dim=1)


def unit_rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x`` scaled along its last axis to a root mean square of 1 (an L2 norm of ``sqrt(d)``)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
