"""CLIP regularization, LCCo eq. (6)-(8).

Axis legend (einops):
    b   batch of sets    n   images per set    c   feature channels
    h w spatial size     d   CLIP embedding width    p   prompts (text bank)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import check_feature_set, check_set_vectors, check_text_bank, resolve_valid
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.layers._blocks import MLP, ConvFFN, masked_max, masked_mean, unit_rms

__all__ = ["POOLS", "ClipRegularization", "ClipRegularizationOutput"]

POOLS = {"max": masked_max, "mean": masked_mean}
"""How eq. (7) pools the per-image class scores over a set: ``"max"`` (the paper's global max
pooling) or ``"mean"``."""


class ClipRegularizationOutput(NamedTuple):
    """What :class:`ClipRegularization` returns.

    Attributes:
        features: regularised features :math:`\\hat F^3_i`, ``(B, N, C, h, w)`` (eq. 8).
        class_probs: :math:`v`, probabilities over the ``P`` prompts, ``(B, P)`` (eq. 7).
        common_class: :math:`i^*`, the set's most likely prompt, ``(B,)`` long (eq. 6).

    Example:
        >>> import torch
        >>> from cosegkit.layers import ClipRegularization, ClipRegularizationOutput
        >>> reg = ClipRegularization(32, clip_dim=16, num_prompts=10)  # C = 32, D = 16, P = 10
        >>> out = reg(torch.randn(2, 4, 32, 8, 8), torch.randn(2, 4, 10), torch.randn(10, 16))  # B = 2, N = 4
        >>> isinstance(out, ClipRegularizationOutput)
        True
        >>> for name, value in out._asdict().items():
        ...     print(name, tuple(value.shape), value.dtype)
        features (2, 4, 32, 8, 8) torch.float32
        class_probs (2, 10) torch.float32
        common_class (2,) torch.int64
        >>> torch.allclose(out.class_probs.sum(dim=-1), torch.ones(2))  # a distribution over the prompts
        True
        >>> bool((out.common_class == out.class_probs.argmax(dim=-1)).all())
        True
    """

    features: torch.Tensor
    class_probs: torch.Tensor
    common_class: torch.Tensor


class ClipRegularization(nn.Module):
    r"""CLIP regularization: find the set's most likely class and modulate features with it.

    Implements LCCo eq. (6)-(8):

    .. math::
        v = \operatorname{Softmax}\big(\operatorname{MAX}_i\, \mathrm{MLP}_3(s_i)\big), \qquad
        i^* = \arg\max_p v_p, \qquad
        \hat F_i = \mathrm{FFN}_5\big(\mathrm{FFN}_4(F_i) \odot \mathrm{PAD}(h^{txt}_{i^*})\big)

    where :math:`s_i` is row :math:`i` of the image-text similarity matrix :math:`S`. The max
    pool runs over the (valid) images of a set, so :math:`v` and :math:`i^*` do not depend on
    the order of the images. :math:`\mathrm{MLP}_3` starts with a LayerNorm over the ``P``
    similarities: raw CLIP cosines differ by a few hundredths between classes, and the norm
    makes the MLP see their ranking at a usable scale. The argmax passes no gradient; :math:`v`
    is trained by the classification loss of eq. (12).

    Args:
        channels: channels ``C`` of the feature maps.
        clip_dim: CLIP embedding width ``D``.
        num_prompts: vocabulary size ``P`` (rows of the text bank).
        hidden: hidden width of :math:`\mathrm{MLP}_3` (default ``P``).
        residual: add the input features to the output of eq. (8); off in the paper.

    Shape:
        - features: :math:`(B, N, C, h, w)`
        - similarity: :math:`(B, N, P)`
        - text_embeddings: :math:`(P, D)`
        - valid: :math:`(B, N)` boolean, optional
        - output: :class:`ClipRegularizationOutput`

    Example:
        >>> import torch
        >>> from cosegkit import ClipRegularization
        >>> reg = ClipRegularization(32, clip_dim=16, num_prompts=10)
        >>> out = reg(torch.randn(2, 4, 32, 8, 8), torch.randn(2, 4, 10), torch.randn(10, 16))
        >>> out.features.shape, out.class_probs.shape, out.common_class.shape
        (torch.Size([2, 4, 32, 8, 8]), torch.Size([2, 10]), torch.Size([2]))
    """

    def __init__(
        self,
        channels: int,
        clip_dim: int,
        num_prompts: int,
        *,
        hidden: int | None = None,
        residual: bool = False,
        unit_scale: bool = False,
        pool: str = "max",
        prior: float = 0.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.clip_dim = clip_dim
        self.num_prompts = num_prompts
        if pool not in POOLS:
            raise CosegValueError(f"pool must be one of {list(POOLS)}, got {pool!r}")
        if prior < 0:
            raise CosegValueError(f"prior must be non-negative, got {prior}")
        self.residual = residual
        self.unit_scale = unit_scale
        self.pool = pool
        self.prior = prior
        self.mlp3 = nn.Sequential(nn.LayerNorm(num_prompts), MLP(num_prompts, num_prompts, hidden or num_prompts))
        self.ffn4 = ConvFFN(channels, clip_dim)
        self.ffn5 = ConvFFN(clip_dim, channels)

    def classify(self, similarity: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (6)-(7): class logits (before the softmax) and :math:`i^*`, ``(b, p)`` and ``(b,)``."""
        scores = self.mlp3(similarity)
        if self.prior:
            scores = scores + self.prior * F.layer_norm(similarity, similarity.shape[-1:])  # CLIP's own ranking
        logits = POOLS[self.pool](scores, valid)
        return logits, logits.argmax(dim=-1)

    def forward(
        self,
        features: torch.Tensor,
        similarity: torch.Tensor,
        text_embeddings: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> ClipRegularizationOutput:
        """Regularise ``features`` towards the set's most likely CLIP class.

        Args:
            features: ``(B, N, C, h, w)``.
            similarity: ``(B, N, P)`` image-text similarity :math:`S`, e.g. from
                :class:`ClipInteraction` or :func:`~cosegkit.layers.clip_similarity`.
            text_embeddings: ``(P, D)`` CLIP text bank.
            valid: optional boolean ``(B, N)``; False marks padded images.

        Returns:
            A :class:`ClipRegularizationOutput`.
        """
        check_feature_set(features, self.channels)
        b, n = features.shape[:2]
        check_set_vectors(similarity, b, n, self.num_prompts, name="similarity")
        check_text_bank(text_embeddings, self.clip_dim)
        if text_embeddings.shape[0] != self.num_prompts:
            raise CosegShapeError(
                f"this module was built for num_prompts={self.num_prompts}, got a text bank of "
                f"{text_embeddings.shape[0]} prompts; the vocabulary size is fixed when the module (or "
                f"LCCo) is built, so build a new one for the new vocabulary"
            )
        valid = resolve_valid(valid, b, n, features.device)
        logits, common = self.classify(similarity, valid)
        probs = logits.softmax(dim=-1)

        x = rearrange(features, "b n c h w -> (b n) c h w")
        chosen = text_embeddings[common].to(x.dtype)  # h^{txt}_{i*}, (b, d)
        if self.unit_scale:
            chosen = unit_rms(chosen)
        t_map = rearrange(chosen, "b d -> b 1 d 1 1").expand(b, n, -1, 1, 1)
        out = self.ffn5(self.ffn4(x) * rearrange(t_map, "b n d 1 1 -> (b n) d 1 1"))  # eq. (8)
        out = rearrange(out, "(b n) c h w -> b n c h w", b=b)
        if self.residual:
            out = out + features
        return ClipRegularizationOutput(out, probs, common)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, clip_dim={self.clip_dim}, num_prompts={self.num_prompts}, "
            f"pool={self.pool!r}, prior={self.prior}, residual={self.residual}, unit_scale={self.unit_scale}"
        )
