"""Coarse segmentation decoder of LCCo eq. (11).

Axis legend (einops):
    b   batch of sets    n   images per set    d   CLIP embedding width
    h w CLIP patch grid
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum
from torch import nn

from cosegkit._validation import check_set_vectors, is_compiling
from cosegkit.errors import CosegShapeError

__all__ = ["CoarseMaskDecoder"]


class CoarseMaskDecoder(nn.Module):
    r"""Light-weight decoder from a set-aware CLIP image embedding to a coarse mask.

    The paper writes :math:`\hat M^c_i = \mathrm{Decoder}(\hat h^{img}_i)` (eq. 11) without
    saying how one vector becomes a mask. Here the vector is compared with CLIP's own dense
    patch tokens of the same image, projected into the joint embedding space:

    .. math::
        \hat M^c_i(x, y) = \tau \cdot \cos\big(W \hat h^{img}_i,\; t_i(x, y)\big) + \beta

    with a learnable projection :math:`W` (initialised to the identity), scale :math:`\tau`
    and bias :math:`\beta`. The mask lives on CLIP's patch grid (14 x 14 for ViT-B/16 at
    224 px). Its IoU loss against the downsampled ground truth pulls :math:`\hat h^{img}_i`,
    and so :math:`\mathrm{MLP}_1`, towards the patches of the common object: the purpose the
    paper gives for :math:`\mathcal L_{cs}`.

    Args:
        clip_dim: CLIP embedding width ``D``.
        init_scale: initial :math:`\tau`.

    Shape:
        - set_embeddings: :math:`(B, N, D)`
        - patch_tokens: :math:`(B, N, D, h, w)`
        - output: :math:`(B, N, 1, h, w)` logits

    Example:
        >>> import torch
        >>> from cosegkit.layers import CoarseMaskDecoder
        >>> CoarseMaskDecoder(16)(torch.randn(2, 3, 16), torch.randn(2, 3, 16, 7, 7)).shape
        torch.Size([2, 3, 1, 7, 7])
    """

    def __init__(self, clip_dim: int, *, init_scale: float = 10.0) -> None:
        super().__init__()
        self.clip_dim = clip_dim
        self.proj = nn.Linear(clip_dim, clip_dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, set_embeddings: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Coarse mask logits on the patch grid."""
        if not is_compiling():
            if patch_tokens.ndim != 5:
                raise CosegShapeError(
                    f"expected patch_tokens of shape (B, N, D, h, w), got {tuple(patch_tokens.shape)}"
                )
            b, n, d = patch_tokens.shape[:3]
            check_set_vectors(set_embeddings, b, n, self.clip_dim, name="set_embeddings")
            if d != self.clip_dim:
                raise CosegShapeError(f"expected patch_tokens with D = {self.clip_dim} at dim 2, got {d}")
        query = F.normalize(self.proj(set_embeddings), dim=-1)
        keys = F.normalize(patch_tokens.to(query.dtype), dim=2)
        cos = einsum(query, keys, "b n d, b n d h w -> b n h w")
        return (self.log_scale.exp() * cos + self.bias).unsqueeze(2)
