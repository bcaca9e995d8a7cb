"""The classification loss of LCCo eq. (12) and the ground-truth class of a set.

Axis legend: b batch of sets, n images per set, p prompts, d CLIP width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cosegkit._validation import check_image_set, is_compiling, resolve_valid
from cosegkit.errors import CosegShapeError, CosegValueError
from cosegkit.layers._blocks import masked_sum
from cosegkit.layers.interaction import clip_similarity

__all__ = ["ClassificationLoss", "classification_loss", "masked_images", "set_class_targets", "targets_from_embeddings"]


def classification_loss(probs: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    r"""Binary cross-entropy over the ``P`` classes, eq. (12), averaged over the sets.

    .. math::
        \mathcal L_c = -\frac{1}{P}\sum_{p=1}^{P} v^{gt}_p \log \hat v_p + (1 - v^{gt}_p) \log(1 - \hat v_p)

    Args:
        probs: predicted class probabilities :math:`\hat v`, ``(B, P)`` (a softmax output).
        target: the ground-truth class of each set, ``(B,)`` long, or one-hot / soft
            :math:`v^{gt}` of shape ``(B, P)``.
        eps: probabilities are clamped to ``[eps, 1 - eps]`` so the loss stays finite (NaN
            probabilities, from a diverged model, give a NaN loss rather than an error).

    Returns:
        A scalar tensor; at most ``-log(eps)``.

    Example:
        >>> import torch
        >>> from cosegkit.losses import classification_loss
        >>> classification_loss(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0])).item() < 1e-5
        True
    """
    if not is_compiling():
        if probs.ndim != 2:
            raise CosegShapeError(f"expected class probabilities of shape (B, P), got {tuple(probs.shape)}")
        if target.ndim == 1:
            if target.shape[0] != probs.shape[0] or target.is_floating_point():
                raise CosegShapeError(
                    f"expected integer class targets of shape ({probs.shape[0]},), got "
                    f"{tuple(target.shape)} {target.dtype}"
                )
            if bool((target < 0).any()) or bool((target >= probs.shape[1]).any()):
                raise CosegValueError(f"class targets must lie in [0, {probs.shape[1]}), got {target.tolist()}")
        elif target.shape != probs.shape:
            raise CosegShapeError(f"expected targets of shape (B,) or {tuple(probs.shape)}, got {tuple(target.shape)}")
    if target.ndim == 1:
        target = F.one_hot(target, probs.shape[1])
    p = probs.float().clamp(eps, 1.0 - eps)
    t = target.float()
    # written out rather than F.binary_cross_entropy: that raises on NaN input, where a NaN loss
    # lets the trainer report the divergence (TrainingDiverged), and it refuses autocast
    return -(t * p.log() + (1.0 - t) * (1.0 - p).log()).mean()


class ClassificationLoss(nn.Module):
    """Module form of :func:`classification_loss`.

    Example:
        >>> import torch
        >>> from cosegkit.losses import ClassificationLoss
        >>> loss = ClassificationLoss()(torch.full((2, 4), 0.25), torch.tensor([1, 3]))
        >>> round(loss.item(), 4)
        0.5623
    """

    def __init__(self, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(probs, target, eps=self.eps)


def masked_images(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Images with everything but the object blacked out, ``(B, N, 3, H, W)``.

    Masks may be at a different resolution than the images; they are resized (nearest) first.

    Example:
        >>> import torch
        >>> from cosegkit.losses import masked_images
        >>> images = torch.ones(1, 2, 3, 4, 4)  # (B, N, 3, H, W)
        >>> masks = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(1, 2, 1, 2, 2)  # (B, N, 1, 2, 2): top-left object
        >>> out = masked_images(images, masks)
        >>> out.shape
        torch.Size([1, 2, 3, 4, 4])
        >>> out[0, 0, 0]  # the 2 x 2 mask, resized to 4 x 4, keeps the top-left quarter
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.],
                [0., 0., 0., 0.],
                [0., 0., 0., 0.]])
    """
    if not is_compiling() and (masks.ndim != 5 or masks.shape[:2] != images.shape[:2] or masks.shape[2] != 1):
        raise CosegShapeError(
            f"expected masks of shape (B, N, 1, H, W) matching images {tuple(images.shape)}, got {tuple(masks.shape)}"
        )
    if masks.shape[-2:] != images.shape[-2:]:
        masks = F.interpolate(masks.flatten(0, 1).float(), size=images.shape[-2:], mode="nearest").unflatten(
            0, masks.shape[:2]
        )
    return images * masks.to(images.dtype)


def targets_from_embeddings(
    masked_embeddings: torch.Tensor, text_embeddings: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Most likely class of each set from CLIP embeddings of its masked images.

    :math:`S^{gt} = \\cos(\\mathcal H^{img}_{gt}, \\mathcal H^{txt})`, summed over the (valid)
    images of the set; the class is the arg-max. Returns ``(B,)`` long.

    Example:
        >>> import torch
        >>> from cosegkit.losses import targets_from_embeddings
        >>> text = torch.eye(3, 4)  # (P, D): three prompts
        >>> masked = torch.tensor([[[0.1, 0.2, 1.0, 0.0],
        ...                         [1.0, 0.3, 0.9, 0.0]]])  # (B, N, D) = (1, 2, 4)
        >>> targets_from_embeddings(masked, text)  # image 0 is clearly class 2, image 1 leans to class 0
        tensor([2])
        >>> targets_from_embeddings(masked, text, valid=torch.tensor([[False, True]]))  # image 0 is padding
        tensor([0])
    """
    b, n = masked_embeddings.shape[:2]
    valid = resolve_valid(valid, b, n, masked_embeddings.device)
    sigma = masked_sum(clip_similarity(masked_embeddings, text_embeddings), valid)
    return sigma.argmax(dim=-1)


@torch.no_grad()
def set_class_targets(
    clip: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ground-truth common class of each set, as the paragraph after eq. (12) computes it.

    Each image is multiplied by its ground-truth mask, the masked images go through the CLIP
    image encoder, and the class whose text embedding is most similar, summed over the set,
    is the set's class. :class:`~cosegkit.LCCo` computes the same inside its forward pass
    (sharing one CLIP call with the unmasked images) when given ``masks``.

    Args:
        clip: a :class:`~cosegkit.clip.FrozenClip`.
        images: ``(B, N, 3, H, W)`` in [0, 1].
        masks: ``(B, N, 1, H, W)`` in {0, 1}.
        valid: optional boolean ``(B, N)``.

    Returns:
        ``(B,)`` long class indices into the CLIP's vocabulary.

    Example:
        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips, TINY_CLIP
        >>> _ = register_tiny_clips()  # a tiny random CLIP, "coseg-test-tiny", for offline examples
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.losses import masked_images, set_class_targets, targets_from_embeddings
        >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car"])
        >>> images = torch.rand(2, 3, 3, 32, 32)  # (B, N, 3, H, W)
        >>> masks = (torch.rand(2, 3, 1, 32, 32) > 0.5).float()  # (B, N, 1, H, W)
        >>> classes = set_class_targets(clip, images, masks)
        >>> classes.shape, classes.dtype, bool(((classes >= 0) & (classes < 3)).all())
        (torch.Size([2]), torch.int64, True)
        >>> emb = clip.encode_images(masked_images(images, masks))  # the same, step by step
        >>> emb.shape
        torch.Size([2, 3, 32])
        >>> torch.equal(classes, targets_from_embeddings(emb, clip.text_bank))
        True
    """
    check_image_set(images)
    emb = clip.encode_images(masked_images(images, masks))
    return targets_from_embeddings(emb, clip.text_bank, valid)
