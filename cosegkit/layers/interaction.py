"""CLIP interaction, LCCo eq. (3)-(5).

Axis legend (einops):
    b   batch of sets        n   images per set      c   feature channels
    h w spatial size         d   CLIP embedding width
    p   prompts (text bank)  k   distilled prompts (top-K)
    t   attention tokens (n fused image embeddings + k text embeddings)
    g   heads                e   channels per head
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import (
    check_feature_set,
    check_set_vectors,
    check_text_bank,
    check_top_k,
    resolve_valid,
)
from cosegkit.errors import CosegValueError
from cosegkit.layers._blocks import MLP, ConvFFN, masked_mean, masked_sum, unit_rms
from cosegkit.layers.variants import resolve_settings

__all__ = ["ClipInteraction", "ClipInteractionOutput", "clip_similarity", "distill_text"]


class ClipInteractionOutput(NamedTuple):
    """What :class:`ClipInteraction` returns.

    Attributes:
        features: refined features :math:`\\hat F^2_i`, ``(B, N, C, h, w)`` (eq. 5).
        set_embeddings: image embeddings made set-aware by :math:`\\mathrm{MLP}_1`,
            :math:`\\hat h^{img}_i`, ``(B, N, D)`` (eq. 3); the coarse decoder of eq. (11) reads them.
        semantic_embeddings: fused text-image semantics :math:`z^{img}_i`, ``(B, N, D)`` (eq. 4).
        similarity: cosine similarity :math:`S` of image and text embeddings, ``(B, N, P)``.
        topk_indices: the distilled prompts, ``(B, K)`` long, by decreasing :math:`\\sigma`.

    Example:
        >>> import torch
        >>> from cosegkit.layers import ClipInteraction, ClipInteractionOutput
        >>> inter = ClipInteraction(32, clip_dim=16, top_k=3, heads=4)  # C = 32, D = 16, K = 3
        >>> out = inter(torch.randn(2, 4, 32, 8, 8), torch.randn(2, 4, 16), torch.randn(10, 16))  # B = 2, N = 4, P = 10
        >>> isinstance(out, ClipInteractionOutput)
        True
        >>> for name, value in out._asdict().items():
        ...     print(name, tuple(value.shape), value.dtype)
        features (2, 4, 32, 8, 8) torch.float32
        set_embeddings (2, 4, 16) torch.float32
        semantic_embeddings (2, 4, 16) torch.float32
        similarity (2, 4, 10) torch.float32
        topk_indices (2, 3) torch.int64
        >>> features, *_ = out  # a NamedTuple unpacks like a tuple
        >>> features.shape
        torch.Size([2, 4, 32, 8, 8])
    """

    features: torch.Tensor
    set_embeddings: torch.Tensor
    semantic_embeddings: torch.Tensor
    similarity: torch.Tensor
    topk_indices: torch.Tensor


def clip_similarity(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix :math:`S` between image and text embeddings.

    Args:
        image_embeddings: ``(B, N, D)``.
        text_embeddings: ``(P, D)``.

    Returns:
        ``(B, N, P)``.

    Example:
        >>> import torch
        >>> from cosegkit.layers import clip_similarity
        >>> clip_similarity(torch.randn(2, 3, 8), torch.randn(10, 8)).shape
        torch.Size([2, 3, 10])
    """
    return F.normalize(image_embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).T


def distill_text(similarity: torch.Tensor, top_k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Text semantic distillation: the ``top_k`` prompts that best match a whole set.

    :math:`\\sigma = \\sum_i S_i` over the (valid) images of a set; the distilled prompts are
    :math:`\\mathrm{TopK}(\\sigma)`.

    Args:
        similarity: ``(B, N, P)``.
        top_k: ``K``, at most ``P``.
        valid: optional boolean ``(B, N)``; padded images do not vote.

    Returns:
        ``(B, K)`` prompt indices, by decreasing :math:`\\sigma`.

    Example:
        >>> import torch
        >>> from cosegkit.layers import distill_text
        >>> similarity = torch.tensor([[[0.1, 0.9, 0.3],
        ...                             [0.2, 0.8, 0.5],
        ...                             [0.9, 0.0, 0.0]]])  # (B, N, P) = (1, 3, 3)
        >>> distill_text(similarity, top_k=2)  # sigma = [1.2, 1.7, 0.8]
        tensor([[1, 0]])
        >>> distill_text(similarity, top_k=2, valid=torch.tensor([[True, True, False]]))  # image 2 is padding
        tensor([[1, 2]])
        >>> distill_text(similarity, top_k=2).shape
        torch.Size([1, 2])
    """
    b, n, p = similarity.shape
    check_top_k(top_k, p)
    valid = resolve_valid(valid, b, n, similarity.device)
    sigma = masked_sum(similarity, valid)  # (b, p)
    return sigma.topk(top_k, dim=-1).indices


class ClipInteraction(nn.Module):
    r"""CLIP interaction: inject the set's CLIP semantics into a feature set.

    Implements LCCo eq. (3)-(5):

    1. *Text semantic distillation*: :math:`S = \cos(h^{img}_i, h^{txt}_p)`,
       :math:`\sigma = \sum_i S_i`, keep the text embeddings of :math:`\mathrm{TopK}(\sigma)`.
    2. *Text-image fusion*: :math:`\hat h^{img}_i = \mathrm{MLP}_1([h^{img}_i, \bar h^{img}])`
       (eq. 3), then :math:`z_i = \hat h^{img}_i + \mathrm{MLP}_2(\mathrm{Att}(\hat h^{img}_i,
       \mathcal H^{it}, \mathcal H^{it}))` with :math:`\mathcal H^{it}` the stack of the
       :math:`N` fused image embeddings and the :math:`K` distilled text embeddings (eq. 4).
    3. *Semantic modulation*: :math:`\hat F_i = \mathrm{FFN}_3(\mathrm{FFN}_2(F_i) \odot
       \mathrm{PAD}(z_i))` (eq. 5).

    The module is permutation-equivariant over the images of a set; padded images (``valid``
    False) do not count in :math:`\bar h^{img}` or :math:`\sigma` and are not attended to.

    Built with its defaults, the module is the one ``LCCo()`` builds (the ``"default"``
    variant of :data:`~cosegkit.layers.variants.VARIANTS`: residual, unit-RMS :math:`z_i`);
    ``variant="paper"`` gives eq. (5) as printed, with :math:`z_i` at unit RMS.

    Args:
        channels: channels ``C`` of the feature maps.
        clip_dim: CLIP embedding width ``D``.
        top_k: number ``K`` of distilled text embeddings (the paper uses 5).
        heads: attention heads of eq. (4); must divide ``clip_dim``.
        variant: ``"default"`` or ``"paper"``, the same names and settings as
            :class:`~cosegkit.LCCo`'s ``variant``; ``residual`` and ``unit_scale`` override it.
        residual: add the input features to the output of eq. (5), :math:`F_i + \hat F_i`
            (not in the paper). ``None`` takes the variant's (True in ``"default"``, False in
            ``"paper"``). The same setting as :class:`~cosegkit.LCCo`'s ``residual``.
        unit_scale: scale :math:`z_i` to a root mean square of 1 before it modulates the
            features. ``None`` takes the variant's (True in both).

    Shape:
        - features: :math:`(B, N, C, h, w)`
        - image_embeddings: :math:`(B, N, D)`, CLIP image embeddings (normalised or not)
        - text_embeddings: :math:`(P, D)`, the CLIP text bank
        - valid: :math:`(B, N)` boolean, optional
        - output: :class:`ClipInteractionOutput`

    Example:
        >>> import torch
        >>> from cosegkit import ClipInteraction
        >>> inter = ClipInteraction(32, clip_dim=16, top_k=3, heads=4)
        >>> out = inter(torch.randn(2, 4, 32, 8, 8), torch.randn(2, 4, 16), torch.randn(10, 16))
        >>> out.features.shape, out.similarity.shape, out.topk_indices.shape
        (torch.Size([2, 4, 32, 8, 8]), torch.Size([2, 4, 10]), torch.Size([2, 3]))
        >>> inter.residual, ClipInteraction(32, clip_dim=16, variant="paper").residual
        (True, False)
    """

    def __init__(
        self,
        channels: int,
        clip_dim: int,
        top_k: int = 5,
        heads: int = 8,
        *,
        variant: str = "default",
        residual: bool | None = None,
        unit_scale: bool | None = None,
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise CosegValueError(f"top_k must be at least 1, got {top_k}")
        if clip_dim % heads != 0:
            raise CosegValueError(f"heads={heads} must divide clip_dim={clip_dim}")
        self.channels = channels
        self.clip_dim = clip_dim
        self.top_k = top_k
        self.heads = heads
        settings = resolve_settings(variant, residual=residual, unit_scale=unit_scale)
        self.residual: bool = settings["residual"]
        self.unit_scale: bool = settings["unit_scale"]
        self.mlp1 = MLP(2 * clip_dim, clip_dim)
        self.to_q = nn.Linear(clip_dim, clip_dim)
        self.to_kv = nn.Linear(clip_dim, 2 * clip_dim)
        self.to_out = nn.Linear(clip_dim, clip_dim)
        self.mlp2 = MLP(clip_dim, clip_dim)
        self.ffn2 = ConvFFN(channels, clip_dim)
        self.ffn3 = ConvFFN(clip_dim, channels)

    def fuse(
        self,
        image_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        topk_indices: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (3)-(4): set-aware image embeddings and fused semantics.

        Args:
            image_embeddings: ``(b, n, d)``.
            text_embeddings: ``(p, d)``.
            topk_indices: ``(b, k)``.
            valid: boolean ``(b, n)``.

        Returns:
            ``set_embeddings`` :math:`\\hat h^{img}` and ``semantic_embeddings`` :math:`z`, both
            ``(b, n, d)``.
        """
        b, n, d = image_embeddings.shape
        mean = masked_mean(image_embeddings, valid)  # \bar h^{img}, (b, d)
        cat = torch.cat([image_embeddings, mean[:, None].expand(b, n, d)], dim=-1)
        fused = self.mlp1(cat)  # eq. (3)
        text_k = text_embeddings[topk_indices]  # (b, k, d)
        tokens = torch.cat([fused, text_k.to(fused.dtype)], dim=1)  # STK: (b, n + k, d)
        q = rearrange(self.to_q(fused), "b n (g e) -> b g n e", g=self.heads)
        k, v = rearrange(self.to_kv(tokens), "b t (two g e) -> two b g t e", two=2, g=self.heads)
        keep = torch.cat([valid, valid.new_ones(b, text_k.shape[1])], dim=1)  # padded images are no keys
        msg = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        msg = self.to_out(rearrange(msg, "b g n e -> b n (g e)"))
        return fused, fused + self.mlp2(msg)  # eq. (4)

    def forward(
        self,
        features: torch.Tensor,
        image_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> ClipInteractionOutput:
        """Refine ``features`` with the set's distilled CLIP semantics.

        Args:
            features: ``(B, N, C, h, w)``.
            image_embeddings: ``(B, N, D)`` CLIP image embeddings of the same images.
            text_embeddings: ``(P, D)`` CLIP text bank, ``P >= top_k``.
            valid: optional boolean ``(B, N)``; False marks padded images.

        Returns:
            A :class:`ClipInteractionOutput`.
        """
        check_feature_set(features, self.channels)
        b, n = features.shape[:2]
        check_set_vectors(image_embeddings, b, n, self.clip_dim, name="image_embeddings")
        check_text_bank(text_embeddings, self.clip_dim)
        valid = resolve_valid(valid, b, n, features.device)

        similarity = clip_similarity(image_embeddings, text_embeddings)
        topk = distill_text(similarity, self.top_k, valid)
        fused, z = self.fuse(image_embeddings, text_embeddings, topk, valid)

        x = rearrange(features, "b n c h w -> (b n) c h w")
        gate = unit_rms(z) if self.unit_scale else z
        z_map = rearrange(gate, "b n d -> (b n) d 1 1")  # PAD: broadcast over h, w
        out = self.ffn3(self.ffn2(x) * z_map.to(x.dtype))  # eq. (5)
        out = rearrange(out, "(b n) c h w -> b n c h w", b=b)
        if self.residual:
            out = out + features
        return ClipInteractionOutput(out, fused, z, similarity, topk)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, clip_dim={self.clip_dim}, top_k={self.top_k}, heads={self.heads}, "
            f"residual={self.residual}, unit_scale={self.unit_scale}"
        )
