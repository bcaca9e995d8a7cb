"""CLIP regularization, LCCo eq. (6)-(8).

Axis legend (einops):
    b   batch of sets    n   images per set    c   feature channels
    h w spatial size     d   CLIP embedding width    p   prompts (text bank)
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import (
    check_feature_set,
    check_set_vectors,
    check_text_bank,
    is_compiling,
    resolve_valid,
)
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.layers._blocks import MLP, ConvFFN, masked_max, masked_mean, unit_rms
from cosegkit.layers.variants import resolve_settings

__all__ = ["POOLS", "ClipRegularization", "ClipRegularizationOutput"]

POOLS = {"max": masked_max, "mean": masked_mean}
"""How eq. (7) pools the per-image class scores over a set: ``"max"`` (the paper's global max
pooling) or ``"mean"``."""


_RENAMED = "ClipRegularization's {old!r} is deprecated and will be removed in the next release; use {new!r}"


def _renamed(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value of a renamed keyword: the new one, or the old one with a DeprecationWarning."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise CosegValueError(f"got both {old}={old_value!r} and {new}={new_value!r}; pass {new} only")
    warnings.warn(_RENAMED.format(old=old, new=new), DeprecationWarning, stacklevel=3)
    return old_value


class ClipRegularizationOutput(NamedTuple):
    """What :class:`ClipRegularization` returns.

    Attributes:
        features: regularised features :math:`\\hat F^3_i`, ``(B, N, C, h, w)`` (eq. 8).
        class_probs: :math:`v`, probabilities over the ``P`` prompts, ``(B, P)`` (eq. 7).
        common_class: the prompt whose text embedding regularised the features, ``(B,)`` long:
            :math:`i^*`, the set's most likely prompt (eq. 6), or the class the forward pass
            was given in its place (``common_class=``, the class oracle). The module's own
            choice is always ``class_probs.argmax(-1)``.

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

    where :math:`s_i` is row :math:`i` of the image-text similarity matrix :math:`S` (the
    printed form; ``class_pool`` and ``class_prior`` below give the default's). The pool
    runs over the (valid) images of a set, so :math:`v` and :math:`i^*` do not depend on
    the order of the images. :math:`\mathrm{MLP}_3` starts with a LayerNorm over the ``P``
    similarities: raw CLIP cosines differ by a few hundredths between classes, and the norm
    makes the MLP see their ranking at a usable scale. The argmax passes no gradient; :math:`v`
    is trained by the classification loss of eq. (12).

    The *class oracle* gives the forward pass each set's true class as ``common_class``: it
    replaces :math:`i^*` in eq. (8), while :math:`v` is computed and returned as before (so the
    classification loss still trains :math:`\mathrm{MLP}_3`). What a model scores with the
    oracle and without it separates finding the class from segmenting it.

    Built with its defaults, the module is the one ``LCCo()`` builds (the ``"default"``
    variant of :data:`~cosegkit.layers.variants.VARIANTS`: mean pool, CLIP's ranking with
    weight 3, residual, unit-RMS :math:`h^{txt}_{i^*}`); ``variant="paper"`` gives eq. (7)
    and (8) as printed, with MLP_3 and the size of :math:`h^{txt}_{i^*}` read as in the default.

    Args:
        channels: channels ``C`` of the feature maps.
        clip_dim: CLIP embedding width ``D``.
        num_prompts: vocabulary size ``P`` (rows of the text bank).
        hidden: hidden width of :math:`\mathrm{MLP}_3` (default ``P``).
        variant: ``"default"`` or ``"paper"``, the same names and settings as
            :class:`~cosegkit.LCCo`'s ``variant``; the four settings below override it one by
            one, and each one left ``None`` takes the variant's.
        residual: add the input features to the output of eq. (8), :math:`F_i + \hat F_i`
            (not in the paper; True in ``"default"``).
        unit_scale: scale :math:`h^{txt}_{i^*}` to a root mean square of 1 before it
            modulates the features (True in both variants).
        class_pool: how eq. (7) pools the per-image class scores over the set, ``"max"``
            (the paper, ``"paper"``) or ``"mean"`` (``"default"``).
        class_prior: weight :math:`\tau` of CLIP's own ranking in eq. (7),
            :math:`\mathrm{MLP}_3(s_i) + \tau\,\mathrm{LN}(s_i)` (3 in both variants).
        pool: deprecated name of ``class_pool`` (warns; removed in the next release).
        prior: deprecated name of ``class_prior`` (warns; removed in the next release).

    Shape:
        - features: :math:`(B, N, C, h, w)`
        - similarity: :math:`(B, N, P)`
        - text_embeddings: :math:`(P, D)`
        - valid: :math:`(B, N)` boolean, optional
        - common_class: :math:`(B,)` integer, optional
        - output: :class:`ClipRegularizationOutput`

    Example:
        >>> import torch
        >>> from cosegkit import ClipRegularization
        >>> reg = ClipRegularization(32, clip_dim=16, num_prompts=10)
        >>> out = reg(torch.randn(2, 4, 32, 8, 8), torch.randn(2, 4, 10), torch.randn(10, 16))
        >>> out.features.shape, out.class_probs.shape, out.common_class.shape
        (torch.Size([2, 4, 32, 8, 8]), torch.Size([2, 10]), torch.Size([2]))
        >>> reg.class_pool, ClipRegularization(32, 16, 10, variant="paper").class_pool
        ('mean', 'max')

        The class oracle: each set's class is given, and its text embedding is the one used:

        >>> forced = reg(torch.randn(2, 4, 32, 8, 8), torch.randn(2, 4, 10), torch.randn(10, 16),
        ...              common_class=torch.tensor([7, 2]))
        >>> forced.common_class.tolist(), forced.class_probs.shape  # v is still the module's own
        ([7, 2], torch.Size([2, 10]))
    """

    def __init__(
        self,
        channels: int,
        clip_dim: int,
        num_prompts: int,
        *,
        hidden: int | None = None,
        variant: str = "default",
        residual: bool | None = None,
        unit_scale: bool | None = None,
        class_pool: str | None = None,
        class_prior: float | None = None,
        pool: str | None = None,
        prior: float | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.clip_dim = clip_dim
        self.num_prompts = num_prompts
        class_pool = _renamed("pool", pool, "class_pool", class_pool)
        class_prior = _renamed("prior", prior, "class_prior", class_prior)
        settings = resolve_settings(
            variant, residual=residual, unit_scale=unit_scale, class_pool=class_pool, class_prior=class_prior
        )
        if settings["class_pool"] not in POOLS:
            raise CosegValueError(f"class_pool must be one of {list(POOLS)}, got {settings['class_pool']!r}")
        if settings["class_prior"] < 0:
            raise CosegValueError(f"class_prior must be non-negative, got {settings['class_prior']}")
        self.residual: bool = settings["residual"]
        self.unit_scale: bool = settings["unit_scale"]
        self.class_pool: str = settings["class_pool"]
        self.class_prior: float = settings["class_prior"]
        self.mlp3 = nn.Sequential(nn.LayerNorm(num_prompts), MLP(num_prompts, num_prompts, hidden or num_prompts))
        self.ffn4 = ConvFFN(channels, clip_dim)
        self.ffn5 = ConvFFN(clip_dim, channels)

    @property
    def pool(self) -> str:
        """Deprecated name of ``class_pool`` (warns; removed in the next release)."""
        warnings.warn(_RENAMED.format(old="pool", new="class_pool"), DeprecationWarning, stacklevel=2)
        return self.class_pool

    @property
    def prior(self) -> float:
        """Deprecated name of ``class_prior`` (warns; removed in the next release)."""
        warnings.warn(_RENAMED.format(old="prior", new="class_prior"), DeprecationWarning, stacklevel=2)
        return self.class_prior

    def classify(self, similarity: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. (6)-(7): class logits (before the softmax) and :math:`i^*`, ``(b, p)`` and ``(b,)``."""
        scores = self.mlp3(similarity)
        if self.class_prior:
            scores = scores + self.class_prior * F.layer_norm(similarity, similarity.shape[-1:])  # CLIP's own ranking
        logits = POOLS[self.class_pool](scores, valid)
        return logits, logits.argmax(dim=-1)

    def forward(
        self,
        features: torch.Tensor,
        similarity: torch.Tensor,
        text_embeddings: torch.Tensor,
        valid: torch.Tensor | None = None,
        common_class: torch.Tensor | None = None,
    ) -> ClipRegularizationOutput:
        """Regularise ``features`` towards the set's most likely CLIP class (or a given one).

        Args:
            features: ``(B, N, C, h, w)``.
            similarity: ``(B, N, P)`` image-text similarity :math:`S`, e.g. from
                :class:`ClipInteraction` or :func:`~cosegkit.layers.clip_similarity`.
            text_embeddings: ``(P, D)`` CLIP text bank.
            valid: optional boolean ``(B, N)``; False marks padded images.
            common_class: optional ``(B,)`` integer: each set's class as an index into the
                ``P`` prompts (the class oracle). It replaces :math:`i^*` in eq. (8); the
                class probabilities :math:`v` are computed and returned all the same.

        Returns:
            A :class:`ClipRegularizationOutput`.

        Raises:
            CosegShapeError: ``common_class`` is not one index per set.
            CosegValueError: ``common_class`` is not integer, or an index is outside ``[0, P)``.
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
        if common_class is not None:  # the class oracle: the given class replaces i*
            common = self._check_common_class(common_class, b).to(common.device)

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

    def _check_common_class(self, common_class: torch.Tensor, b: int) -> torch.Tensor:
        """``common_class`` as long, after checking it holds one prompt index per set."""
        if is_compiling():
            return common_class.long()
        if not isinstance(common_class, torch.Tensor):
            raise CosegValueError(
                f"common_class must be a (B,) tensor of prompt indices, got {type(common_class).__name__}; "
                f"pass e.g. torch.tensor(indices)"
            )
        if tuple(common_class.shape) != (b,):
            raise CosegShapeError(
                f"expected common_class of shape {(b,)}, one prompt index per set, got {tuple(common_class.shape)}"
            )
        if common_class.dtype == torch.bool or common_class.is_floating_point() or common_class.is_complex():
            raise CosegValueError(
                f"common_class must hold integer prompt indices, got dtype {common_class.dtype}; pass "
                f"common_class.long()"
            )
        if b and not bool(((common_class >= 0) & (common_class < self.num_prompts)).all()):
            raise CosegValueError(
                f"common_class holds {common_class.tolist()}, but the vocabulary has {self.num_prompts} prompts; "
                f"pass indices in [0, {self.num_prompts}), positions in the CLIP's class names"
            )
        return common_class.long()

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, clip_dim={self.clip_dim}, num_prompts={self.num_prompts}, "
            f"class_pool={self.class_pool!r}, class_prior={self.class_prior}, residual={self.residual}, "
            f"unit_scale={self.unit_scale}"
        )
