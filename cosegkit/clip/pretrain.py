"""Contrastive pre-training of a small CLIP on the synthetic co-segmentation world.

Pretrained CLIP weights cannot always be downloaded (offline machines, CI). So that the CLIP
modules of LCCo carry real semantics there too, this module trains a small open_clip model on
the synthetic world's images and captions (``"a red striped circle and a blue square"``) with
open_clip's own model classes and contrastive loss (``open_clip.ClipLoss``). The result is
cached by its settings under the user's cache folder and reused.

The architecture ``"coseg-synthetic-clip"`` (a 3-layer ViT on 64 px input with patch 8, a
2-layer text transformer, a 64-wide joint space) is registered with open_clip on demand by
:func:`register_synthetic_clip`; nothing is registered at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cosegkit._files import atomic_write
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.errors import CosegValueError

__all__ = [
    "SYNTHETIC_CLIP",
    "SYNTHETIC_CLIP_CONFIG",
    "SYNTHETIC_TEMPLATES",
    "ClipPretrainConfig",
    "cache_folder",
    "pretrain_synthetic_clip",
    "register_synthetic_clip",
    "zero_shot_accuracy",
]

#: The open_clip architecture name under which :func:`register_synthetic_clip` registers the small CLIP.
SYNTHETIC_CLIP = "coseg-synthetic-clip"
SYNTHETIC_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 96, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SYNTHETIC_TEMPLATES: tuple[str, ...] = ("a {}",)
"""The prompt template that matches the world's captions (``"a red striped circle"``)."""


def cache_folder() -> Path:
    """Where cosegkit caches what it builds: ``$COSEGKIT_CACHE``, else ``$XDG_CACHE_HOME/cosegkit``
    (``~/.cache/cosegkit``).

    Example:
        The folder follows the environment (changed here for a block only, then restored):

        >>> import os
        >>> import tempfile
        >>> from pathlib import Path
        >>> from unittest import mock
        >>> from cosegkit.clip.pretrain import cache_folder
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
        >>> from cosegkit.clip.pretrain import SYNTHETIC_TEMPLATES, register_synthetic_clip
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
    import open_clip

    if SYNTHETIC_CLIP not in open_clip.list_models():
        folder = cache_folder() / "open_clip_configs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{SYNTHETIC_CLIP}.json"
        text = json.dumps(SYNTHETIC_CLIP_CONFIG)
        if not path.is_file() or path.read_text() != text:
            # atomically: processes started together (torchrun, a process pool) read this file
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        open_clip.add_model_config(path)
    return SYNTHETIC_CLIP


@dataclass(frozen=True)
class ClipPretrainConfig:
    """Settings of the contrastive pre-training; together they name the cached weights.

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
        >>> from cosegkit.clip.pretrain import ClipPretrainConfig
        >>> config = ClipPretrainConfig(num_classes=3, objects_per_image=(1, 1), image_size=32, steps=1, batch_size=2)
        >>> world = config.world()
        >>> world.num_classes, world.image_size, world.objects_per_image
        (3, 32, (1, 1))
        >>> pairs = world.sample_set(2, seed=0)
        >>> pairs.images.shape, len(pairs.captions)
        (torch.Size([2, 3, 32, 32]), 2)

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
        blob = json.dumps({"config": asdict(self), "arch": SYNTHETIC_CLIP_CONFIG}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def world(self) -> SyntheticWorld:
        """The synthetic world these settings describe."""
        return SyntheticWorld(
            num_classes=self.num_classes,
            image_size=self.image_size,
            objects_per_image=self.objects_per_image,
            seed=self.world_seed,
        )


def _pairs(world: SyntheticWorld, count: int, seed: tuple[int, ...]) -> tuple[torch.Tensor, list[str]]:
    """``count`` images with their captions: sets of 4 images, flattened."""
    images, captions = [], []
    per_set = 4
    for i in range((count + per_set - 1) // per_set):
        s = world.sample_set(per_set, seed=(*seed, i))
        images.append(s.images)
        captions += list(s.captions)
    return torch.cat(images)[:count], captions[:count]


def pretrain_synthetic_clip(
    config: ClipPretrainConfig = ClipPretrainConfig(),
    *,
    cache: bool = True,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Train (or reuse) a small CLIP on the synthetic world; returns its weights file.

    The weights are saved as ``<cache>/clip/coseg-synthetic-clip-<key>.safetensors`` with a
    JSON file of the settings beside it. With ``cache=True`` an existing file for the same
    settings is returned without training. The file loads with
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
        >>> from cosegkit.clip.pretrain import SYNTHETIC_CLIP, SYNTHETIC_TEMPLATES, ClipPretrainConfig
        >>> from cosegkit.clip.pretrain import pretrain_synthetic_clip, register_synthetic_clip
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
    import open_clip
    from safetensors.torch import save_file

    if config.steps < 1 or config.batch_size < 2:
        raise CosegValueError(f"need steps >= 1 and batch_size >= 2, got {config.steps} and {config.batch_size}")
    folder = cache_folder() / "clip"
    target = folder / f"{SYNTHETIC_CLIP}-{config.key()}.safetensors"
    if cache and target.is_file():
        return target

    register_synthetic_clip()
    world = config.world()
    torch.manual_seed(config.seed)
    model = open_clip.create_model(SYNTHETIC_CLIP, pretrained=None)
    tokenizer = open_clip.get_tokenizer(SYNTHETIC_CLIP)
    visual = model.visual
    mean = torch.tensor(visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    size = visual.preprocess_cfg.get("size", SYNTHETIC_CLIP_CONFIG["vision_cfg"]["image_size"])
    size = (size, size) if isinstance(size, int) else tuple(size)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.1, betas=(0.9, 0.98))
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + torch.cos(torch.tensor((s - warmup) / max(1, config.steps - warmup) * torch.pi)).item())
        ),
    )
    model.train()
    start = time.perf_counter()
    for step in range(config.steps):
        images, captions = _pairs(world, config.batch_size, (config.seed, 1, step))
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
            progress(step + 1, config.steps, float(loss.detach()))
    elapsed = time.perf_counter() - start

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(target, lambda tmp: save_file(state, tmp))  # the usual mode, not safetensors' 0o600
    meta = {"config": asdict(config), "arch": SYNTHETIC_CLIP_CONFIG, "train_seconds": round(elapsed, 1)}
    atomic_write(target.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return target


@torch.no_grad()
def zero_shot_accuracy(clip, world: SyntheticWorld, sets: int = 50, set_size: int = 5, seed: int = 12345) -> dict:
    """How well a CLIP names a synthetic set's target, as LCCo's text distillation would.

    For each of ``sets`` held-out sets, the similarity of every image with every class prompt
    is summed over the set (the paper's :math:`\\sigma`) and its argmax compared with the target.
    A chance-level CLIP scores about ``1 / num_classes``.

    Args:
        clip: a :class:`~cosegkit.clip.FrozenClip` whose vocabulary is ``world.class_names``.
        world: the synthetic world.
        sets: held-out sets to score.
        set_size: images per set.
        seed: first word of the held-out seeds.

    Returns:
        ``{"set_top1": ..., "set_top5": ..., "chance": ...}``.

    Example:
        A CLIP with random weights over a 3-class world (see :func:`pretrain_synthetic_clip`
        for a trained one):

        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.clip.pretrain import SYNTHETIC_TEMPLATES, register_synthetic_clip, zero_shot_accuracy
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> world = SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     name = register_synthetic_clip()
        >>> clip = FrozenClip.from_name(name, pretrained=None, classnames=world.class_names,
        ...                             templates=SYNTHETIC_TEMPLATES)
        >>> clip.text_bank.shape
        torch.Size([3, 64])
        >>> scores = zero_shot_accuracy(clip, world, sets=4, set_size=2)
        >>> sorted(scores), round(scores["chance"], 3), 0 <= scores["set_top1"] <= 1
        (['chance', 'set_top1', 'set_top5'], 0.333, True)
        >>> scores["set_top5"]  # with 3 classes the top 5 always hold the target
        1.0
    """
    if list(clip.classnames) != world.class_names:
        raise CosegValueError("the CLIP's vocabulary must be the world's class names, in order")
    top1 = top5 = 0
    for i in range(sets):
        s = world.sample_set(set_size, seed=(seed, i))
        emb = clip.encode_images(s.images[None])[0]  # (N, D)
        sigma = (emb @ clip.text_bank.T).sum(0)
        ranked = sigma.argsort(descending=True)
        top1 += int(ranked[0] == s.target)
        top5 += int(s.target in ranked[:5].tolist())
    return {"set_top1": top1 / sets, "set_top5": top5 / sets, "chance": 1 / world.num_classes}
