"""Pre-training a :class:`~cosegkit.models.segclip.SegClip` on a captioned world, from captions alone.

SegCLIP (Luo et al., ICML 2023) trains its grouping ViT from image-caption pairs with three
losses (``modules/modeling.py``, ``SegCLIP.forward``):

- the image-text contrastive loss: cross-entropy both ways, halved, on the cosines scaled by
  ``min(exp(logit_scale), 100)``;
- the superpixel (clustering) loss on the hard assignment of the patches to the groups
  (:func:`~cosegkit.losses.superpixel_loss`), against Felzenszwalb superpixels of each image
  (:func:`~cosegkit.data.superpixels.superpixel_labels`, computed in the loop);
- the reconstruction loss: masked patches rebuilt from the groups of the kept ones
  (:meth:`SegClip.reconstruction_loss <cosegkit.models.segclip.SegClip.reconstruction_loss>`).

No mask of the world is read: a step sees images and captions only. :func:`pretrain_segclip`
draws exactly the images and captions that :func:`~cosegkit.engine.pretrain.pretrain_clip`
draws for the same seed, steps and batch size, with the same optimiser and schedule, so a
SegCLIP and a plain CLIP pre-trained at the same recipe values differ in the method only.

Two architectures (:data:`SEGCLIP_SYNTHETIC_CONFIG`, :data:`SEGCLIP_COMPOSITE_CONFIG`) have
the synthetic CLIP's tower sizes, and two recipes (:data:`SEGCLIP_SYNTHETIC_RECIPE`,
:data:`SEGCLIP_COMPOSITE_RECIPE`) the plain CLIPs' budgets.

Axis legend (einops):
    b   batch (image-caption pairs)   g   groups   h w   patch grid   d   joint embedding width
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from cosegkit.engine.pretrain import (
    COMPOSITE_RECIPE,
    SYNTHETIC_TEMPLATES,
    CaptionedWorld,
    ClipPretrainConfig,
    _pairs,
    adamw_warmup_cosine,
    cache_folder,
    threads_tag,
    zero_shot_accuracy,
)
from cosegkit.errors import CosegValueError
from cosegkit.models.segclip import SEGCLIP_MEAN, SEGCLIP_STD, SegClip, SegClipConfig

__all__ = [
    "SEGCLIP_COMPOSITE",
    "SEGCLIP_COMPOSITE_CONFIG",
    "SEGCLIP_COMPOSITE_RECIPE",
    "SEGCLIP_SYNTHETIC",
    "SEGCLIP_SYNTHETIC_CONFIG",
    "SEGCLIP_SYNTHETIC_RECIPE",
    "SegClipRecipe",
    "contrastive_loss",
    "pretrain_segclip",
    "segclip_zero_shot_accuracy",
]

RECORD_NAME = "pretrain.json"
"""The file beside the weights in a pre-trained model folder: recipe, architecture, world, time, final losses."""

#: The name of the SegCLIP architecture for the synthetic world (:data:`SEGCLIP_SYNTHETIC_CONFIG`).
SEGCLIP_SYNTHETIC = "segclip-synthetic"
SEGCLIP_SYNTHETIC_CONFIG = SegClipConfig(
    embed_dim=64,
    image_size=64,
    patch_size=8,
    width=96,
    layers=3,
    first_stage_layer=2,
    num_groups=8,
    cross_layers=2,
    context_length=32,
    text_width=64,
    text_layers=2,
    head_width=32,
    mae_decoder=True,
    decoder_depth=3,
    decoder_heads=8,
)
"""The sizes of the synthetic world's SegCLIP, the synthetic CLIP's towers (``SYNTHETIC_CLIP_CONFIG``
of :mod:`cosegkit.engine.pretrain`; 64 px, patch 8, width 96, 3 blocks of 3 heads; text width 64, 2
layers of 2 heads, 32 positions; a 64-wide joint space) with the group module after block 2, 8
centres refined by 2 cross-attention blocks, and SegCLIP's MAE decoder (width 48, 3 blocks, 8 heads)."""

#: The name of the SegCLIP architecture for the composite world of real photos (:data:`SEGCLIP_COMPOSITE_CONFIG`).
SEGCLIP_COMPOSITE = "segclip-composite"
SEGCLIP_COMPOSITE_CONFIG = SEGCLIP_SYNTHETIC_CONFIG
"""The sizes of the composite world's SegCLIP, those of the synthetic one. The composite plain CLIP
is a ResNet (:data:`~cosegkit.engine.pretrain.COMPOSITE_CLIP_CONFIG`), which SegCLIP's grouping
cannot follow (it needs a ViT's patch tokens)."""

_ARCHITECTURES: dict[str, SegClipConfig] = {
    SEGCLIP_SYNTHETIC: SEGCLIP_SYNTHETIC_CONFIG,
    SEGCLIP_COMPOSITE: SEGCLIP_COMPOSITE_CONFIG,
}


@dataclass(frozen=True)
class SegClipRecipe:
    """How a :class:`~cosegkit.models.segclip.SegClip` is pre-trained on a captioned world (:func:`pretrain_segclip`).

    Attributes:
        architecture: :data:`SEGCLIP_SYNTHETIC` or :data:`SEGCLIP_COMPOSITE` (the sizes).
        steps: optimizer steps.
        batch_size: image-caption pairs per step (drawn as sets of 4 images, as
            :func:`~cosegkit.engine.pretrain.pretrain_clip` draws them).
        lr: peak learning rate (AdamW, cosine schedule after a warm-up of ``steps // 20``).
        weight_decay: AdamW's weight decay.
        seed: seed of the model's initialisation and of the data.
        superpixel_weight: weight of the superpixel loss (0: not computed).
        reconstruction_weight: weight of the reconstruction loss (0: the masked-patch pass is
            not run; the MAE decoder stays as initialised).
        mask_ratio: the share of patches the reconstruction removes (SegCLIP: 0.75).

    Example:
        >>> from dataclasses import replace
        >>> from cosegkit.engine.segclip_pretrain import SEGCLIP_SYNTHETIC_RECIPE, SegClipRecipe
        >>> recipe = SEGCLIP_SYNTHETIC_RECIPE
        >>> recipe.steps, recipe.batch_size, recipe.lr, recipe.superpixel_weight, recipe.reconstruction_weight
        (600, 128, 0.002, 1.0, 0.0)
        >>> replace(recipe, reconstruction_weight=0.0).config.mae_decoder  # the architecture stays
        True
        >>> SegClipRecipe(mask_ratio=1.0)
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegValueError: SegClipRecipe.mask_ratio must lie in (0, 1) (the share of patches the reconstruction removes), got 1.0
    """

    architecture: str = SEGCLIP_SYNTHETIC
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    seed: int = 0
    superpixel_weight: float = 1.0
    reconstruction_weight: float = 1.0
    mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        if self.architecture not in _ARCHITECTURES:
            raise CosegValueError(
                f"unknown SegCLIP architecture {self.architecture!r}; cosegkit pre-trains {sorted(_ARCHITECTURES)}"
            )
        for name, least in (("steps", 1), ("batch_size", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CosegValueError(f"SegClipRecipe.{name} must be an int >= {least}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise CosegValueError(f"SegClipRecipe.seed must be an int, got {self.seed!r}")
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.type == "float"}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CosegValueError(f"SegClipRecipe.{name} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise CosegValueError(f"SegClipRecipe.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "superpixel_weight", "reconstruction_weight"):
            if getattr(self, name) < 0:
                raise CosegValueError(
                    f"SegClipRecipe.{name} must be >= 0 (0 switches it off), got {getattr(self, name)}"
                )
        if not 0.0 < self.mask_ratio < 1.0:
            raise CosegValueError(
                "SegClipRecipe.mask_ratio must lie in (0, 1) (the share of patches the reconstruction removes), "
                f"got {self.mask_ratio}"
            )

    @property
    def config(self) -> SegClipConfig:
        """The sizes of the model this recipe trains."""
        return _ARCHITECTURES[self.architecture]

    def key(self, world: CaptionedWorld) -> str:
        """A short hash of the recipe, the architecture's sizes and ``world.fingerprint()``, naming the cache folder."""
        blob = json.dumps(
            {"recipe": asdict(self), "config": asdict(self.config), "world": world.fingerprint()}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SYNTHETIC_CLIP_RECIPE = ClipPretrainConfig().recipe()
SEGCLIP_SYNTHETIC_RECIPE = SegClipRecipe(
    SEGCLIP_SYNTHETIC,
    steps=_SYNTHETIC_CLIP_RECIPE.steps,
    batch_size=_SYNTHETIC_CLIP_RECIPE.batch_size,
    lr=_SYNTHETIC_CLIP_RECIPE.lr,
    weight_decay=_SYNTHETIC_CLIP_RECIPE.weight_decay,
    reconstruction_weight=0.0,
)
"""The recipe of the synthetic world's SegCLIP, at the synthetic CLIP's budget (600 steps of 128 pairs, lr 2e-3),
with the contrastive and superpixel losses: the reconstruction loss cost 6 to 10 J of the zero-shot
row on a development seed's model and sets (the equations page's SegCLIP pre-training section)."""
SEGCLIP_COMPOSITE_RECIPE = SegClipRecipe(
    SEGCLIP_COMPOSITE,
    steps=COMPOSITE_RECIPE.steps,
    batch_size=COMPOSITE_RECIPE.batch_size,
    lr=5e-4,
    weight_decay=COMPOSITE_RECIPE.weight_decay,
    reconstruction_weight=0.0,
)
"""The recipe of the composite world's SegCLIP, at the composite CLIP's budget
(:data:`~cosegkit.engine.pretrain.COMPOSITE_RECIPE`: 2000 steps of 128 pairs) with a peak learning
rate of 5e-4: at the CLIP's 2e-3 the ViT's contrastive loss stayed at chance (ln 128) on a
development seed, and at 5e-4 it fell (the equations page's SegCLIP pre-training section); the
reconstruction loss off, as on the synthetic world."""


def _normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] resized to ``size`` and normalised with CLIP's statistics."""
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(SEGCLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(SEGCLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def _superpixels(images: torch.Tensor) -> torch.Tensor:
    """Felzenszwalb labels of each image ``(B, 3, H, W)`` in [0, 1]: ``(B, H, W)`` int64."""
    from cosegkit.data.superpixels import superpixel_labels

    return torch.stack([superpixel_labels(image).long() for image in images])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """SegCLIP's image-text loss: cross-entropy both ways, halved, on ``min(exp(logit_scale), 100)`` times the cosines.

    Shape:
        - image, text: ``(B, D)`` embeddings of matching pairs (row ``i`` of each), not normalised.
        - logit_scale: a scalar, the log of the temperature's inverse.
        - output: a scalar.

    Example:
        >>> import torch
        >>> from cosegkit.engine.segclip_pretrain import contrastive_loss
        >>> pairs = torch.eye(3)
        >>> round(contrastive_loss(pairs, pairs, torch.tensor(100.0)).item(), 6)  # the scale is clamped at 100
        0.0
        >>> round(contrastive_loss(pairs, pairs.roll(1, 0), torch.tensor(0.0)).item(), 4)
        1.5514
    """
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _write_folder(target: Path, model: SegClip, record: dict) -> None:
    """Write the model and its record into a temporary folder beside ``target``, then rename it into place."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        model.save_pretrained(tmp)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():  # --no-cache over an existing result: set the old one aside, then drop it
            old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _is_complete(folder: Path) -> bool:
    from cosegkit.models.segclip import CONFIG_NAME, WEIGHTS_NAME

    return all((folder / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME))


def pretrain_segclip(
    world: CaptionedWorld,
    recipe: SegClipRecipe = SEGCLIP_SYNTHETIC_RECIPE,
    *,
    cache: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train (or reuse) a :class:`~cosegkit.models.segclip.SegClip` on a world's images and captions; returns its folder.

    Each step draws the ``recipe.batch_size`` images and captions that
    :func:`~cosegkit.engine.pretrain.pretrain_clip` draws at that step for the same seed, and
    takes one AdamW step (betas 0.9, 0.98; warm-up of ``steps // 20`` then a cosine; the
    logit scale clamped to at most 100 after each step, as ``pretrain_clip``) on

    .. math::
        \\mathcal L = \\mathcal L_{itc} + w_{sp} \\mathcal L_{sp} + w_{rec} \\mathcal L_{rec}

    with :func:`contrastive_loss`, the superpixel loss of the training-mode hard assignment
    against each image's Felzenszwalb superpixels, and the reconstruction loss (a second pass
    on the masked images). A loss whose weight is 0 is not computed. Masks are never read.

    The folder, written by :meth:`SegClip.save_pretrained
    <cosegkit.models.segclip.SegClip.save_pretrained>` with a ``pretrain.json`` of the
    recipe, the sizes, the world, the training and superpixel seconds and the last step's
    losses, is ``<cache>/segclip/<architecture>-<key>-threads<T>`` (:meth:`SegClipRecipe.key`;
    ``T`` the torch thread count, on which the weights depend by float rounding); it is
    written to a temporary folder and renamed into place, so an interrupted run leaves no
    partial result. With ``cache=True`` an existing folder for the same key and thread count
    is returned without training.

    Args:
        world: a captioned world (:class:`~cosegkit.engine.pretrain.CaptionedWorld`), e.g. the
            training part of a :class:`~cosegkit.data.composite.CompositeWorld`.
        recipe: the architecture, the optimisation and the loss weights.
        cache: reuse a cached result (and write the new one).
        progress: called as ``progress(step, steps, loss)`` after each step (the total loss).

    Returns:
        The model folder; load it with :meth:`SegClip.from_pretrained <cosegkit.models.segclip.SegClip.from_pretrained>`.

    Example:
        Two steps on a tiny synthetic world, cached in a throw-away folder; the second call
        finds the folder and does not train:

        >>> import json
        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> from cosegkit.engine.pretrain import threads_tag
        >>> from cosegkit.engine.segclip_pretrain import SegClipRecipe, pretrain_segclip
        >>> from cosegkit.models.segclip import SegClip
        >>> world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)
        >>> recipe = SegClipRecipe(steps=2, batch_size=4)
        >>> calls = []
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     folder = pretrain_segclip(world, recipe, progress=lambda *args: calls.append(args))
        ...     again = pretrain_segclip(world, recipe)
        >>> folder.parent.name, folder.name == f"segclip-synthetic-{recipe.key(world)}-{threads_tag()}", again == folder, len(calls)
        ('segclip', True, True, 2)
        >>> sorted(json.loads((folder / "pretrain.json").read_text())["final_losses"])
        ['contrastive', 'reconstruction', 'superpixel', 'total']
        >>> SegClip.from_pretrained(folder).config == recipe.config
        True
    """
    import open_clip

    from cosegkit.losses import superpixel_loss

    if not isinstance(world, CaptionedWorld):
        raise CosegValueError(
            f"expected a captioned world (class_names, sample_set, fingerprint: a SyntheticWorld or a "
            f"CompositeWorld), got {type(world).__name__}"
        )
    if not isinstance(recipe, SegClipRecipe):
        raise CosegValueError(f"expected a SegClipRecipe, got {type(recipe).__name__}")
    folder = cache_folder() / "segclip"
    target = folder / f"{recipe.architecture}-{recipe.key(world)}-{threads_tag()}"
    if cache and _is_complete(target):
        return target

    config = recipe.config
    torch.manual_seed(recipe.seed)
    model = SegClip(config)
    optimizer, schedule = adamw_warmup_cosine(model.parameters(), recipe.lr, recipe.weight_decay, recipe.steps)
    model.train()
    start = time.perf_counter()
    superpixel_seconds = 0.0
    losses: dict[str, float] = {}
    for step in range(recipe.steps):
        images, captions = _pairs(world, recipe.batch_size, (recipe.seed, 1, step))
        x = _normalise(images, config.image_size)
        tokens = open_clip.tokenize(captions, context_length=config.context_length)
        out = model.encode_image(x)
        contrastive = contrastive_loss(out.embedding, model.encode_text(tokens), model.logit_scale)
        loss = contrastive
        terms = {"contrastive": contrastive}
        if recipe.superpixel_weight > 0:
            tick = time.perf_counter()
            labels = _superpixels(images)
            superpixel_seconds += time.perf_counter() - tick
            terms["superpixel"] = superpixel_loss(out.hard[:, None], labels[:, None])
            loss = loss + recipe.superpixel_weight * terms["superpixel"]
        if recipe.reconstruction_weight > 0:
            terms["reconstruction"] = model.reconstruction_loss(x, mask_ratio=recipe.mask_ratio)
            loss = loss + recipe.reconstruction_weight * terms["reconstruction"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses = {"total": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        if progress is not None:
            progress(step + 1, recipe.steps, losses["total"])
    elapsed = time.perf_counter() - start

    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "recipe": asdict(recipe),
        "config": asdict(config),
        "world": {"type": type(world).__name__, "fingerprint": world.fingerprint(), "classes": list(world.class_names)},
        "threads": torch.get_num_threads(),
        "train_seconds": round(elapsed, 1),
        "superpixel_seconds": round(superpixel_seconds, 1),
        "final_losses": {k: round(v, 6) for k, v in losses.items()},
    }
    _write_folder(target, model.eval(), record)
    return target


class _SegClipNamer:
    """A :class:`SegClip` seen as :func:`~cosegkit.engine.pretrain.zero_shot_accuracy` sees a CLIP."""

    def __init__(self, model: SegClip, classnames: list[str], templates: tuple[str, ...]) -> None:
        import open_clip

        self.model = model
        self.classnames = list(classnames)
        device = next(model.parameters()).device
        banks = []
        for template in templates:
            prompts = [template.format(name) for name in self.classnames]
            tokens = open_clip.tokenize(prompts, context_length=model.config.context_length).to(device)
            banks.append(F.normalize(model.encode_text(tokens), dim=-1))
        self.text_bank = F.normalize(torch.stack(banks).mean(0), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        x = _normalise(images.flatten(0, 1).to(self.text_bank.device), self.model.image_size)
        return F.normalize(self.model.encode_image(x).embedding, dim=-1).unflatten(0, (b, -1))


@torch.no_grad()
def segclip_zero_shot_accuracy(
    model: SegClip,
    world: CaptionedWorld,
    sets: int = 50,
    set_size: int = 5,
    seed: int | tuple[int, ...] = 12345,
    templates: tuple[str, ...] = SYNTHETIC_TEMPLATES,
) -> dict:
    """How well a SegClip names a world's classes, per set and per image, as :func:`~cosegkit.engine.pretrain.zero_shot_accuracy` scores a CLIP.

    The image embedding (the maximum over the group tokens, in eval mode) against the class
    prompts' text embeddings (``templates``, default ``"a {}"``), on the same held-out sets
    as ``zero_shot_accuracy`` draws for the same ``seed``.

    Args:
        model: the SegClip (put in eval mode here and left so).
        world: a captioned world.
        sets: held-out sets to score.
        set_size: images per set.
        seed: first word(s) of the held-out seeds.
        templates: the prompt templates, averaged.

    Returns:
        ``{"set_top1", "set_top5", "chance", "image_top1", "image_chance"}`` as ``zero_shot_accuracy``.

    Example:
        A SegClip with random weights over a 3-class world:

        >>> import torch
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> from cosegkit.engine.segclip_pretrain import SEGCLIP_SYNTHETIC_CONFIG, segclip_zero_shot_accuracy
        >>> from cosegkit.models.segclip import SegClip
        >>> world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)
        >>> scores = segclip_zero_shot_accuracy(SegClip(SEGCLIP_SYNTHETIC_CONFIG), world, sets=4, set_size=2)
        >>> sorted(scores), round(scores["chance"], 3), scores["set_top5"]
        (['chance', 'image_chance', 'image_top1', 'set_top1', 'set_top5'], 0.333, 1.0)
    """
    if not isinstance(model, SegClip):
        raise CosegValueError(f"expected a SegClip, got {type(model).__name__}")
    model.eval()
    return zero_shot_accuracy(_SegClipNamer(model, world.class_names, templates), world, sets, set_size, seed)
