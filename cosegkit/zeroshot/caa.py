"""CLIP-ES's class-aware attention affinity (CAA): refine a CAM with CLIP's own attention.

Axis legend: ``m`` maps (images), ``l`` patch tokens (``h * w``), ``h w`` patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from cosegkit import _names
from cosegkit.errors import CosegValueError

__all__ = [
    "BOX_PRECISIONS",
    "affinity",
    "box_mask",
    "caa_refine",
    "check_box_precision",
    "connected_components",
    "minmax_scale",
]

BOX_PRECISIONS: tuple[str, ...] = _names.BOX_PRECISIONS
"""How :func:`box_mask` compares a CAM with its threshold: ``"uint8"``, on the CAM's 8-bit copy
as CLIP-ES's ``scoremap2bbox`` does (the default), or ``"float"``, on the CAM itself."""


def check_box_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`~cosegkit.zeroshot.BOX_PRECISIONS`; a clear error otherwise.

    Example:
        >>> from cosegkit.zeroshot.caa import check_box_precision
        >>> check_box_precision("float")
        'float'
    """
    if precision not in BOX_PRECISIONS:
        raise CosegValueError(
            f"box_precision must be 'uint8' (CLIP-ES: the CAM's 8-bit copy) or 'float', got {precision!r}"
        )
    return precision


def minmax_scale(cam: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max scale each map ``(..., h, w)``: ``x - min``, then ``/ (max + eps)``.

    One pass of pytorch-grad-cam's ``scale_cam_image`` as CLIP-ES bundles it (without its
    resize). CLIP-ES's GradCAM applies it twice to a CAM, which
    :class:`~cosegkit.zeroshot.ZeroShotCoseg` follows by default (``cam_scaling="twice"``),
    and once to the map CAA refines (:func:`caa_refine`).

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.caa import minmax_scale
        >>> minmax_scale(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])).mul(100).round().tolist()
        [[[0.0, 50.0], [25.0, 100.0]]]
    """
    flat = cam.flatten(-2)
    flat = flat - flat.amin(dim=-1, keepdim=True)
    flat = flat / (flat.amax(dim=-1, keepdim=True) + eps)
    return flat.view_as(cam)


def affinity(attn: torch.Tensor) -> torch.Tensor:
    """CLIP-ES's transition matrix from averaged patch-to-patch attention ``(m, l, l)``.

    Divide by the column sums, then by the row sums, three times in all; symmetrise
    ``(A + A^T) / 2``; square once, ``A @ A``.

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.caa import affinity
        >>> _ = torch.manual_seed(0)
        >>> attn = torch.rand(2, 16, 16).softmax(dim=-1)  # 2 maps on a 4 x 4 patch grid
        >>> a = affinity(attn)
        >>> a.shape, a.dtype
        (torch.Size([2, 16, 16]), torch.float64)
        >>> bool(torch.allclose(a, a.transpose(-1, -2))), bool((a >= 0).all())  # symmetric, non-negative
        (True, True)
        >>> bool(torch.allclose(a.sum(dim=-1), torch.ones(2, 16).double(), atol=1e-4))  # rows (and columns) sum to ~1
        True
    """
    a = attn.double()  # nearly uniform attention leaves differences of under 1 %, kept exactly
    for _ in range(3):
        a = a / a.sum(dim=-2, keepdim=True)
        a = a / a.sum(dim=-1, keepdim=True)
    a = (a + a.transpose(-1, -2)) / 2
    return a @ a


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """Labels of the 8-connected regions of boolean maps ``(m, h, w)``: 0 outside, region ids > 0.

    Each region is labelled by the largest flat index (+ 1) of its pixels, found by repeated
    3 x 3 max-propagation inside the mask.

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.caa import connected_components
        >>> mask = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]], dtype=torch.bool)
        >>> connected_components(mask).tolist()  # two regions; the diagonal pair is one
        [[[2, 2, 0, 0], [0, 0, 0, 11], [0, 0, 11, 0]]]
    """
    m, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, h, w).expand(m, -1, -1)
    keep = mask.float()
    labels = ids * keep
    for _ in range(h * w):
        grown = F.max_pool2d(labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0] * keep
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def box_mask(cam: torch.Tensor, threshold: float = 0.4, precision: str = "uint8") -> torch.Tensor:
    r"""CLIP-ES's class-aware mask: 1 inside the bounding box of any region of the CAM above ``threshold * max``.

    With ``precision="uint8"`` (the default), the comparison is CLIP-ES's ``scoremap2bbox``:
    the CAM's 8-bit copy :math:`q = \lfloor 255\,x \rfloor` keeps the pixels with
    :math:`q > \lfloor \text{threshold} \cdot \max q \rfloor` (``cv2.threshold``'s
    ``THRESH_BINARY`` at ``int(threshold * max)``). With ``precision="float"``, the CAM itself
    keeps :math:`x > \text{threshold} \cdot \max x`: the two differ where a value lies within
    about 1/255 of the threshold, and on a CAM whose peak is under 1/255, which the 8-bit copy
    reads as 0 everywhere (an empty mask).

    Args:
        cam: ``(m, h, w)`` maps; ``"uint8"`` reads them as values in [0, 1] (CLIP-ES passes
            min-max scaled CAMs, whose max is 1) and clips the rest.
        threshold: the fraction of each map's maximum that a region exceeds.
        precision: one of :data:`~cosegkit.zeroshot.BOX_PRECISIONS`.

    Returns:
        ``(m, h, w)`` float mask in {0, 1}. A map that is 0 everywhere gives an empty mask.

    Shape:
        :math:`(m, h, w) \to (m, h, w)`.

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.caa import box_mask
        >>> cam = torch.zeros(1, 4, 5)
        >>> cam[0, 1, 1] = cam[0, 2, 2] = 1.0  # one diagonal region
        >>> cam[0, 0, 4] = 0.9  # and another
        >>> box_mask(cam).long().tolist()
        [[[0, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]]

        Near the threshold the 8-bit copy decides: 0.4011 is 102 of 255, not above
        ``int(0.4 * 255) = 102``:

        >>> near = torch.tensor([[[1.0, 0.0, 0.4011]]])
        >>> box_mask(near).tolist(), box_mask(near, precision="float").tolist()
        ([[[1.0, 0.0, 0.0]]], [[[1.0, 0.0, 1.0]]])
    """
    check_box_precision(precision)
    m, h, w = cam.shape
    if precision == "uint8":  # (cam * 255).astype(np.uint8), in float32 as numpy multiplies it
        values = (cam.float() * 255).clamp(0, 255).floor()
        peak = values.flatten(1).amax(dim=1).view(m, 1, 1)
        keep = values > torch.floor(threshold * peak.double()).to(values.dtype)  # int(threshold * max)
    else:
        peak = cam.flatten(1).amax(dim=1).view(m, 1, 1)
        keep = (cam > threshold * peak) & (peak > 0)
    labels = connected_components(keep)
    flat = labels.flatten(1)  # (m, l), region ids in 1..l
    rows = torch.arange(h, device=cam.device).repeat_interleave(w).expand(m, -1)
    cols = torch.arange(w, device=cam.device).repeat(h).expand(m, -1)
    big = h * w + 1
    shape = (m, h * w + 1)

    def reduce(values: torch.Tensor, how: str, init: int) -> torch.Tensor:
        out = torch.full(shape, init, device=cam.device, dtype=torch.long)
        return out.scatter_reduce(1, flat, values, reduce=how, include_self=True)

    y0, y1 = reduce(rows, "amin", big), reduce(rows, "amax", -1)
    x0, x1 = reduce(cols, "amin", big), reduce(cols, "amax", -1)
    y0, y1, x0, x1 = (t[:, 1:] for t in (y0, y1, x0, x1))  # drop label 0 (outside): (m, l)
    r = torch.arange(h, device=cam.device).view(1, 1, h)
    c = torch.arange(w, device=cam.device).view(1, 1, w)
    in_rows = (r >= y0[..., None]) & (r <= y1[..., None])  # (m, l, h)
    in_cols = (c >= x0[..., None]) & (c <= x1[..., None])  # (m, l, w)
    inside = torch.einsum("mlh,mlw->mhw", in_rows.float(), in_cols.float()) > 0
    return inside.float()


def caa_refine(
    cam: torch.Tensor, attn: torch.Tensor, threshold: float = 0.4, precision: str = "uint8"
) -> torch.Tensor:
    """Refine CAMs with CLIP-ES's class-aware attention affinity.

    ``refined = (T * box) @ cam`` on the flattened patch grid, where ``T`` is
    :func:`affinity` of the attention, ``box`` (:func:`box_mask`) multiplies ``T``
    column-wise, and the result is min-max scaled (:func:`minmax_scale`).

    Args:
        cam: ``(m, h, w)`` min-max scaled CAMs.
        attn: ``(m, h*w, h*w)`` patch-to-patch attention, averaged over heads and blocks.
        threshold: :func:`box_mask`'s threshold.
        precision: :func:`box_mask`'s comparison, one of :data:`~cosegkit.zeroshot.BOX_PRECISIONS`.

    Returns:
        ``(m, h, w)`` refined maps in [0, 1].

    Example:
        >>> import torch
        >>> from cosegkit.zeroshot.caa import caa_refine
        >>> cam = torch.zeros(1, 4, 4)
        >>> cam[0, 1:3, 1:3] = torch.tensor([[1.0, 0.8], [0.6, 0.9]])  # one confident region
        >>> _ = torch.manual_seed(0)
        >>> attn = torch.rand(1, 16, 16).softmax(dim=-1)
        >>> refined = caa_refine(cam, attn)
        >>> refined.shape, bool(((refined >= 0) & (refined <= 1)).all()), round(refined.max().item(), 4)
        (torch.Size([1, 4, 4]), True, 1.0)
        >>> weak = cam.clone()
        >>> weak[0, 0, 3] = 0.3  # under 0.4 x max: outside every box, so it spreads nothing
        >>> torch.equal(caa_refine(weak, attn), refined)
        True

        With attention that stays on each patch, the CAM is kept inside its box, zero outside:

        >>> caa_refine(cam, torch.eye(16)[None]).mul(10).round().long().tolist()
        [[[0, 0, 0, 0], [0, 10, 8, 0], [0, 6, 9, 0], [0, 0, 0, 0]]]
    """
    m, h, w = cam.shape
    trans = affinity(attn) * rearrange(box_mask(cam, threshold, precision), "m h w -> m 1 (h w)")
    refined = trans @ rearrange(cam.double(), "m h w -> m (h w) 1")
    return minmax_scale(rearrange(refined, "m (h w) 1 -> m h w", h=h, w=w)).to(cam.dtype)
