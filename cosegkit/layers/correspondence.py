"""Image-set feature correspondence (ISFC), LCCo eq. (1)-(2).

Axis legend (einops):
    b   batch of sets            n   images per set (query image i)
    m   partners per image       (n - 1 partners j != i; 1 when a set has a single image)
    c   channels                 h w  spatial size of the feature map
    l   tokens (h * w)           e   channels per attention head    g  heads
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from cosegkit._validation import check_feature_set, resolve_valid
from cosegkit.errors import CosegValueError
from cosegkit.layers._blocks import ConvFFN
from cosegkit.layers.variants import resolve_settings

__all__ = ["ImageSetCorrespondence", "partner_index"]


def partner_index(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Partners ``j`` of every image ``i`` in each set, for all-pairs message passing.

    Image ``i`` of a set of ``n`` images has the ``n - 1`` partners ``j != i`` (in increasing
    order). A partner slot is *live* when its partner is a valid image. An image that has no
    live partner (a set of one image, or one valid image among padding) gets a self-loop
    instead: its first slot points at itself and is the only live one, so its features still
    flow through the module.

    Args:
        valid: boolean ``(b, n)`` mask of real images.

    Returns:
        ``index`` ``(b, n, m)`` long tensor of partner positions and ``live`` ``(b, n, m)``
        boolean mask, with ``m = max(n - 1, 1)``.

    Example:
        >>> import torch
        >>> from cosegkit.layers import partner_index
        >>> valid = torch.tensor([[True, True, True], [True, False, False]])  # set 1: one image, two pads
        >>> index, live = partner_index(valid)
        >>> index.shape, live.shape
        (torch.Size([2, 3, 2]), torch.Size([2, 3, 2]))
        >>> index[0].tolist()  # image i of a full set of 3: partners j != i
        [[1, 2], [0, 2], [0, 1]]
        >>> index[1, 0].tolist(), live[1, 0].tolist()  # the lone valid image gets a self-loop
        ([0, 2], [True, False])
        >>> partner_index(torch.tensor([[True]]))[0].shape  # N = 1: m = 1
        torch.Size([1, 1, 1])
    """
    b, n = valid.shape
    device = valid.device
    if n == 1:
        index = torch.zeros(b, 1, 1, dtype=torch.long, device=device)
        return index, torch.ones(b, 1, 1, dtype=torch.bool, device=device)
    i = torch.arange(n, device=device)
    slot = torch.arange(n - 1, device=device)
    # partner of image i at slot s skips i itself: j = s if s < i else s + 1
    pairs = slot[None, :] + (slot[None, :] >= i[:, None]).long()  # (n, n-1)
    index = repeat(pairs, "n m -> b n m", b=b)
    live = torch.gather(repeat(valid, "b j -> b n j", n=n), 2, index)  # partner j is valid
    lonely = ~live.any(dim=2, keepdim=True)  # (b, n, 1): no valid partner
    self_slot = (slot == 0)[None, None, :] & lonely
    index = torch.where(self_slot, i[None, :, None], index)
    live = live | self_slot
    return index, live


class ImageSetCorrespondence(nn.Module):
    r"""Image-set feature correspondence: cross-attention message passing over a set.

    Implements LCCo eq. (1)-(2). The images of a set are the nodes of a complete graph. For
    every ordered pair :math:`i \neq j`, image :math:`i` receives the message
    :math:`\mathfrak{m}_{j \to i} = \mathrm{Att}(F_i, F_j, F_j)` (multi-head attention over
    the :math:`h \cdot w` spatial tokens, query :math:`F_i`, key/value :math:`F_j`), and

    .. math::
        \bar F_i^j = F_i + \mathrm{FFN}_1(F_i \,\|\, \mathfrak{m}_{j \to i}), \qquad
        \alpha_i^j = \operatorname{softmax}_j(\bar F_i^j), \qquad
        \hat F_i = \mathrm{Conv}\Big(\sum_{j \neq i} \alpha_i^j \odot \bar F_i^j\Big).

    The softmax runs over the partners ``j``, element-wise at every channel and pixel, so
    eq. (2) is a weighted average over ``j`` (see the equations page of the docs for the other
    reading). All pairs of all sets go through one batched
    :func:`~torch.nn.functional.scaled_dot_product_attention` call.

    A set with a single image (``N = 1``), or a valid image whose partners are all padding,
    has no pair; such an image passes a self-loop message :math:`\mathrm{Att}(F_i, F_i, F_i)`
    instead, so the module behaves like a one-node graph with a self-edge.
    Padded images (``valid`` False) neither send nor receive messages: their output equals
    their input.

    Built with its defaults, the module is the one ``LCCo()`` builds (the ``"default"``
    variant of :data:`~cosegkit.layers.variants.VARIANTS`, which adds the residual
    :math:`F_i + \hat F_i`); ``variant="paper"`` gives eq. (2) as printed.

    Args:
        channels: channels ``C`` of the feature maps.
        heads: attention heads; must divide ``channels``.
        ffn_ratio: hidden width of :math:`\mathrm{FFN}_1` as a multiple of ``channels``.
        kernel_size: kernel of the final :math:`\mathrm{Conv}` (odd).
        variant: ``"default"`` or ``"paper"``, the same names and settings as
            :class:`~cosegkit.LCCo`'s ``variant``; ``residual`` overrides it.
        residual: add the input features to the output of eq. (2). ``None`` takes the
            variant's ``correspondence_residual`` (True in ``"default"``, False in
            ``"paper"``). The module has one residual, so it is called ``residual`` here;
            :class:`~cosegkit.LCCo` sets it as ``correspondence_residual``, because there
            ``residual`` is the CLIP modules' own.
        temperature: temperature of the softmax over the partners in eq. (2).

    Shape:
        - features: :math:`(B, N, C, h, w)`
        - valid: :math:`(B, N)` boolean, optional
        - output: :math:`(B, N, C, h, w)`

    Example:
        >>> import torch
        >>> from cosegkit import ImageSetCorrespondence
        >>> isfc = ImageSetCorrespondence(32, heads=4)
        >>> isfc(torch.randn(2, 5, 32, 7, 7)).shape
        torch.Size([2, 5, 32, 7, 7])
        >>> isfc.residual, ImageSetCorrespondence(32, heads=4, variant="paper").residual
        (True, False)
    """

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        *,
        ffn_ratio: float = 2.0,
        kernel_size: int = 3,
        variant: str = "default",
        residual: bool | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if channels % heads != 0:
            raise CosegValueError(
                f"heads={heads} must divide channels={channels}; choose heads from "
                f"{[h for h in range(1, min(channels, 16) + 1) if channels % h == 0]}"
            )
        if kernel_size % 2 != 1:
            raise CosegValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        if temperature <= 0:
            raise CosegValueError(f"temperature must be positive, got {temperature}")
        self.channels = channels
        self.heads = heads
        self.residual: bool = resolve_settings(variant, correspondence_residual=residual)["correspondence_residual"]
        self.temperature = temperature
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(channels, 2 * channels)
        self.to_out = nn.Linear(channels, channels)
        self.ffn = ConvFFN(2 * channels, channels, int(ffn_ratio * channels))
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def messages(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Messages :math:`\\mathfrak{m}_{j \\to i}` for every image and partner slot.

        Args:
            features: ``(b, n, c, h, w)``.
            index: ``(b, n, m)`` partner positions from :func:`~cosegkit.layers.partner_index`.

        Returns:
            ``(b, n, m, c, h, w)``.
        """
        h, w = features.shape[-2:]
        out = self.to_out(self._attend(features, index))
        return rearrange(out, "b n m (h w) c -> b n m c h w", h=h, w=w)

    def _attend(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Multi-head attention of every image over each partner, before the output projection.

        Queries, keys and values are projected once per image, then paired by ``index``.

        Returns:
            ``(b, n, m, h * w, c)``.
        """
        b, n, c, h, w = features.shape
        m = index.shape[2]
        tokens = rearrange(features, "b n c h w -> b n (h w) c")
        q = rearrange(self.to_q(tokens), "b n l (g e) -> b n g l e", g=self.heads)
        k, v = rearrange(self.to_kv(tokens), "b n l (two g e) -> two b n g l e", two=2, g=self.heads)
        gather = repeat(index, "b n m -> b (n m) g l e", g=self.heads, l=h * w, e=c // self.heads)
        k = rearrange(torch.gather(k, 1, gather), "b (n m) g l e -> (b n m) g l e", m=m)
        v = rearrange(torch.gather(v, 1, gather), "b (n m) g l e -> (b n m) g l e", m=m)
        q = rearrange(repeat(q, "b n g l e -> b n m g l e", m=m), "b n m g l e -> (b n m) g l e")
        return rearrange(F.scaled_dot_product_attention(q, k, v), "(b n m) g l e -> b n m l (g e)", b=b, n=n)

    def _pair_updates(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        r"""Eq. (1), :math:`\bar F_i^j = F_i + \mathrm{FFN}_1(F_i \| \mathfrak m_{j \to i})`, for every pair.

        The same maths as ``FFN_1`` applied to the concatenation of ``F_i`` and
        :meth:`messages`, computed so that no work is repeated per pair that depends on one
        image only: the first layer of ``FFN_1`` is linear, so it splits into a part on
        ``F_i`` (computed once per image) and a part on the message, and the message's output
        projection folds into the latter (one matrix instead of two per pair).

        Returns:
            ``(b, n, m, c, h, w)``.
        """
        c, h, w = features.shape[-3:]
        m = index.shape[2]
        first, _, second = self.ffn[0], self.ffn[1], self.ffn[2]
        w1 = first.weight[:, :, 0, 0]  # (hidden, 2c)
        w_self, w_msg = w1[:, :c], w1[:, c:]
        tokens = rearrange(features, "b n c h w -> b n (h w) c")
        attended = self._attend(features, index)
        # FFN_1's first layer on [F_i ; to_out(attended)] = w_self F_i + (w_msg W_out) attended + bias
        folded = w_msg @ self.to_out.weight  # (hidden, c)
        bias = w_msg @ self.to_out.bias + (first.bias if first.bias is not None else 0.0)
        hidden = F.linear(attended, folded) + F.linear(tokens, w_self, bias)[:, :, None]
        out = F.linear(F.gelu(hidden), second.weight[:, :, 0, 0], second.bias)  # (b, n, m, l, c)
        return repeat(features, "b n c h w -> b n m c h w", m=m) + rearrange(
            out, "b n m (h w) c -> b n m c h w", h=h, w=w
        )

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Refine every image's features with messages from the other images of its set.

        Args:
            features: ``(B, N, C, h, w)`` feature set.
            valid: optional boolean ``(B, N)``; False marks padded images.

        Returns:
            ``(B, N, C, h, w)`` refined features.
        """
        check_feature_set(features, self.channels)
        b, n = features.shape[:2]
        valid = resolve_valid(valid, b, n, features.device)
        index, live = partner_index(valid)
        updated = self._pair_updates(features, index)  # eq. (1) for every pair: (b, n, m, c, h, w)

        # eq. (2): alpha = softmax over the partners j, element-wise; dead slots get no weight
        dead = ~live[:, :, :, None, None, None]
        alpha = (updated / self.temperature).masked_fill(dead, float("-inf")).softmax(dim=2)
        fused = (alpha * updated.masked_fill(dead, 0.0)).sum(dim=2)
        out = rearrange(self.conv(rearrange(fused, "b n c h w -> (b n) c h w")), "(b n) c h w -> b n c h w", b=b)
        if self.residual:
            out = out + features
        return torch.where(valid[:, :, None, None, None], out, features)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, residual={self.residual}, temperature={self.temperature}"
