"""Contrastive pre-training of a small CLIP on a captioned co-segmentation world.

Pretrained CLIP weights cannot always be downloaded (offline machines, CI). So that the CLIP
modules of LCCo carry real semantics there too, this module trains a small open_clip model on
a world's images and captions with open_clip's own model classes and contrastive loss
(``open_clip.ClipLoss``): the synthetic world's (``"a red striped circle and a blue square"``)
or a :class:`~cosegkit.data.composite.CompositeWorld`'s of real object cut-outs
(``"a cow and a dog"``). The result is cached by its settings and the world's content under
the user's cache folder and reused.

Two architectures are registered with open_clip on demand (nothing is registered at import):

- ``"coseg-synthetic-clip"`` (:func:`register_synthetic_clip`): a 3-layer ViT on 64 px input
  with patch 8, a 2-layer text transformer, a 64-wide joint space. Coloured shapes need no more.
- ``"coseg-composite-clip"`` (:func:`register_composite_clip`): a small convolutional tower
  (open_clip's ``ModifiedResNet``) with the same text tower, for real photographs, on which the
  ViT learns far more slowly (the measurements are on the datasets page).

Any world with ``class_names``, ``sample_set(n, seed=...)`` returning ``images`` and
``captions``, and ``fingerprint()`` can be pre-trained on (:func:`pretrain_clip`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from cosegkit._files import atomic_write
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.errors import CosegValueError

__all__ = [
    "COMPOSITE_CLIP",
    "COMPOSITE_CLIP_CONFIG",
    "COMPOSITE_RECIPE",
    "SYNTHETIC_CLIP",
    "SYNTHETIC_CLIP_CONFIG",
    "SYNTHETIC_TEMPLATES",
    "CaptionedWorld",
    "ClipPretrainConfig",
    "ClipRecipe",
    "adamw_warmup_cosine",
    "cache_folder",
    "pretrain_clip",
    "pretrain_synthetic_clip",
    "register_composite_clip",
    "register_synthetic_clip",
    "threads_tag",
    "zero_shot_accuracy",
]

#: The open_clip architecture name under which :func:`register_synthetic_clip` registers the small CLIP.
SYNTHETIC_CLIP = "coseg-synthetic-clip"
SYNTHETIC_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
#: The open_clip architecture name under which :func:`register_composite_clip` registers the
#: small CLIP for worlds of real photographs.
COMPOSITE_CLIP = "coseg-composite-clip"
#: The open_clip config of the composite CLIP, a ``ModifiedResNet`` image tower (layers ``[2, 2, 2, 2]``,
#: width 32) on 64 px input with the synthetic CLIP's text tower and a 64-wide joint space.
COMPOSITE_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [2, 2, 2, 2], "width": 32, "patch_size": None, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SYNTHETIC_TEMPLATES: tuple[str, ...] = ("a {}",)
"""The prompt template that matches the worlds' captions (``"a red striped circle"``, ``"a cow"``)."""

_ARCHITECTURES: dict[str, dict] = {SYNTHETIC_CLIP: SYNTHETIC_CLIP_CONFIG, COMPOSITE_CLIP: COMPOSITE_CLIP_CONFIG}


def cache_folder() -> Path:
    """Where cosegkit caches what it builds: ``$COSEGKIT_CACHE``, else ``$XDG_CACHE_HOME/cosegkit``
    (``~/.cache/cosegkit``).

    Example:
        The folder follows the environment (changed here for a block only, then restored):

        >>> import os
        >>> import tempfile
        >>> from pathlib import Path
        >>> from unittest import mock
        >>> from cosegkit.engine.pretrain import cache_folder
        >>> folder = tempfile.mkdtemp()
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": folder}):
        ...     print(cache_folder() == Path(folder))
        True
        >>> with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": folder}):
        ...     _ = os.environ.pop("COSEGKIT_CACHE", None)  # unset inside the block only
        ...     print(cache_folder() == Path(folder) / "cosegkit")
        True
    """
    if os.environ.get("COSEGKIT_CACHE"):
        return Path(os.environ["COSEGKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cosegkit"


def threads_tag() -> str:
    """The intra-op thread count pre-training runs with, as the end of a cached file's name.

    The result of pre-training depends on it by float rounding (matrix products split their
    work by thread), so a CLIP pre-trained with one thread and one pre-trained with two are
    two cached files, never one silently standing in for the other.

    Example:
        >>> import torch
        >>> from cosegkit.engine.pretrain import threads_tag
        >>> threads_tag() == f"threads{torch.get_num_threads()}"
        True
    """
    return f"threads{torch.get_num_threads()}"


def _register(name: str) -> str:
    """Register one of cosegkit's architectures with open_clip (idempotent)."""
    import open_clip

    if name not in open_clip.list_models():
        folder = cache_folder() / "open_clip_configs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        text = json.dumps(_ARCHITECTURES[name])
        if not path.is_file() or path.read_text() != text:
            # atomically: processes started together (torchrun, a process pool) read this file
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        open_clip.add_model_config(path)
    return name


def register_synthetic_clip() -> str:
    """Register the ``"coseg-synthetic-clip"`` architecture with open_clip (idempotent).

    The config file open_clip reads is written to ``<cache>/open_clip_configs`` (see
    :func:`cache_folder`).

    Returns:
        The architecture name, :data:`SYNTHETIC_CLIP`.

    Example:
        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> import open_clip
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine.pretrain import SYNTHETIC_TEMPLATES, register_synthetic_clip
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):  # a throw-away cache
        ...     name = register_synthetic_clip()
        >>> name, name in open_clip.list_models()
        ('coseg-synthetic-clip', True)

        Built with random weights (``pretrained=None``); :func:`pretrain_synthetic_clip` trains them:

        >>> clip = FrozenClip.from_name(name, pretrained=None, classnames=["red dotted ring", "blue striped square"],
        ...                             templates=SYNTHETIC_TEMPLATES)
        >>> clip.image_size, clip.text_bank.shape
        ((64, 64), torch.Size([2, 64]))
        >>> clip.encode_images(torch.rand(1, 3, 3, 64, 64)).shape
        torch.Size([1, 3, 64])
    """
    return _register(SYNTHETIC_CLIP)


def register_composite_clip() -> str:
    """Register the ``"coseg-composite-clip"`` architecture with open_clip (idempotent).

    A small ``ModifiedResNet`` image tower (:data:`COMPOSITE_CLIP_CONFIG`) with the synthetic
    CLIP's text tower, for worlds of real photographs (:func:`pretrain_clip`).

    Returns:
        The architecture name, :data:`COMPOSITE_CLIP`.

    Example:
        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine.pretrain import SYNTHETIC_TEMPLATES, register_composite_clip
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     name = register_composite_clip()
        >>> clip = FrozenClip.from_name(name, pretrained=None, classnames=["cow", "dog"], templates=SYNTHETIC_TEMPLATES)
        >>> type(clip.model.visual).__name__, clip.image_size
        ('ModifiedResNet', (64, 64))
        >>> clip.encode_images(torch.rand(1, 3, 3, 64, 64)).shape
        torch.Size([1, 3, 64])
    """
    return _register(COMPOSITE_CLIP)


@runtime_checkable
class CaptionedWorld(Protocol):
    """What :func:`pretrain_clip` needs of a world: class names, captioned sets and a fingerprint.

    :class:`~cosegkit.data.synthetic.SyntheticWorld` and
    :class:`~cosegkit.data.composite.CompositeWorld` are captioned worlds. ``sample_set(n,
    seed=s)`` returns an object with ``images`` ``(n, 3, S, S)`` in [0, 1], one caption per image
    in ``captions``, the shared class index in ``target`` and each image's class indices in
    ``present_classes``; ``fingerprint()`` is a short string that changes whenever what the
    world generates does (it names the cached weights).

    Example:
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> from cosegkit.engine.pretrain import CaptionedWorld
        >>> isinstance(SyntheticWorld(num_classes=6, image_size=32), CaptionedWorld), isinstance(object(), CaptionedWorld)
        (True, False)
    """

    @property
    def class_names(self) -> list[str]: ...

    def sample_set(self, set_size: int, *, seed: Any = None) -> Any: ...

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class ClipRecipe:
    """How a small CLIP is pre-trained on a captioned world (:func:`pretrain_clip`).

    Attributes:
        architecture: :data:`SYNTHETIC_CLIP` or :data:`COMPOSITE_CLIP`.
        steps: optimizer steps.
        batch_size: image-caption pairs per step (drawn as sets of 4 images).
        lr: peak learning rate (AdamW, cosine schedule after a warm-up of ``steps // 20``).
        weight_decay: AdamW's weight decay.
        seed: seed of the model's initialisation and of the data.

    Example:
        >>> from dataclasses import replace
        >>> from cosegkit.engine.pretrain import COMPOSITE_CLIP, ClipRecipe
        >>> recipe = ClipRecipe(COMPOSITE_CLIP, steps=2000)
        >>> recipe.batch_size, recipe.lr, replace(recipe, seed=1) == recipe
        (128, 0.002, False)
    """

    architecture: str = SYNTHETIC_CLIP
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in _ARCHITECTURES:
            raise CosegValueError(
                f"unknown CLIP architecture {self.architecture!r}; cosegkit pre-trains {sorted(_ARCHITECTURES)}"
            )
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "steps" else 2):
                raise CosegValueError(f"need steps >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise CosegValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")

    def key(self, world: CaptionedWorld) -> str:
        """A short hash of the recipe, the architecture and the world, naming the cache file."""
        blob = json.dumps(
            {"recipe": asdict(self), "arch": _ARCHITECTURES[self.architecture], "world": world.fingerprint()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


COMPOSITE_RECIPE = ClipRecipe(COMPOSITE_CLIP, steps=2000, batch_size=128, lr=2e-3)
"""The default recipe of the composite CLIP (``cosegkit pretrain-clip --dataset composite``): the
ResNet tower of :data:`COMPOSITE_CLIP_CONFIG`, 2000 steps of 128 image-caption pairs."""


@dataclass(frozen=True)
class ClipPretrainConfig:
    """Settings of the synthetic CLIP's pre-training: the synthetic world and the recipe.

    Attributes:
        num_classes: classes of the synthetic world.
        world_seed: the world's seed (which classes).
        objects_per_image: objects per image, as :class:`~cosegkit.data.synthetic.SyntheticWorld`.
        image_size: side of the generated images.
        steps: optimizer steps.
        batch_size: image-caption pairs per step.
        lr: peak learning rate (cosine schedule after a short warm-up).
        seed: seed of the model's initialisation and of the data.

    Example:
        About the smallest settings allowed: a 3-class world of 32 px images with one object
        each, one step of two image-caption pairs:

        >>> from dataclasses import replace
        >>> from cosegkit.engine.pretrain import ClipPretrainConfig
        >>> config = ClipPretrainConfig(num_classes=3, objects_per_image=(1, 1), image_size=32, steps=1, batch_size=2)
        >>> world = config.world()
        >>> world.num_classes, world.image_size, world.objects_per_image
        (3, 32, (1, 1))
        >>> pairs = world.sample_set(2, seed=0)
        >>> pairs.images.shape, len(pairs.captions)
        (torch.Size([2, 3, 32, 32]), 2)
        >>> config.recipe().architecture
        'coseg-synthetic-clip'

        Equal settings share a cache key; any change gives another:

        >>> key = config.key()
        >>> len(key), key == replace(config).key(), key == replace(config, steps=2).key()
        (16, True, False)
    """

    num_classes: int = 16
    world_seed: int = 0
    objects_per_image: tuple[int, int] = (2, 3)
    image_size: int = 64
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    def key(self) -> str:
        """A short hash of the settings and the architecture, naming the cache file."""
        return self.recipe().key(self.world())

    def world(self) -> SyntheticWorld:
        """The synthetic world these settings describe."""
        return SyntheticWorld(
            num_classes=self.num_classes,
            image_size=self.image_size,
            objects_per_image=self.objects_per_image,
            seed=self.world_seed,
        )

    def recipe(self) -> ClipRecipe:
        """The pre-training recipe these settings describe (the synthetic CLIP's architecture)."""
        return ClipRecipe(SYNTHETIC_CLIP, self.steps, self.batch_size, self.lr, seed=self.seed)


def _pairs(world: CaptionedWorld, count: int, seed: tuple[int, ...]) -> tuple[torch.Tensor, list[str]]:
    """``count`` images with their captions: sets of 4 images, flattened."""
    images, captions = [], []
    per_set = 4
    for i in range((count + per_set - 1) // per_set):
        s = world.sample_set(per_set, seed=(*seed, i))
        images.append(s.images)
        captions += list(s.captions)
    return torch.cat(images)[:count], captions[:count]


def adamw_warmup_cosine(
    parameters: Any, lr: float, weight_decay: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser of cosegkit's CLIP pre-training: AdamW (betas 0.9, 0.98) and a linear warm-up
    over ``steps // 20`` steps, then a cosine to 0 at ``steps`` (step the schedule once a step).

    Example:
        >>> import torch
        >>> from cosegkit.engine.pretrain import adamw_warmup_cosine
        >>> optimizer, schedule = adamw_warmup_cosine([torch.zeros(1, requires_grad=True)], 1.0, 0.1, 40)
        >>> rates = []
        >>> for _ in range(40):
        ...     rates.append(round(optimizer.param_groups[0]["lr"], 3))
        ...     optimizer.step()
        ...     schedule.step()
        >>> rates[:3], rates[2], rates[-1]
        ([0.5, 1.0, 1.0], 1.0, 0.002)
    """
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + torch.cos(torch.tensor((s - warmup) / max(1, steps - warmup) * torch.pi)).item())
        ),
    )
    return optimizer, schedule


def pretrain_clip(
    world: CaptionedWorld,
    recipe: ClipRecipe = ClipRecipe(),
    *,
    cache: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train (or reuse) a small CLIP on a captioned world's images and captions; returns its weights file.

    Each step draws ``recipe.batch_size`` images (sets of 4) with their captions and takes
    one AdamW step of ``open_clip.ClipLoss``. The weights are saved as
    ``<cache>/clip/<architecture>-<key>-threads<T>.safetensors`` with a JSON file of the
    settings beside it; the key hashes the recipe, the architecture and ``world.fingerprint()``,
    and ``T`` is ``torch.get_num_threads()`` (:func:`threads_tag`: the weights depend on it by
    float rounding). With ``cache=True`` an existing file for the same key and thread count is
    returned without training. The file loads with ``FrozenClip.from_name(recipe.architecture,
    pretrained=path)`` after registering the architecture (:func:`register_synthetic_clip`,
    :func:`register_composite_clip`).

    Args:
        world: the world, e.g. the training part of a
            :class:`~cosegkit.data.composite.CompositeWorld` (held-out photos must not be in it).
        recipe: the architecture and the optimisation.
        cache: reuse a cached result (and write the new one).
        progress: called as ``progress(step, steps, loss)`` after each step.

    Returns:
        The path of the ``.safetensors`` weights.

    Example:
        Two steps of the composite CLIP on a tiny world of real-looking cut-outs, cached in a
        throw-away folder:

        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.data.composite import CompositeWorld
        >>> from cosegkit.engine.pretrain import COMPOSITE_CLIP, SYNTHETIC_TEMPLATES, ClipRecipe, pretrain_clip
        >>> from cosegkit.engine.pretrain import register_composite_clip, threads_tag
        >>> world = CompositeWorld.from_arrays([torch.rand(3, 20, 20) for _ in range(8)], [torch.ones(20, 20)] * 8,
        ...                                    ["cat", "dog", "cow", "bus"] * 2, image_size=32, objects_per_image=2)
        >>> recipe = ClipRecipe(COMPOSITE_CLIP, steps=2, batch_size=4)
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     path = pretrain_clip(world, recipe)
        ...     again = pretrain_clip(world, recipe)
        ...     _ = register_composite_clip()
        >>> path.name == f"coseg-composite-clip-{recipe.key(world)}-{threads_tag()}.safetensors", again == path
        (True, True)
        >>> clip = FrozenClip.from_name(COMPOSITE_CLIP, pretrained=str(path), classnames=world.class_names,
        ...                             templates=SYNTHETIC_TEMPLATES)
        >>> clip.text_bank.shape
        torch.Size([4, 64])
    """
    import open_clip
    from safetensors.torch import save_file

    if not isinstance(world, CaptionedWorld):
        raise CosegValueError(
            f"expected a captioned world (class_names, sample_set, fingerprint: a SyntheticWorld or a "
            f"CompositeWorld), got {type(world).__name__}"
        )
    folder = cache_folder() / "clip"
    target = folder / f"{recipe.architecture}-{recipe.key(world)}-{threads_tag()}.safetensors"
    if cache and target.is_file():
        return target

    _register(recipe.architecture)
    arch = _ARCHITECTURES[recipe.architecture]
    torch.manual_seed(recipe.seed)
    model = open_clip.create_model(recipe.architecture, pretrained=None)
    tokenizer = open_clip.get_tokenizer(recipe.architecture)
    visual = model.visual
    mean = torch.tensor(visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    size = visual.preprocess_cfg.get("size", arch["vision_cfg"]["image_size"])
    size = (size, size) if isinstance(size, int) else tuple(size)
    loss_fn = open_clip.ClipLoss()
    optimizer, schedule = adamw_warmup_cosine(model.parameters(), recipe.lr, recipe.weight_decay, recipe.steps)
    model.train()
    start = time.perf_counter()
    for step in range(recipe.steps):
        images, captions = _pairs(world, recipe.batch_size, (recipe.seed, 1, step))
        x = images if tuple(images.shape[-2:]) == size else F.interpolate(images, size=size, mode="bilinear")
        x = (x - mean) / std
        image_features, text_features, logit_scale = model(x, tokenizer(captions))[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)  # at most 100, as open_clip's training does
        if progress is not None:
            progress(step + 1, recipe.steps, float(loss.detach()))
    elapsed = time.perf_counter() - start

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(target, lambda tmp: save_file(state, tmp))  # the usual mode, not safetensors' 0o600
    meta = {
        "recipe": asdict(recipe),
        "arch": arch,
        "world": {"type": type(world).__name__, "fingerprint": world.fingerprint(), "classes": list(world.class_names)},
        "threads": torch.get_num_threads(),
        "train_seconds": round(elapsed, 1),
    }
    atomic_write(target.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return target


def pretrain_synthetic_clip(
    config: ClipPretrainConfig = ClipPretrainConfig(),
    *,
    cache: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train (or reuse) a small CLIP on the synthetic world; returns its weights file.

    :func:`pretrain_clip` on ``config.world()`` with ``config.recipe()``. The weights are saved
    as ``<cache>/clip/coseg-synthetic-clip-<key>-threads<T>.safetensors`` (``T`` the torch thread
    count) with a JSON file of the settings beside it. With ``cache=True`` an existing file for
    the same settings and thread count is returned without training. The file loads with
    ``FrozenClip.from_name("coseg-synthetic-clip", pretrained=path)`` after
    :func:`register_synthetic_clip`.

    Args:
        config: the settings.
        cache: reuse a cached result (and write the new one).
        progress: called as ``progress(step, steps, loss)`` after each step.

    Returns:
        The path of the ``.safetensors`` weights.

    Example:
        Two steps on tiny settings, cached in a throw-away folder; the second call finds the
        cached file and does not train:

        >>> import math
        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine.pretrain import SYNTHETIC_CLIP, SYNTHETIC_TEMPLATES, ClipPretrainConfig
        >>> from cosegkit.engine.pretrain import pretrain_synthetic_clip, register_synthetic_clip
        >>> config = ClipPretrainConfig(num_classes=3, objects_per_image=(1, 1), image_size=32, steps=2, batch_size=4)
        >>> calls = []  # (step, steps, loss) from the progress callback
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     path = pretrain_synthetic_clip(config, progress=lambda *args: calls.append(args))
        ...     again = pretrain_synthetic_clip(config, progress=lambda *args: calls.append(args))
        ...     _ = register_synthetic_clip()
        >>> path.name  # doctest: +ELLIPSIS
        'coseg-synthetic-clip-....safetensors'
        >>> path.parent.name, path.with_suffix(".json").is_file(), again == path
        ('clip', True, True)
        >>> [(step, steps) for step, steps, _ in calls], all(math.isfinite(loss) for _, _, loss in calls)
        ([(1, 2), (2, 2)], True)

        The weights load into a :class:`~cosegkit.clip.FrozenClip` over the world's class names:

        >>> clip = FrozenClip.from_name(SYNTHETIC_CLIP, pretrained=str(path), classnames=config.world().class_names,
        ...                             templates=SYNTHETIC_TEMPLATES)
        >>> clip.text_bank.shape, clip.encode_images(torch.rand(1, 2, 3, 32, 32)).shape
        (torch.Size([3, 64]), torch.Size([1, 2, 64]))
    """
    return pretrain_clip(config.world(), config.recipe(), cache=cache, progress=progress)


@torch.no_grad()
def zero_shot_accuracy(
    clip, world: CaptionedWorld, sets: int = 50, set_size: int = 5, seed: int | tuple[int, ...] = 12345
) -> dict:
    """How well a CLIP names a world's classes, per set (as LCCo's text distillation would) and per image.

    For each of ``sets`` held-out sets (``world.sample_set(set_size, seed=(*seed, i))``), the
    similarity of every image with every class prompt is summed over the set (the paper's
    :math:`\\sigma`) and its argmax compared with the set's shared class. Per image, the
    top-scoring class is compared with the classes the image holds.

    Args:
        clip: a :class:`~cosegkit.clip.FrozenClip` whose vocabulary is ``world.class_names``.
        world: a captioned world (:class:`CaptionedWorld`).
        sets: held-out sets to score.
        set_size: images per set.
        seed: first word(s) of the held-out seeds.

    Returns:
        ``{"set_top1", "set_top5", "chance", "image_top1", "image_chance"}``: the fraction of
        sets whose shared class ranks first (and in the top 5), its chance level
        ``1 / num_classes``; the fraction of images whose top class is one they hold, and that
        fraction's chance level (the mean of ``K / num_classes``).

    Example:
        A CLIP with random weights over a 3-class world (see :func:`pretrain_synthetic_clip`
        for a trained one):

        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine.pretrain import SYNTHETIC_TEMPLATES, register_synthetic_clip, zero_shot_accuracy
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     name = register_synthetic_clip()
        >>> clip = FrozenClip.from_name(name, pretrained=None, classnames=world.class_names,
        ...                             templates=SYNTHETIC_TEMPLATES)
        >>> scores = zero_shot_accuracy(clip, world, sets=4, set_size=2)
        >>> sorted(scores), round(scores["chance"], 3), 0 <= scores["set_top1"] <= 1
        (['chance', 'image_chance', 'image_top1', 'set_top1', 'set_top5'], 0.333, True)
        >>> scores["set_top5"]  # with 3 classes the top 5 always hold the target
        1.0
    """
    if list(clip.classnames) != list(world.class_names):
        raise CosegValueError("the CLIP's vocabulary must be the world's class names, in order")
    words = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
    num_classes = len(world.class_names)
    top1 = top5 = image_hits = images = 0
    held = 0.0
    for i in range(sets):
        s = world.sample_set(set_size, seed=(*words, i))
        emb = clip.encode_images(s.images[None])[0]  # (N, D)
        similarity = emb @ clip.text_bank.T  # (N, C)
        ranked = similarity.sum(0).argsort(descending=True)
        top1 += int(ranked[0] == s.target)
        top5 += int(s.target in ranked[:5].tolist())
        for best, present in zip(similarity.argmax(1).tolist(), s.present_classes, strict=True):
            image_hits += int(best in present)
            held += len(set(present)) / num_classes
            images += 1
    return {
        "set_top1": top1 / sets,
        "set_top5": top5 / sets,
        "chance": 1 / num_classes,
        "image_top1": image_hits / images,
        "image_chance": held / images,
    }
