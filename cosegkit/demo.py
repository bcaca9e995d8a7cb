r"""``cosegkit demo``: what the set-aware modules buy, measured on the synthetic world on a CPU.

1. Build the synthetic co-segmentation world (every image holds the set's target among
   distractors, so one image alone cannot tell which object to segment).
2. Pre-train a small CLIP contrastively on the world's images and captions (cached).
3. Train, with the same budget each: the single-image Baseline (all three modules off), LCCo
   as cosegkit builds it by default (``variant="default"``), and LCCo as the paper prints
   eq. (2), (5), (7) and (8) (``variant="paper"``; the equations page lists the differences).
4. Score them on the same held-out sets with P and J, together with zero-shot co-segmentation
   (:class:`~cosegkit.zeroshot.ZeroShotCoseg`: the frozen CLIP alone, no training, no masks);
   print the table, write ``results.json``.
5. Write ``figure.png``: images, ground truth and each model's masks for a few held-out sets.

``cosegkit demo --world pascal --root PATH`` runs the same five steps on real photographs: the
PASCAL-VOC co-segmentation photos split by photo, a composite world of their object cut-outs
(:class:`~cosegkit.data.composite.CompositeWorld`), the composite CLIP pre-trained on the
training photos' world only, and every model also scored on the held-out photos themselves.

Each model's run folder (``<out>/baseline``, ``<out>/lcco``, ``<out>/lcco-paper``) is a
normal ``cosegkit train`` run: interrupted, the demo continues from the last checkpoint when
started again. A run folder left by a demo with other settings is moved aside
(``<folder>.old-<n>``) and trained afresh.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cosegkit.clip.frozen import FrozenClip
from cosegkit.engine.checkpoint import find_checkpoints
from cosegkit.engine.config import TrainConfig, build_eval_sets
from cosegkit.engine.evaluate import evaluate
from cosegkit.engine.pretrain import (
    COMPOSITE_CLIP,
    COMPOSITE_RECIPE,
    SYNTHETIC_CLIP,
    SYNTHETIC_TEMPLATES,
    ClipPretrainConfig,
    pretrain_clip,
    register_composite_clip,
    register_synthetic_clip,
    zero_shot_accuracy,
)
from cosegkit.engine.segment import binarize
from cosegkit.engine.trainer import train
from cosegkit.errors import CosegValueError
from cosegkit.zeroshot import ZeroShotCoseg

__all__ = [
    "DEMO_WORLDS",
    "PASCAL_ZERO_SHOT_SIZE",
    "SEGCLIP_ZERO_SHOT_SIZE",
    "ZERO_SHOT_SIZE",
    "DemoBudget",
    "DemoWorld",
    "demo_clip",
    "demo_segclip_zero_shot",
    "demo_train_config",
    "demo_zero_shot",
    "demo_zero_shot_settings",
    "photo_figure",
    "prepare_world_clip",
    "prepare_world_segclip",
    "run_demo",
]

#: The side of the zero-shot model's CLIP input in the demo, 2.5 times the synthetic CLIP's 64 px
#: (a 20 x 20 patch grid instead of 8 x 8), as CLIP-ES runs a CLIP trained at 224 px on images
#: at their own size (about 500 px for PASCAL-VOC), with the positional embedding
#: interpolated to the larger grid. Chosen on sets drawn apart from the held-out ones (see the
#: zero-shot docs page); the set's class is still taken at the CLIP's own 64 px.
ZERO_SHOT_SIZE = 160


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo does."""

    clip_steps: int = 600
    steps: int = 600
    eval_sets: int = 60


QUICK = DemoBudget(clip_steps=3, steps=3, eval_sets=4)

#: The side of the zero-shot model's CLIP input on the real-photo world. The composite CLIP's
#: ResNet tower, trained at 64 px, runs at twice its size (a 4 x 4 grid instead of 2 x 2), its
#: attention pool's positional embedding resized to the grid. Chosen on sets drawn apart from
#: the held-out ones (see the datasets page).
PASCAL_ZERO_SHOT_SIZE = 128


@dataclass(frozen=True)
class DemoWorld:
    """A world the demo (and ``benchmarks/results_table.py``) runs on, with its budget.

    Example:
        >>> from cosegkit.demo import DEMO_WORLDS
        >>> DEMO_WORLDS["pascal"].budget.steps, DEMO_WORLDS["synthetic"].budget
        (600, DemoBudget(clip_steps=600, steps=600, eval_sets=60))
    """

    name: str
    description: str
    budget: DemoBudget
    quick: DemoBudget


DEMO_WORLDS: dict[str, DemoWorld] = {
    "synthetic": DemoWorld(
        "synthetic",
        "the synthetic world: 16 classes (shape x colour x texture), 2-3 objects per image, 64 px",
        DemoBudget(),
        QUICK,
    ),
    "pascal": DemoWorld(
        "pascal",
        "real photographs: PASCAL-VOC object cut-outs (14 classes, split by photo), 2-3 per image, 96 px",
        DemoBudget(clip_steps=COMPOSITE_RECIPE.steps, steps=600, eval_sets=60),
        QUICK,
    ),
}
"""The worlds the demo runs on, by name. ``"synthetic"`` is the default; ``"pascal"`` (``cosegkit demo
--world pascal --root PATH``) is the PASCAL-VOC co-segmentation photos as a
:class:`~cosegkit.data.composite.CompositeWorld`."""


def _check_world(world: str, root: str | Path | None) -> None:
    if world not in DEMO_WORLDS:
        raise CosegValueError(f"unknown demo world {world!r}; choose one of {list(DEMO_WORLDS)} (--world)")
    if world == "pascal" and not root:
        raise CosegValueError(
            "the real-photo world needs the PASCAL-VOC co-segmentation folder: pass --root PATH "
            "(the folder that holds Pascal_10/ or the class folders)"
        )


def _say(message: str) -> None:
    print(message, flush=True)


def demo_train_config(
    clip_path: str | Path,
    steps: int,
    seed: int = 0,
    eval_sets: int = 60,
    *,
    modules: bool = True,
    variant: str = "default",
    world: str = "synthetic",
    root: str | Path | None = None,
    lr: float = 1e-3,
) -> TrainConfig:
    """The training config of the demo's models (and of ``examples/ablation.py``).

    A 16-class world at 64 px, sets of 4, batches of 4 sets; a ResNet-18 (random weights) at
    encoder depth 3, so the three modules act at strides 8, 4 and 2; the synthetic CLIP at
    ``clip_path``; AdamW at ``lr`` (the demo's 1e-3 by default) with a short warm-up
    (``steps // 20``) and a cosine decay. ``modules=False`` is the Baseline; ``variant`` picks
    the modules' readings (:data:`~cosegkit.models.lcco.VARIANTS`).

    Example:
        Building the config reads nothing from ``clip_path``; training from it does:

        >>> from cosegkit.demo import demo_train_config
        >>> from cosegkit.engine.config import build_eval_sets
        >>> config = demo_train_config("clip.safetensors", steps=600)
        >>> config.dataset, config.world_classes, config.image_size, config.set_size, config.batch_size
        ('synthetic', 16, 64, 4, 4)
        >>> config.encoder, config.encoder_weights, config.encoder_depth, config.decoder_channels
        ('resnet18', None, 3, [64, 48, 32])
        >>> config.clip_model, config.clip_pretrained, config.device
        ('coseg-synthetic-clip', 'clip.safetensors', 'cpu')
        >>> config.warmup, config.checkpoint_every, config.log_every, config.extra
        (30, 150, 12, {'eval_sets': 60})

        The held-out sets every model is scored on:

        >>> held_out = build_eval_sets(config, sets=60)
        >>> len(held_out), held_out[0]["images"].shape, held_out[0]["masks"].shape
        (60, torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]))

        The Baseline differs from LCCo only in the module switches:

        >>> baseline = demo_train_config("clip.safetensors", steps=600, modules=False)
        >>> baseline.use_correspondence, baseline.use_interaction, baseline.use_regularization
        (False, False, False)
        >>> sorted(k for k, v in config.to_dict().items() if baseline.to_dict()[k] != v)
        ['use_correspondence', 'use_interaction', 'use_regularization']
    """
    _check_world(world, root)
    if world == "pascal":  # real photos split by photo, at 96 px
        data: dict = {"dataset": "composite", "root": str(root), "reader": "pascal_voc", "held_out": 0.3,
                      "split_seed": 0, "image_size": 96, "clip_model": COMPOSITE_CLIP}  # fmt: skip
    else:
        data = {"dataset": "synthetic", "world_classes": 16, "image_size": 64, "clip_model": SYNTHETIC_CLIP}
    return TrainConfig(
        **data,
        world_seed=0,
        world_objects=(2, 3),
        set_size=4,
        batch_size=4,
        encoder="resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=[64, 48, 32],
        clip_pretrained=str(clip_path),
        use_correspondence=modules,
        use_interaction=modules,
        use_regularization=modules,
        top_k=3,
        heads=4,
        variant=variant,
        steps=steps,
        lr=lr,
        warmup=max(1, steps // 20),
        seed=seed,
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, steps // 50),
        device="cpu",
        eval_set_size=4,
        extra={"eval_sets": eval_sets},
    )


def demo_zero_shot(clip: FrozenClip, world: str = "synthetic") -> ZeroShotCoseg:
    """The demo's zero-shot co-segmenter over the synthetic CLIP (see :data:`ZERO_SHOT_SIZE`).

    CLIP-ES's method and defaults throughout (softmax over the world's 16 classes and CLIP-ES's
    25 background words, CAA over the last blocks, box threshold 0.4), with the world's own
    template (``"a {}"``, the form of its captions) and no synonyms.

    Example:
        Over the synthetic CLIP with random weights (the demo loads its pre-trained ones):

        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> import torch
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine.pretrain import (SYNTHETIC_CLIP, SYNTHETIC_TEMPLATES, ClipPretrainConfig,
        ...                                     register_synthetic_clip)
        >>> from cosegkit.demo import demo_zero_shot
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):  # a throw-away cache
        ...     _ = register_synthetic_clip()
        >>> world = ClipPretrainConfig().world()  # the demo's 16-class world
        >>> clip = FrozenClip.from_name(SYNTHETIC_CLIP, pretrained=None, classnames=world.class_names,
        ...                             templates=SYNTHETIC_TEMPLATES)
        >>> zs = demo_zero_shot(clip)
        >>> zs.image_size, zs.templates, zs.synonyms, len(zs.classnames), len(zs.background)
        (160, ('a {}',), {}, 16, 25)

        64 px images run at 160 px, a 20 x 20 patch grid; the masks come back at 64 px:

        >>> out = zs(torch.rand(1, 2, 3, 64, 64))
        >>> out.probs.shape, out.cams.shape
        (torch.Size([1, 2, 1, 64, 64]), torch.Size([1, 2, 20, 20]))
    """
    return ZeroShotCoseg(clip, templates=SYNTHETIC_TEMPLATES, **demo_zero_shot_settings(world))


def demo_zero_shot_settings(world: str = "synthetic") -> dict[str, Any]:
    """The demo's zero-shot settings on ``world`` beyond CLIP-ES's defaults, as ``TrainConfig.extra["zero_shot"]`` takes them.

    No synonyms, and the CLIP input size of the world (:data:`ZERO_SHOT_SIZE`,
    :data:`PASCAL_ZERO_SHOT_SIZE`); zero-shot pseudo masks labelled with them are the zero-shot
    model's own masks.

    Example:
        >>> from cosegkit.demo import demo_zero_shot_settings
        >>> demo_zero_shot_settings("synthetic"), demo_zero_shot_settings("pascal")
        ({'synonyms': {}, 'image_size': 160}, {'synonyms': {}, 'image_size': 128})
    """
    _check_world(world, "-")
    return {"synonyms": {}, "image_size": PASCAL_ZERO_SHOT_SIZE if world == "pascal" else ZERO_SHOT_SIZE}


def demo_clip(world: str, clip_path: str | Path | None, *, root: str | Path | None = None) -> FrozenClip:
    """The world's small CLIP (weights at ``clip_path``; ``None``: random), over the world's class names.

    Example:
        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> from cosegkit.demo import demo_clip
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     clip = demo_clip("synthetic", None)
        >>> len(clip.classnames), clip.image_size
        (16, (64, 64))
    """
    _check_world(world, root)
    if world == "pascal":
        register_composite_clip()
        names = demo_train_config("", 1, world=world, root=root).world().class_names
        arch = COMPOSITE_CLIP
    else:
        register_synthetic_clip()
        names = ClipPretrainConfig().world().class_names
        arch = SYNTHETIC_CLIP
    return FrozenClip.from_name(
        arch, pretrained=None if clip_path is None else str(clip_path), classnames=names, templates=SYNTHETIC_TEMPLATES
    )


#: The demo's synthetic CLIP pre-training: the 16-class world of 64 px images with 2-3 objects.
_SYNTHETIC_CLIP = ClipPretrainConfig(num_classes=16, world_seed=0, objects_per_image=(2, 3), image_size=64)


def _world_and_held_out(world: str, root: str | Path | None) -> tuple[Any, Any]:
    """The captioned world a world's CLIP pre-trains on, and the held-out one its accuracy is scored on."""
    from dataclasses import replace

    if world == "pascal":
        config = replace(demo_train_config("", 1, world=world, root=root), image_size=64)
        return config.world(), config.held_out_world()
    world_ = _SYNTHETIC_CLIP.world()
    return world_, world_


def prepare_world_clip(
    world: str,
    *,
    root: str | Path | None = None,
    clip_steps: int | None = None,
    quick: bool = False,
    progress: Any = None,
    eval_sets: int = 60,
    seed: int = 0,
) -> tuple[Path, dict]:
    """Pre-train (or load from the cache) the world's small CLIP; its weights file and held-out accuracy.

    ``"synthetic"``: :func:`~cosegkit.engine.pretrain.pretrain_clip` with the synthetic CLIP's
    recipe (:class:`~cosegkit.engine.pretrain.ClipPretrainConfig`, as
    :func:`~cosegkit.engine.pretrain.pretrain_synthetic_clip` trains it) on the demo's 16-class
    world. ``"pascal"``: :func:`~cosegkit.engine.pretrain.pretrain_clip` with
    :data:`~cosegkit.engine.pretrain.COMPOSITE_RECIPE` on the composite world of the
    *training* photos only, at the CLIP's 64 px; the accuracy is measured on sets of the
    held-out photos. ``progress(step, steps, loss)`` is called after each step; ``seed`` seeds
    the CLIP's initialisation and data (the demo's is 0).

    Returns:
        ``(weights, accuracy)``: the ``.safetensors`` path and
        :func:`~cosegkit.engine.pretrain.zero_shot_accuracy`'s dict (per set and per image)
        plus the pre-training ``seconds`` (about 0 when the cache had it).

    Example:
        Three steps on the synthetic world, in a throw-away cache (``quick`` does not cache):

        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> from cosegkit.demo import prepare_world_clip
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     path, accuracy = prepare_world_clip("synthetic", quick=True, eval_sets=2)
        >>> path.suffix, sorted(accuracy)
        ('.safetensors', ['chance', 'image_chance', 'image_top1', 'seconds', 'set_top1', 'set_top5'])
    """
    from dataclasses import replace

    _check_world(world, root)
    start = time.perf_counter()
    steps = clip_steps or (QUICK.clip_steps if quick else DEMO_WORLDS[world].budget.clip_steps)
    if world == "pascal":
        recipe = replace(COMPOSITE_RECIPE, steps=steps, seed=seed)
    else:
        recipe = replace(_SYNTHETIC_CLIP, steps=steps, seed=seed).recipe()
    train_world, held_out = _world_and_held_out(world, root)
    path = pretrain_clip(train_world, recipe, cache=not quick, progress=progress)
    seconds = time.perf_counter() - start
    clip = demo_clip(world, path, root=root)
    accuracy = zero_shot_accuracy(clip, held_out, sets=eval_sets, set_size=4 if world == "pascal" else 5, seed=(12345,))
    return path, {**accuracy, "seconds": round(seconds, 1)}


#: The side of the SegCLIP zero-shot model's input, per world (its ViT is trained at 64 px, patch 8).
#: Chosen on a development seed's model and sets (the equations page's SegCLIP pre-training section).
SEGCLIP_ZERO_SHOT_SIZE: dict[str, int] = {"synthetic": 160, "pascal": 128}


def prepare_world_segclip(
    world: str,
    *,
    root: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    reconstruction_weight: float | None = None,
    quick: bool = False,
    progress: Any = None,
    eval_sets: int = 60,
) -> tuple[Path, dict]:
    """Pre-train (or load from the cache) the world's SegCLIP from captions; its model folder and held-out accuracy.

    The same world, images, captions, steps and batch as :func:`prepare_world_clip`'s CLIP
    (:data:`~cosegkit.engine.segclip_pretrain.SEGCLIP_SYNTHETIC_RECIPE`,
    :data:`~cosegkit.engine.segclip_pretrain.SEGCLIP_COMPOSITE_RECIPE`), so that SegCLIP's
    zero-shot row and CLIP-ES's compare methods, not budgets.

    Returns:
        ``(folder, accuracy)``: the :class:`~cosegkit.models.segclip.SegClip` folder and
        :func:`~cosegkit.engine.segclip_pretrain.segclip_zero_shot_accuracy`'s dict plus ``seconds``.

    Example:
        Two steps on the synthetic world, in a throw-away cache (``quick`` does not cache):

        >>> import os
        >>> import tempfile
        >>> from unittest import mock
        >>> from cosegkit.demo import prepare_world_segclip
        >>> with mock.patch.dict(os.environ, {"COSEGKIT_CACHE": tempfile.mkdtemp()}):
        ...     folder, accuracy = prepare_world_segclip("synthetic", steps=2, quick=True, eval_sets=2)
        >>> (folder / "config.json").is_file(), sorted(accuracy)[:3]
        (True, ['chance', 'image_chance', 'image_top1'])
    """
    from dataclasses import replace

    from cosegkit.engine.segclip_pretrain import (
        SEGCLIP_COMPOSITE_RECIPE,
        SEGCLIP_SYNTHETIC_RECIPE,
        pretrain_segclip,
        segclip_zero_shot_accuracy,
    )
    from cosegkit.models import SegClip

    _check_world(world, root)
    start = time.perf_counter()
    recipe = SEGCLIP_COMPOSITE_RECIPE if world == "pascal" else SEGCLIP_SYNTHETIC_RECIPE
    changes: dict[str, Any] = {"seed": seed}
    if steps or quick:
        changes["steps"] = steps or QUICK.clip_steps
    elif DEMO_WORLDS[world].budget.clip_steps != recipe.steps:
        changes["steps"] = DEMO_WORLDS[world].budget.clip_steps
    if reconstruction_weight is not None:
        changes["reconstruction_weight"] = reconstruction_weight
    recipe = replace(recipe, **changes)
    train_world, held_out = _world_and_held_out(world, root)
    folder = pretrain_segclip(train_world, recipe, cache=not quick, progress=progress)
    seconds = time.perf_counter() - start
    model = SegClip.from_pretrained(folder)
    accuracy = segclip_zero_shot_accuracy(
        model, held_out, sets=eval_sets, set_size=4 if world == "pascal" else 5, seed=(12345,)
    )
    return folder, {**accuracy, "seconds": round(seconds, 1)}


def demo_segclip_zero_shot(
    model: Any, world: str = "synthetic", *, root: str | Path | None = None, **settings: Any
) -> Any:
    """A :class:`~cosegkit.zeroshot.SegClipCoseg` over a world's class names with its captions' template.

    ``settings`` go to :class:`~cosegkit.zeroshot.SegClipCoseg` (e.g. ``grouping="set"``); the
    input size is :data:`SEGCLIP_ZERO_SHOT_SIZE` unless given.

    Example:
        >>> from cosegkit.demo import demo_segclip_zero_shot
        >>> from cosegkit.engine.segclip_pretrain import SEGCLIP_SYNTHETIC_CONFIG
        >>> from cosegkit.models import SegClip
        >>> zs = demo_segclip_zero_shot(SegClip(SEGCLIP_SYNTHETIC_CONFIG))
        >>> len(zs.classnames), zs.templates, zs.input_size()
        (16, ('a {}',), 160)
    """
    from cosegkit.zeroshot import SegClipCoseg

    _check_world(world, root)
    if world == "pascal":
        names = demo_train_config("", 1, world=world, root=root).world().class_names
    else:
        names = ClipPretrainConfig().world().class_names
    settings.setdefault("image_size", SEGCLIP_ZERO_SHOT_SIZE[world])
    return SegClipCoseg(model, names, templates=SYNTHETIC_TEMPLATES, **settings)


def _train_or_resume(config: TrainConfig, run: Path, progress: bool) -> dict:
    resume = bool(find_checkpoints(run / "checkpoints"))
    stale = TrainConfig.load(run / "config.json") != config if resume else (run / "config.json").is_file()
    if stale:  # another demo's run, or one killed before its first checkpoint
        n = 1
        while run.with_name(f"{run.name}.old-{n}").exists():
            n += 1
        aside = run.with_name(f"{run.name}.old-{n}")
        _say(f"  {run} holds a run with other settings; moved it to {aside}")
        run.rename(aside)
        resume = False
    if resume:
        _say(f"  continuing the run in {run} from its last checkpoint")
    start = time.perf_counter()
    result = train(None if resume else config, run, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    ev = result.evaluation
    assert ev is not None  # runs on a generated world always evaluate
    scores = {"P": ev.P, "J": ev.J, "images": ev.images, "train_seconds": round(seconds, 1)}
    photos = getattr(result, "photo_evaluation", None)
    if photos is not None:
        scores["photos"] = {"P": photos.P, "J": photos.J, "images": photos.images}
    return scores


def _tile(x: torch.Tensor, size: int) -> Image.Image:
    """A (3, H, W) image or (1, H, W) mask in [0, 1] as a size x size RGB tile."""
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = F.interpolate(x[None].float(), size=(size, size), mode="nearest")[0]
    return Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


@torch.inference_mode()
def _figure(
    models: dict[str, torch.nn.Module],
    eval_sets: Any,
    class_names: list[str],
    path: Path,
    sets: int | list[int] = 3,
    *,
    oracle: set[str] = frozenset(),
) -> None:
    """Images, ground truth and each model's masks for some of ``eval_sets`` (indices, or the first ``sets``)."""
    picks = list(range(sets)) if isinstance(sets, int) else list(sets)
    tile, pad, label_w = 96, 4, 100
    rows = ["image", "truth", *models]
    n = max(int(eval_sets[i]["images"].shape[0]) for i in picks)
    width = label_w + n * (tile + pad)
    height = len(picks) * (len(rows) * (tile + pad) + 24)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for number, s in enumerate(picks):
        item = eval_sets[s]
        target = class_names[int(item["group"])] if int(item["group"]) < len(class_names) else str(int(item["group"]))
        draw.text((4, y + 4), f"set {number + 1}: the common object is a {target}", fill="black")
        y += 24
        images = item["images"][None]
        masks = {}
        for name, model in models.items():
            if name in oracle:
                masks[name] = model.predict(images, common_class=item["group"].view(1))[0]
            else:
                masks[name] = model.predict(images)[0]
        for row in rows:
            draw.text((4, y + tile // 2 - 6), row, fill="black")
            for i in range(int(item["images"].shape[0])):
                if row == "image":
                    x = item["images"][i]
                elif row == "truth":
                    x = item["masks"][i]
                else:
                    x = binarize(masks[row][i, 0]).float()[None]
                canvas.paste(_tile(x, tile), (label_w + i * (tile + pad), y))
            y += tile + pad
    canvas.save(path)


def _photo_picks(eval_sets: Any, count: int = 4) -> list[int]:
    """The first set of ``count`` different classes, spread over the classes."""
    firsts: dict[int, int] = {}
    for i in range(len(eval_sets)):
        firsts.setdefault(int(eval_sets[i]["group"]), i)
    classes = sorted(firsts)
    step = max(1, len(classes) // count)
    return [firsts[c] for c in classes[::step][:count]]


def photo_figure(runs: dict[str, str | Path], path: str | Path, *, zero_shot: torch.nn.Module | None = None) -> None:
    """The real-photo figure: held-out photo sets, their truth, each run's model and the zero-shot model.

    ``runs`` maps row names to run folders of one composite world (each folder's ``model`` is
    loaded; a class oracle is given each set's class); the sets are the held-out photos of the
    first run's config (:func:`~cosegkit.engine.build_photo_eval_sets`), the first set
    of up to four classes spread over the class list.

    Example:
        A one-step run on a tiny composite world of written shapes (the demo's are real photos):

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
        >>> from cosegkit.demo import photo_figure
        >>> from cosegkit.engine import TrainConfig, train
        >>> tmp = Path(tempfile.mkdtemp())
        >>> _ = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2), tmp / "data", 4)
        >>> config = TrainConfig(dataset="composite", root=str(tmp / "data"), reader="folder", image_size=32,
        ...                      set_size=2, batch_size=1, eval_set_size=2, steps=1, encoder="tu-test_convnext",
        ...                      encoder_weights=None, decoder_channels=[8, 8, 8, 8], heads=2, top_k=1,
        ...                      clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ...                      extra={"eval_sets": 2})
        >>> _ = train(config, tmp / "run", progress=False)
        >>> photo_figure({"LCCo": tmp / "run"}, tmp / "figure.png")
        >>> Image.open(tmp / "figure.png").size[0] > 0
        True
    """
    from cosegkit.engine.config import build_photo_eval_sets
    from cosegkit.models.lcco import LCCo

    models: dict[str, torch.nn.Module] = {name: LCCo.from_pretrained(Path(run) / "model") for name, run in runs.items()}
    oracle = {name for name, model in models.items() if getattr(model, "class_oracle", False)}
    if zero_shot is not None:
        models["Zero-shot"] = zero_shot
    config = TrainConfig.load(Path(next(iter(runs.values()))) / "config.json")
    photos = build_photo_eval_sets(config)
    _figure(models, photos, config.world().class_names, Path(path), _photo_picks(photos), oracle=oracle)


def run_demo(
    out: str | Path = "cosegkit-demo",
    *,
    steps: int | None = None,
    clip_steps: int | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    world: str = "synthetic",
    root: str | Path | None = None,
) -> dict:
    """Run the demo (see the module docstring) and return what it measured.

    The whole demo takes minutes on a CPU; run it from the shell with ``cosegkit demo`` (add
    ``--out``, ``--steps``, ``--clip-steps`` or ``--quick``), or as ``run_demo("cosegkit-demo")``.
    Even ``quick=True`` (or ``steps=1, clip_steps=1``) still builds, trains, evaluates and saves
    three ResNet-18 LCCo models (``cosegkit demo --quick`` took 11 s of wall time on an idle
    2-core CPU, and up to a minute with the cores shared), so the example below only shows what
    the demo trains. The CLIP weights are cached under :func:`~cosegkit.engine.pretrain.cache_folder`
    (``$COSEGKIT_CACHE`` moves it).

    ``world="pascal"`` (``cosegkit demo --world pascal --root PATH``) runs the same demo on real
    photographs: the PASCAL-VOC co-segmentation photos at ``root`` split by photo, a composite
    world of their object cut-outs for training and held-out sets, the composite CLIP
    pre-trained on the training photos' world only; every model is also scored on the held-out
    real photos as sets of one class, and the figure shows held-out photo sets.

    Args:
        out: output folder.
        steps: training steps of each model (default 600; 3 with ``quick``).
        clip_steps: CLIP pre-training steps (default: the world's budget; 3 with ``quick``).
        quick: a tiny budget that checks the pipeline in seconds; its numbers mean nothing.
        seed: seed of both models' initialisation and data.
        progress: show progress bars.
        world: ``"synthetic"`` or ``"pascal"`` (:data:`DEMO_WORLDS`).
        root: the PASCAL-VOC co-segmentation folder (``world="pascal"`` only).

    Returns:
        The results as a dict, also written to ``<out>/results.json``. Under ``"clip"``, the
        CLIP's zero-shot scores, pre-training seconds and weights file; under ``"Baseline"``,
        ``"LCCo"`` (the default variant) and ``"LCCo-paper"``, each model's held-out ``P``,
        ``J``, ``images`` and ``train_seconds`` (on ``"pascal"``, also ``"photos"``: the same
        on the held-out real photos); under ``"Zero-shot"``, the frozen CLIP's ``P``,
        ``J``, ``images``, ``class_accuracy`` (how often it names the set's common object) and
        ``seconds``; and ``"wall_seconds"``, ``"quick"`` and ``"world"``.

    Example:
        The default budget and the three models, each trained in its own run folder under ``out``:

        >>> from cosegkit.demo import DEMO_WORLDS, demo_train_config
        >>> DEMO_WORLDS["synthetic"].budget
        DemoBudget(clip_steps=600, steps=600, eval_sets=60)
        >>> variants = {"baseline": {"modules": False}, "lcco": {"modules": True},
        ...             "lcco-paper": {"modules": True, "variant": "paper"}}
        >>> for folder, switches in variants.items():
        ...     c = demo_train_config("clip.safetensors", steps=600, **switches)
        ...     print(folder, c.use_correspondence, c.use_interaction, c.use_regularization, c.variant, c.steps, c.lr)
        baseline False False False default 600 0.001
        lcco True True True default 600 0.001
        lcco-paper True True True paper 600 0.001

        The real-photo world needs its folder:

        >>> run_demo(world="pascal")
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: the real-photo world needs the PASCAL-VOC co-segmentation folder: pass --root PATH (the folder that holds Pascal_10/ or the class folders)
    """
    _check_world(world, root)
    spec = DEMO_WORLDS[world]
    budget = spec.quick if quick else spec.budget
    steps = steps or budget.steps
    clip_steps = clip_steps or budget.clip_steps
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CosegValueError(f"the demo's output folder {str(out)!r} is a file; pass a folder as --out")
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()

    _say(f"[1/5] {spec.description}")
    _say(f"[2/5] a small CLIP pre-trained on the world's captions ({clip_steps} steps; cached)")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=clip_steps, desc="clip", unit="step", dynamic_ncols=True)

    def clip_progress(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

    clip_path, zero_shot = prepare_world_clip(
        world, root=root, clip_steps=clip_steps, quick=quick, progress=clip_progress, eval_sets=budget.eval_sets
    )
    if bar is not None:
        bar.close()
    config = demo_train_config(clip_path, steps, seed, budget.eval_sets, modules=True, world=world, root=root)
    clip = demo_clip(world, clip_path, root=root)
    class_names = list(clip.classnames)
    _say(
        f"  CLIP names a held-out set's common object {100 * zero_shot['set_top1']:.0f}% of the time "
        f"(top-5 {100 * zero_shot['set_top5']:.0f}%, chance {100 * zero_shot['chance']:.0f}%); "
        f"an image's top class is one it holds {100 * zero_shot['image_top1']:.0f}% of the time "
        f"(chance {100 * zero_shot['image_chance']:.0f}%)"
    )

    results: dict = {"world": world, "clip": {**zero_shot, "weights": str(clip_path)}}
    variants = (
        ("Baseline", "baseline", False, "default", "single image: all three modules off"),
        ("LCCo", "lcco", True, "default", "all three modules, cosegkit's default readings"),
        ("LCCo-paper", "lcco-paper", True, "paper", "all three modules, eq. 2, 5, 7 and 8 as printed"),
    )
    runs = {}
    _say(f"[3/5] three models, the same budget each: {steps} steps of 4 sets x 4 images")
    for name, folder, modules, variant, what in variants:
        _say(f"  {name}: {what}")
        cfg = demo_train_config(
            clip_path, steps, seed, budget.eval_sets, modules=modules, variant=variant, world=world, root=root
        )
        results[name] = _train_or_resume(cfg, out / folder, progress)
        runs[name] = out / folder

    _say("[4/5] zero-shot: the frozen CLIP alone (CLIP-ES with the set's own class), on the same held-out sets")
    start = time.perf_counter()
    zero_shot_model = demo_zero_shot(clip, world=world)
    held_out_sets = build_eval_sets(config, sets=budget.eval_sets)
    ev = evaluate(zero_shot_model, held_out_sets, batch_size=4, group_names=class_names)
    named = sum(
        int(zero_shot_model.set_scores(item["images"][None]).argmax().item() == int(item["group"]))
        for item in held_out_sets
    )
    results["Zero-shot"] = {
        "P": ev.P,
        "J": ev.J,
        "images": ev.images,
        "class_accuracy": named / len(held_out_sets),
        "seconds": round(time.perf_counter() - start, 1),
    }
    photos = None
    if world == "pascal":
        from cosegkit.engine.config import build_photo_eval_sets

        photos = build_photo_eval_sets(config)
        ev = evaluate(zero_shot_model, photos, batch_size=1)
        results["Zero-shot"]["photos"] = {"P": ev.P, "J": ev.J, "images": ev.images}
    _say("[5/5] the figure (the held-out evaluation of each trained model is in its run's eval.json)")
    from cosegkit.models.lcco import LCCo

    models: dict[str, torch.nn.Module] = {name: LCCo.from_pretrained(run / "model") for name, run in runs.items()}
    models["Zero-shot"] = zero_shot_model
    if photos is not None:
        _figure(models, photos, class_names, out / "figure.png", _photo_picks(photos))
    else:  # the synthetic world: its first held-out sets
        _figure(models, build_eval_sets(config, sets=3), class_names, out / "figure.png")
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    results["quick"] = quick
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    held_out = results["LCCo"]["images"]
    _say("")
    what = "synthetic sets" if world == "synthetic" else "composite sets of held-out photos' cut-outs"
    _say(f"held-out {what}: {held_out} images, P/J protocol 'ssnm' (adaptive threshold, cap 0.8)")
    header = f"{'model':<11} {'P (%)':>7} {'J (%)':>7}"
    if photos is not None:
        header += f" {'P photos':>9} {'J photos':>9}"
    _say(header + f" {'train s':>8}")

    def photo_cells(r: dict) -> str:
        if photos is None:
            return ""
        p = r.get("photos")
        return f" {100 * p['P']:9.2f} {100 * p['J']:9.2f}" if p else f" {'':>9} {'':>9}"

    for name in runs:
        r = results[name]
        _say(f"{name:<11} {100 * r['P']:7.2f} {100 * r['J']:7.2f}{photo_cells(r)} {r['train_seconds']:8.1f}")
    r = results["Zero-shot"]
    _say(
        f"{'Zero-shot':<11} {100 * r['P']:7.2f} {100 * r['J']:7.2f}{photo_cells(r)} {'none':>8}   (no training, no masks)"
    )
    for name in ("LCCo", "LCCo-paper"):
        dp = 100 * (results[name]["P"] - results["Baseline"]["P"])
        dj = 100 * (results[name]["J"] - results["Baseline"]["J"])
        _say(f"{name:<11} - Baseline: P {dp:+.2f}, J {dj:+.2f} points")
    if quick:
        _say("(--quick: a pipeline check; these numbers measure nothing)")
    _say(f"figure: {out / 'figure.png'}   results: {out / 'results.json'}   wall time {results['wall_seconds']:.0f} s")
    return results
