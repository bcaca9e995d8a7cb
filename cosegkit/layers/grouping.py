r"""Set-level grouping with learnable centres (after SegCLIP), and read-outs of its groups.

Axis legend (einops):
    b   batch of sets            n   images per set
    c   channels                 h w  spatial size of the feature map
    l   tokens of a set (n * h * w)   t   tokens of one image (h * w)
    g   groups (centres)         k   keys: the centres and the tokens (g + l)
    e   channels per attention head   a   attention heads
    d   CLIP embedding width
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from cosegkit._validation import check_feature_set, is_compiling, resolve_valid, shape_str
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.layers._blocks import ACTIVATIONS, MLP, masked_mean

__all__ = [
    "READOUTS",
    "SetGrouping",
    "SetGroupingOutput",
    "clip_readout",
    "coverage_readout",
    "group_mask_logits",
    "gumbel_assignment",
    "readout_masks",
    "score_readout",
    "set_coverage",
]

READOUTS: tuple[str, ...] = ("score", "coverage", "clip")
"""The read-outs that pick a set's co-segment among its groups: see :func:`~cosegkit.layers.score_readout`,
:func:`~cosegkit.layers.coverage_readout` and :func:`~cosegkit.layers.clip_readout`."""


class SetGroupingOutput(NamedTuple):
    r"""What :class:`SetGrouping` returns.

    Attributes:
        features: ``(B, N, C, h, w)``: every token combined with its group (see
            :class:`SetGrouping`); padded images keep their input.
        assignment: ``(B, N, G, h, w)``: each token's share in every group, summing to 1 over
            ``G``; one-hot with straight-through gradients in training, a softmax in eval;
            zero on padded images.
        logits: ``(B, N, G, h, w)``: the assignment logits (centres . keys), before noise.
        group_embeddings: ``(B, G, C)``: the groups, pooled over all valid images of the set.
        coverage: ``(B, G)`` in [0, 1]: the share of the set's valid images in which each
            group holds tokens (:func:`~cosegkit.layers.set_coverage`).
        scores: ``(B, G)``: each group's co-segment logit, :math:`s_g = w^\top [E_g \| \kappa_g] + b`;
            trained only through a loss on :func:`~cosegkit.layers.group_mask_logits`
            (LCCo's grouping mask loss), read by :func:`~cosegkit.layers.score_readout`.
        distortion: ``(B,)``: the k-means distortion of the grouping,
            :math:`\frac{1}{C T} \sum_t \| \bar x_t - \sum_g A_{g,t} \mu_g \|^2` over the
            :math:`T` valid tokens, with :math:`\bar x_t` the token's features layer-normalised without
            gradient and :math:`\mu_g` their mean over the group; a loss on it (LCCo's
            ``distortion_weight``) trains the assignment alone to make groups homogeneous.

    Example:
        >>> import torch
        >>> from cosegkit import SetGrouping
        >>> out = SetGrouping(16, num_groups=4, heads=2).eval()(torch.randn(2, 3, 16, 5, 5))
        >>> for name, value in out._asdict().items():
        ...     print(name, tuple(value.shape))
        features (2, 3, 16, 5, 5)
        assignment (2, 3, 4, 5, 5)
        logits (2, 3, 4, 5, 5)
        group_embeddings (2, 4, 16)
        coverage (2, 4)
        scores (2, 4)
        distortion (2,)
        >>> torch.allclose(out.assignment.sum(dim=2), torch.ones(2, 3, 5, 5))
        True
    """

    features: torch.Tensor
    assignment: torch.Tensor
    logits: torch.Tensor
    group_embeddings: torch.Tensor
    coverage: torch.Tensor
    scores: torch.Tensor
    distortion: torch.Tensor


def _distortion(tokens: torch.Tensor, assignment: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Per set, the mean squared distance of each token's normalised features to its group's mean: ``(b,)``."""
    points = F.layer_norm(tokens.detach(), tokens.shape[-1:])  # (b, l, c): fixed targets
    means = torch.einsum("bgl,blc->bgc", assignment, points) / assignment.sum(dim=2, keepdim=True).clamp_min(1.0)
    rebuilt = torch.einsum("bgl,bgc->blc", assignment, means)
    error = (points - rebuilt).pow(2).mean(dim=-1) * live.to(points.dtype)  # (b, l)
    return error.sum(dim=1) / live.sum(dim=1).clamp_min(1).to(points.dtype)


def group_mask_logits(assignment: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    r"""Mask logits of the grouping, ``(B, N, 1, h, w)``: each token takes its group's score.

    :math:`m_t = \sum_g A_{g,t} s_g`: for a one-hot assignment (training) exactly the score of
    the token's group; for a soft one (eval) the mixture of the scores.

    Example:
        >>> import torch
        >>> from cosegkit.layers import group_mask_logits
        >>> a = torch.zeros(1, 1, 2, 1, 3)
        >>> a[0, 0, 0, 0, :2], a[0, 0, 1, 0, 2] = 1.0, 1.0  # tokens 0, 1 in group 0; token 2 in group 1
        >>> group_mask_logits(a, torch.tensor([[4.0, -4.0]])).flatten().tolist()
        [4.0, 4.0, -4.0]
    """
    return torch.einsum("bnghw,bg->bnhw", assignment, scores.to(assignment.dtype))[:, :, None]


def gumbel_assignment(logits: torch.Tensor, tau: float = 0.9, *, dim: int = 1, noise: bool = True) -> torch.Tensor:
    r"""A hard assignment with straight-through gradients: SegCLIP's ``gumbel_softmax(hard=True)``.

    :math:`y = \operatorname{softmax}((\ell + \gamma) / \tau)` over ``dim`` with Gumbel noise
    :math:`\gamma` (none when ``noise`` is False); the forward value is the one-hot of
    :math:`\arg\max y`, the gradient that of :math:`y`.

    Example:
        >>> import torch
        >>> from cosegkit.layers.grouping import gumbel_assignment
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.4]], requires_grad=True)  # 3 groups, 2 tokens
        >>> hard = gumbel_assignment(logits, noise=False, dim=0)
        >>> hard.tolist()
        [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
        >>> (hard * torch.tensor([[1.0], [2.0], [3.0]])).sum().backward()
        >>> bool(logits.grad.abs().sum() > 0)  # the gradient of the softmax reaches the logits
        True
    """
    if noise:
        gumbels = -torch.empty_like(logits).exponential_().log()
        logits = logits + gumbels
    soft = (logits / tau).softmax(dim=dim)
    index = soft.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


def set_coverage(assignment: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    r"""The share of a set's valid images in which each group holds tokens: ``(B, G)``.

    :math:`\kappa_g = \frac{1}{|V|} \sum_{i \in V} \max_{t} A_{g, i, t}` over the valid images
    :math:`V`. For a one-hot assignment it counts the images where group :math:`g` owns at
    least one token; for a soft one it is the same with each image's largest share.

    Args:
        assignment: ``(B, N, G, h, w)``.
        valid: boolean ``(B, N)``.

    Example:
        >>> import torch
        >>> from cosegkit.layers.grouping import set_coverage
        >>> a = torch.zeros(1, 2, 3, 1, 2)  # 2 images of 2 tokens, 3 groups
        >>> a[0, 0, 0, 0, 0] = a[0, 0, 1, 0, 1] = 1  # image 0: groups 0 and 1
        >>> a[0, 1, 0, 0, :] = 1  # image 1: group 0 only
        >>> set_coverage(a, torch.ones(1, 2, dtype=torch.bool)).tolist()
        [[1.0, 0.5, 0.0]]
    """
    presence = assignment.flatten(3).amax(dim=3)  # (b, n, g)
    return masked_mean(presence, valid)


class _CentreBlock(nn.Module):
    """Pre-norm cross-attention of the centres to [centres; tokens], then an MLP, both residual."""

    def __init__(self, channels: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(channels, 2 * channels)
        self.to_out = nn.Linear(channels, channels)
        self.norm_mlp = nn.LayerNorm(channels)
        self.mlp = MLP(channels, channels, int(mlp_ratio * channels), act_layer)

    def forward(self, centres: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``centres`` (b, g, c), ``tokens`` (b, l, c), ``keep`` (b, g + l): the keys that take part."""
        kv = self.norm_kv(torch.cat([centres, tokens], dim=1))
        q = rearrange(self.to_q(self.norm_q(centres)), "b g (a e) -> b a g e", a=self.heads)
        k, v = rearrange(self.to_kv(kv), "b k (two a e) -> two b a k e", two=2, a=self.heads)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        centres = centres + self.to_out(rearrange(attended, "b a g e -> b g (a e)"))
        return centres + self.mlp(self.norm_mlp(centres))


class SetGrouping(nn.Module):
    r"""Group all tokens of an image set with ``G`` learnable centres shared by the set.

    SegCLIP's semantic learner (``SemanticLearnerModule`` of its public code), run over the
    tokens of every valid image of a set at once, so that one centre collects the same kind of
    region in every image; a group present in every image is a candidate co-segment.

    1. Centres :math:`Q \in \mathbb R^{G \times C}` (truncated normal, std 0.02) go through
       ``layers`` blocks of pre-norm cross-attention to the keys
       :math:`[Q; X]`, all tokens :math:`X` of all valid images of the set (padding excluded),
       each followed by an MLP, both residual; then a LayerNorm: :math:`\tilde Q`.
    2. Keys and values of the assignment: grouped 1x1 projections of the LayerNorm-ed tokens
       (groups = ``heads``), the keys LayerNorm-ed again: :math:`K, V`.
    3. Logits :math:`\ell_{g,t} = \tilde Q_g \cdot K_t`; assignment
       :math:`A = \operatorname{softmax}_g((\ell + \gamma)/\tau)` with Gumbel noise
       :math:`\gamma`, one-hot with straight-through gradients, in training
       (:func:`~cosegkit.layers.gumbel_assignment`); :math:`A = \operatorname{softmax}_g(\ell)` in eval.
    4. Group embeddings :math:`E_g = \mathrm{MLP}(\mathrm{LN}(\tilde Q_g + \frac{\sum_t
       A_{g,t} V_t}{\max(1, \sum_t A_{g,t})}))`, the sums over every valid token of the set;
       coverage :math:`\kappa_g` (:func:`~cosegkit.layers.set_coverage`).
    5. Features: each token combined with its group and projected back,
       :math:`F'_t = F_t + W_o \big[\sum_g A_{g,t} E_g \,\|\, \sum_g A_{g,t} \kappa_g\big]`
       (:math:`W_o` linear, :math:`C + 1 \to C`), so that the next layer sees which group a
       token is in and how much of the set that group covers.
    6. Scores: :math:`s_g = w^\top [E_g \| \kappa_g] + b`, each group's logit of being the
       co-segment (:func:`~cosegkit.layers.group_mask_logits`, :func:`~cosegkit.layers.score_readout`).

    The centres' attention is one batched
    :func:`~torch.nn.functional.scaled_dot_product_attention` call per block for all sets of
    the batch. Padded images (``valid`` False) take no part: their tokens are masked out of
    the attention, get a zero assignment and keep their features.

    Args:
        channels: channels ``C`` of the feature maps.
        num_groups: centres ``G`` (SegCLIP's 8).
        heads: attention heads of the centres' cross-attention, also the groups of the key
            and value projections; must divide ``channels``.
        layers: cross-attention blocks (SegCLIP's SegViT uses 2).
        tau: Gumbel-softmax temperature (SegCLIP's 0.9).
        mlp_ratio: hidden width of the MLPs as a multiple of ``channels``.
        logit_scale: factor on the logits :math:`\ell` (SegCLIP's 1).
        activation: ``"gelu"`` (the default) or ``"quick_gelu"``
            (:math:`x \cdot \sigma(1.702 x)`), the activation of the centres' MLPs and the
            last one of the group embeddings (:math:`E_g`'s outer activation). SegCLIP's group
            blocks use QuickGELU: pass ``"quick_gelu"`` to run weights trained by SegCLIP. The
            MLP inside :math:`E_g` keeps GELU in both, as SegCLIP's ``Mlp`` does. The default
            stays GELU: the layer trains from scratch, no SegCLIP weights are loaded into it,
            and its measured results (the equations page) were made with GELU.

    Shape:
        - features: :math:`(B, N, C, h, w)`
        - valid: :math:`(B, N)` boolean, optional
        - output: a :class:`SetGroupingOutput`

    Example:
        >>> import torch
        >>> from cosegkit import SetGrouping
        >>> grouping = SetGrouping(32, num_groups=6, heads=4)
        >>> out = grouping(torch.randn(2, 5, 32, 7, 7))
        >>> out.features.shape, out.assignment.shape, out.group_embeddings.shape, out.coverage.shape
        (torch.Size([2, 5, 32, 7, 7]), torch.Size([2, 5, 6, 7, 7]), torch.Size([2, 6, 32]), torch.Size([2, 6]))
        >>> sorted(out.assignment.unique().tolist())  # training: one-hot
        [0.0, 1.0]
    """

    def __init__(
        self,
        channels: int,
        num_groups: int = 8,
        heads: int = 8,
        layers: int = 2,
        *,
        tau: float = 0.9,
        mlp_ratio: float = 4.0,
        logit_scale: float = 1.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if not isinstance(num_groups, int) or num_groups < 1:
            raise CosegValueError(f"num_groups must be a positive integer, got {num_groups!r}")
        if not isinstance(layers, int) or layers < 0:
            raise CosegValueError(f"layers must be a non-negative integer, got {layers!r}")
        if heads < 1 or channels % heads != 0:
            raise CosegValueError(
                f"heads={heads} must divide channels={channels}; choose heads from "
                f"{[h for h in range(1, min(channels, 16) + 1) if channels % h == 0]}"
            )
        if tau <= 0:
            raise CosegValueError(f"tau must be positive, got {tau}")
        if logit_scale <= 0:
            raise CosegValueError(f"logit_scale must be positive, got {logit_scale}")
        if activation not in ACTIVATIONS:
            raise CosegValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}; 'quick_gelu' is "
                f"SegCLIP's, 'gelu' the default"
            )
        self.channels, self.num_groups, self.heads, self.tau = channels, num_groups, heads, tau
        self.activation = activation
        act_layer = ACTIVATIONS[activation]
        self.logit_scale = logit_scale
        self.centres = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_groups, channels), std=0.02))
        self.blocks = nn.ModuleList(_CentreBlock(channels, heads, mlp_ratio, act_layer) for _ in range(layers))
        self.norm_centres = nn.LayerNorm(channels)
        self.norm_tokens = nn.LayerNorm(channels)
        self.to_k = nn.Conv1d(channels, channels, kernel_size=1, groups=heads, bias=False)
        self.norm_k = nn.LayerNorm(channels)
        self.to_v = nn.Conv1d(channels, channels, kernel_size=1, groups=heads, bias=False)
        self.embed = nn.Sequential(
            nn.LayerNorm(channels), MLP(channels, channels, int(mlp_ratio * channels)), act_layer()
        )
        self.to_out = nn.Linear(channels + 1, channels)
        self.score = nn.Linear(channels + 1, 1)

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> SetGroupingOutput:
        """Group the tokens of every set of the batch.

        Args:
            features: ``(B, N, C, h, w)`` feature set.
            valid: optional boolean ``(B, N)``; False marks padded images.

        Returns:
            A :class:`SetGroupingOutput`.
        """
        check_feature_set(features, self.channels)
        b, n, _, h, w = features.shape
        valid = resolve_valid(valid, b, n, features.device)
        tokens = rearrange(features, "b n c h w -> b (n h w) c")
        live = repeat(valid, "b n -> b (n t)", t=h * w)  # (b, l)

        centres = repeat(self.centres.to(tokens.dtype), "g c -> b g c", b=b)
        keep = torch.cat([torch.ones(b, self.num_groups, dtype=torch.bool, device=features.device), live], dim=1)
        for block in self.blocks:
            centres = block(centres, tokens, keep)
        centres = self.norm_centres(centres)

        normed = rearrange(self.norm_tokens(tokens), "b l c -> b c l")
        keys = self.norm_k(rearrange(self.to_k(normed), "b c l -> b l c"))
        values = rearrange(self.to_v(normed), "b c l -> b l c")
        logits = self.logit_scale * torch.einsum("bgc,blc->bgl", centres, keys)
        # Gumbel noise and the straight-through one-hot in training only
        assignment = gumbel_assignment(logits, self.tau, dim=1) if self.training else logits.softmax(dim=1)
        assignment = assignment * live[:, None, :].to(assignment.dtype)

        pooled = torch.einsum("bgl,blc->bgc", assignment, values) / assignment.sum(dim=2, keepdim=True).clamp_min(1.0)
        embeddings = self.embed(centres + pooled)  # (b, g, c)
        as_maps = "b g (n h w) -> b n g h w"
        assignment_maps = rearrange(assignment, as_maps, n=n, h=h, w=w)
        coverage = set_coverage(assignment_maps, valid)

        described = torch.cat([embeddings, coverage[..., None].to(embeddings.dtype)], dim=-1)  # (b, g, c + 1)
        back = torch.einsum("bgl,bgc->blc", assignment, embeddings)
        back_cov = torch.einsum("bgl,bg->bl", assignment, coverage.to(assignment.dtype))[..., None]
        out = tokens + self.to_out(torch.cat([back, back_cov], dim=-1))
        distortion = _distortion(tokens, assignment, live)
        out = rearrange(out, "b (n h w) c -> b n c h w", n=n, h=h, w=w)
        out = torch.where(valid[:, :, None, None, None], out, features)
        return SetGroupingOutput(
            features=out,
            assignment=assignment_maps,
            logits=rearrange(logits, as_maps, n=n, h=h, w=w),
            group_embeddings=embeddings,
            coverage=coverage,
            scores=self.score(described)[..., 0],
            distortion=distortion,
        )

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_groups={self.num_groups}, heads={self.heads}, "
            f"layers={len(self.blocks)}, tau={self.tau}, activation={self.activation!r}"
        )


# ---------------------------------------------------------------------- read-outs
def _check_grouping(assignment: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if not is_compiling() and assignment.ndim != 5:
        raise CosegShapeError(
            f"expected an assignment of shape (B, N, G, h, w), got {shape_str(assignment)}; "
            f"pass SetGroupingOutput.assignment"
        )
    b, n = assignment.shape[:2]
    return resolve_valid(valid, b, n, assignment.device)


def _hard(assignment: torch.Tensor) -> torch.Tensor:
    """The one-hot of each token's largest share (zero where the assignment is zero: padding)."""
    hard = F.one_hot(assignment.argmax(dim=2), assignment.shape[2]).movedim(-1, 2).to(assignment.dtype)
    return hard * (assignment.sum(dim=2, keepdim=True) > 0)


def _owns_tokens(assignment: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, G)``: whether each group is the largest share of at least one token of a valid image."""
    return (_hard(assignment) * valid[:, :, None, None, None]).sum(dim=(1, 3, 4)) > 0


def readout_masks(assignment: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The chosen group's share of every token, ``(B, N, 1, h, w)`` in [0, 1].

    Args:
        assignment: ``(B, N, G, h, w)``.
        chosen: ``(B,)`` long: one group per set.

    Example:
        >>> import torch
        >>> from cosegkit.layers import readout_masks
        >>> a = torch.tensor([[0.9, 0.2], [0.1, 0.8]]).reshape(1, 1, 2, 1, 2)  # 2 groups, 2 tokens
        >>> readout_masks(a, torch.tensor([1])).flatten().tolist()  # group 1's share of each token
        [0.10000000149011612, 0.800000011920929]
    """
    index = repeat(chosen, "b -> b n 1 h w", n=assignment.shape[1], h=assignment.shape[3], w=assignment.shape[4])
    return torch.gather(assignment, 2, index)


def coverage_readout(assignment: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Each set's co-segment by coverage: the group found in the most images, then the smallest.

    With every token given to its largest share (one-hot), a group's coverage is the share of
    valid images in which it owns a token (:func:`~cosegkit.layers.set_coverage`); the co-segment is the group
    of highest coverage and, among those tied, the one owning the fewest tokens of the set: a
    background present in every image covers the set as well as the common object does, and
    is larger.

    Args:
        assignment: ``(B, N, G, h, w)``, e.g. ``SetGroupingOutput.assignment`` in eval.
        valid: optional boolean ``(B, N)``.

    Returns:
        ``masks`` ``(B, N, 1, h, w)``: the chosen group's share of each token (its soft
        assignment), and ``chosen`` ``(B,)`` long.

    Example:
        >>> import torch
        >>> from cosegkit.layers.grouping import coverage_readout
        >>> a = torch.zeros(1, 2, 3, 2, 2)  # 2 images of 2 x 2 tokens, 3 groups
        >>> a[0, :, 0] = 1.0  # group 0: background, everywhere...
        >>> a[0, :, 0, 0, 0], a[0, :, 1, 0, 0] = 0.0, 1.0  # ...but one token per image is group 1
        >>> a[0, 0, 0, 1, 1], a[0, 0, 2, 1, 1] = 0.0, 1.0  # group 2 only in image 0
        >>> masks, chosen = coverage_readout(a)
        >>> chosen.tolist(), masks[0, :, 0].flatten(1).tolist()
        ([1], [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    """
    valid = _check_grouping(assignment, valid)
    hard = _hard(assignment)
    coverage = set_coverage(hard, valid)  # (b, g)
    share = hard.sum(dim=(1, 3, 4)) / hard.sum(dim=(1, 2, 3, 4))[:, None].clamp_min(1.0)  # (b, g) in [0, 1]
    best = coverage >= coverage.amax(dim=1, keepdim=True) - 1e-6
    chosen = share.masked_fill(~best, math.inf).argmin(dim=1)
    return readout_masks(assignment, chosen), chosen


def score_readout(
    assignment: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each set's co-segment by the groups' learned scores: the group of highest score that owns a token.

    Args:
        assignment: ``(B, N, G, h, w)``.
        scores: ``(B, G)``: ``SetGroupingOutput.scores``.
        valid: optional boolean ``(B, N)``.

    Returns:
        ``masks`` ``(B, N, 1, h, w)`` and ``chosen`` ``(B,)`` long, as :func:`~cosegkit.layers.coverage_readout`.

    Example:
        >>> import torch
        >>> from cosegkit.layers.grouping import score_readout
        >>> a = torch.zeros(1, 1, 3, 1, 2)
        >>> a[0, 0, 0, 0, 0], a[0, 0, 1, 0, 1] = 1.0, 1.0  # group 2 owns no token
        >>> score_readout(a, torch.tensor([[0.5, 2.0, 9.0]]))[1].tolist()
        [1]
    """
    valid = _check_grouping(assignment, valid)
    if not is_compiling() and tuple(scores.shape) != tuple(assignment.shape[:1] + assignment.shape[2:3]):
        raise CosegShapeError(
            f"expected scores of shape (B, G) = {(assignment.shape[0], assignment.shape[2])}, got {shape_str(scores)}"
        )
    chosen = scores.masked_fill(~_owns_tokens(assignment, valid), -math.inf).argmax(dim=1)
    return readout_masks(assignment, chosen), chosen


def clip_readout(
    assignment: torch.Tensor,
    clip_tokens: torch.Tensor,
    class_embedding: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Each set's co-segment by CLIP: the group whose CLIP patch tokens best match the set's class.

    Every group pools CLIP's dense patch tokens over its tokens (its assignment resized to
    CLIP's patch grid, bilinear), over all valid images of the set; the co-segment is the group
    whose pooled token has the highest cosine with the set's class text embedding. Groups
    without any token are never chosen.

    Args:
        assignment: ``(B, N, G, h, w)``.
        clip_tokens: ``(B, N, D, h', w')``: CLIP's projected patch tokens
            (:meth:`FrozenClip.encode_images(..., dense=True) <cosegkit.clip.FrozenClip.encode_images>`).
        class_embedding: ``(B, D)``: the text embedding of each set's class.
        valid: optional boolean ``(B, N)``.

    Returns:
        ``masks`` ``(B, N, 1, h, w)`` and ``chosen`` ``(B,)`` long, as :func:`~cosegkit.layers.coverage_readout`.

    Example:
        >>> import torch
        >>> from cosegkit.layers.grouping import clip_readout
        >>> a = torch.zeros(1, 1, 2, 2, 2)
        >>> a[0, 0, 0, 0], a[0, 0, 1, 1] = 1.0, 1.0  # group 0: top row, group 1: bottom row
        >>> tokens = torch.zeros(1, 1, 2, 2, 2)
        >>> tokens[0, 0, 0, 0], tokens[0, 0, 1, 1] = 1.0, 1.0  # top row along axis 0, bottom along axis 1
        >>> clip_readout(a, tokens, torch.tensor([[0.0, 1.0]]))[1].tolist()  # the class points along axis 1
        [1]
    """
    valid = _check_grouping(assignment, valid)
    b, n = assignment.shape[:2]
    if not is_compiling():
        if clip_tokens.ndim != 5 or tuple(clip_tokens.shape[:2]) != (b, n):
            raise CosegShapeError(
                f"expected clip_tokens of shape ({b}, {n}, D, h', w') to match the assignment "
                f"{shape_str(assignment)}, got {shape_str(clip_tokens)}"
            )
        if tuple(class_embedding.shape) != (b, clip_tokens.shape[2]):
            raise CosegShapeError(
                f"expected class_embedding of shape ({b}, {clip_tokens.shape[2]}), one text embedding per set, "
                f"got {shape_str(class_embedding)}"
            )
    grid = clip_tokens.shape[-2:]
    a = rearrange(assignment, "b n g h w -> (b n) g h w").to(clip_tokens.dtype)
    a = rearrange(F.interpolate(a, size=grid, mode="bilinear", align_corners=False), "(b n) g h w -> b n g h w", b=b)
    a = a * valid[:, :, None, None, None].to(a.dtype)
    pooled = torch.einsum("bnghw,bndhw->bgd", a, clip_tokens)
    score = F.cosine_similarity(pooled, class_embedding[:, None, :].to(pooled.dtype), dim=-1)
    chosen = score.masked_fill(~_owns_tokens(assignment, valid), -math.inf).argmax(dim=1)
    return readout_masks(assignment, chosen), chosen
