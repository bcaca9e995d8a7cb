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

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cosegkit.clip.frozen import FrozenClip
from cosegkit.engine.pretrain import (
    SYNTHETIC_CLIP,
    SYNTHETIC_TEMPLATES,
    ClipPretrainConfig,
    pretrain_synthetic_clip,
    register_synthetic_clip,
    zero_shot_accuracy,
)
from cosegkit.engine.checkpoint import find_checkpoints
from cosegkit.engine.config import TrainConfig, build_eval_sets
from cosegkit.engine.evaluate import evaluate
from cosegkit.engine.segment import binarize
from cosegkit.engine.trainer import train
from cosegkit.errors import CosegValueError
from cosegkit.zeroshot import ZeroShotCoseg

__all__ = ["ZERO_SHOT_SIZE", "DemoBudget", "demo_train_config", "demo_zero_shot", "run_demo"]

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
) -> TrainConfig:
    """The training config of the demo's models (and of ``examples/ablation.py``).

    A 16-class world at 64 px, sets of 4, batches of 4 sets; a ResNet-18 (random weights) at
    encoder depth 3, so the three modules act at strides 8, 4 and 2; the synthetic CLIP at
    ``clip_path``; AdamW at 1e-3 with a short warm-up. ``modules=False`` is the Baseline;
    ``variant`` picks the modules' readings (:data:`~cosegkit.models.lcco.VARIANTS`).

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
    return TrainConfig(
        dataset="synthetic",
        world_classes=16,
        world_seed=0,
        world_objects=(2, 3),
        image_size=64,
        set_size=4,
        batch_size=4,
        encoder="resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=[64, 48, 32],
        clip_model=SYNTHETIC_CLIP,
        clip_pretrained=str(clip_path),
        use_correspondence=modules,
        use_interaction=modules,
        use_regularization=modules,
        top_k=3,
        heads=4,
        variant=variant,
        steps=steps,
        lr=1e-3,
        warmup=max(1, steps // 20),
        seed=seed,
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, steps // 50),
        device="cpu",
        eval_set_size=4,
        extra={"eval_sets": eval_sets},
    )


def demo_zero_shot(clip: FrozenClip) -> ZeroShotCoseg:
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
    return ZeroShotCoseg(clip, templates=SYNTHETIC_TEMPLATES, synonyms={}, image_size=ZERO_SHOT_SIZE)


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
    assert ev is not None  # synthetic runs always evaluate
    return {"P": ev.P, "J": ev.J, "images": ev.images, "train_seconds": round(seconds, 1)}


def _tile(x: torch.Tensor, size: int) -> Image.Image:
    """A (3, H, W) image or (1, H, W) mask in [0, 1] as a size x size RGB tile."""
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = F.interpolate(x[None].float(), size=(size, size), mode="nearest")[0]
    return Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


@torch.inference_mode()
def _figure(models: dict[str, torch.nn.Module], config: TrainConfig, path: Path, sets: int = 3) -> None:
    world = config.world()
    eval_sets = build_eval_sets(config, sets=sets)
    tile, pad, label_w = 96, 4, 100
    rows = ["image", "truth", *models]
    n = config.eval_set_size or config.set_size
    width = label_w + n * (tile + pad)
    height = sets * (len(rows) * (tile + pad) + 24)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for s in range(sets):
        item = eval_sets[s]
        target = world.class_names[int(item["group"])]
        draw.text((4, y + 4), f"set {s + 1}: the common object is a {target}", fill="black")
        y += 24
        images = item["images"][None]
        masks = {name: model.predict(images)[0] for name, model in models.items()}
        for row in rows:
            draw.text((4, y + tile // 2 - 6), row, fill="black")
            for i in range(n):
                if row == "image":
                    x = item["images"][i]
                elif row == "truth":
                    x = item["masks"][i]
                else:
                    x = binarize(masks[row][i, 0]).float()[None]
                canvas.paste(_tile(x, tile), (label_w + i * (tile + pad), y))
            y += tile + pad
    canvas.save(path)


def run_demo(
    out: str | Path = "cosegkit-demo",
    *,
    steps: int | None = None,
    clip_steps: int | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run the demo (see the module docstring) and return what it measured.

    The whole demo takes minutes on a CPU; run it from the shell with ``cosegkit demo`` (add
    ``--out``, ``--steps``, ``--clip-steps`` or ``--quick``), or as ``run_demo("cosegkit-demo")``.
    Even ``quick=True`` (or ``steps=1, clip_steps=1``) still builds, trains, evaluates and saves
    three ResNet-18 LCCo models (``cosegkit demo --quick`` took 11 s of wall time on an idle
    2-core CPU, and up to a minute with the cores shared), so the example below only shows what
    the demo trains. The CLIP weights are cached under :func:`~cosegkit.engine.pretrain.cache_folder`
    (``$COSEGKIT_CACHE`` moves it).

    Args:
        out: output folder.
        steps: training steps of each model (default 600; 3 with ``quick``).
        clip_steps: CLIP pre-training steps (default 600; 3 with ``quick``).
        quick: a tiny budget that checks the pipeline in seconds; its numbers mean nothing.
        seed: seed of both models' initialisation and data.
        progress: show progress bars.

    Returns:
        The results as a dict, also written to ``<out>/results.json``. Under ``"clip"``, the
        CLIP's zero-shot scores, pre-training seconds and weights file; under ``"Baseline"``,
        ``"LCCo"`` (the default variant) and ``"LCCo-paper"``, each model's held-out ``P``,
        ``J``, ``images`` and ``train_seconds``; under ``"Zero-shot"``, the frozen CLIP's ``P``,
        ``J``, ``images``, ``class_accuracy`` (how often it names the set's common object) and
        ``seconds``; and ``"wall_seconds"`` and ``"quick"``.

    Example:
        The default budget and the three models, each trained in its own run folder under ``out``:

        >>> from cosegkit.demo import DemoBudget, demo_train_config
        >>> DemoBudget()
        DemoBudget(clip_steps=600, steps=600, eval_sets=60)
        >>> variants = {"baseline": {"modules": False}, "lcco": {"modules": True},
        ...             "lcco-paper": {"modules": True, "variant": "paper"}}
        >>> for folder, switches in variants.items():
        ...     c = demo_train_config("clip.safetensors", steps=600, **switches)
        ...     print(folder, c.use_correspondence, c.use_interaction, c.use_regularization, c.variant, c.steps)
        baseline False False False default 600
        lcco True True True default 600
        lcco-paper True True True paper 600
    """
    budget = QUICK if quick else DemoBudget()
    steps = steps or budget.steps
    clip_steps = clip_steps or budget.clip_steps
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CosegValueError(f"the demo's output folder {str(out)!r} is a file; pass a folder as --out")
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()

    _say("[1/5] the synthetic world: 16 classes (shape x colour x texture), 2-3 objects per image, 64 px")
    clip_config = ClipPretrainConfig(
        num_classes=16, world_seed=0, objects_per_image=(2, 3), image_size=64, steps=clip_steps
    )
    world = clip_config.world()

    _say(f"[2/5] a small CLIP pre-trained on the world's captions ({clip_steps} steps; cached)")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=clip_steps, desc="clip", unit="step", dynamic_ncols=True)

    def clip_progress(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

    start = time.perf_counter()
    clip_path = pretrain_synthetic_clip(clip_config, cache=not quick, progress=clip_progress)
    if bar is not None:
        bar.close()
    clip_seconds = time.perf_counter() - start
    config = demo_train_config(clip_path, steps, seed, budget.eval_sets, modules=True)
    register_synthetic_clip()
    clip = FrozenClip.from_name(
        SYNTHETIC_CLIP, pretrained=str(clip_path), classnames=world.class_names, templates=SYNTHETIC_TEMPLATES
    )
    zero_shot = zero_shot_accuracy(clip, world, sets=budget.eval_sets)
    _say(
        f"  CLIP names a held-out set's common object {100 * zero_shot['set_top1']:.0f}% of the time "
        f"(top-5 {100 * zero_shot['set_top5']:.0f}%, chance {100 * zero_shot['chance']:.0f}%)"
    )

    results: dict = {"clip": {**zero_shot, "seconds": round(clip_seconds, 1), "weights": str(clip_path)}}
    variants = (
        ("Baseline", "baseline", False, "default", "single image: all three modules off"),
        ("LCCo", "lcco", True, "default", "all three modules, cosegkit's default readings"),
        ("LCCo-paper", "lcco-paper", True, "paper", "all three modules, eq. 2, 5, 7 and 8 as printed"),
    )
    runs = {}
    _say(f"[3/5] three models, the same budget each: {steps} steps of 4 sets x 4 images")
    for name, folder, modules, variant, what in variants:
        _say(f"  {name}: {what}")
        cfg = demo_train_config(clip_path, steps, seed, budget.eval_sets, modules=modules, variant=variant)
        results[name] = _train_or_resume(cfg, out / folder, progress)
        runs[name] = out / folder

    _say("[4/5] zero-shot: the frozen CLIP alone (CLIP-ES with the set's own class), on the same held-out sets")
    start = time.perf_counter()
    zero_shot_model = demo_zero_shot(clip)
    held_out_sets = build_eval_sets(config, sets=budget.eval_sets)
    ev = evaluate(zero_shot_model, held_out_sets, batch_size=4, group_names=world.class_names)
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
    _say("[5/5] the figure (the held-out evaluation of each trained model is in its run's eval.json)")
    from cosegkit.models.lcco import LCCo

    models: dict[str, torch.nn.Module] = {name: LCCo.from_pretrained(run / "model") for name, run in runs.items()}
    models["Zero-shot"] = zero_shot_model
    _figure(models, config, out / "figure.png")
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    results["quick"] = quick
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    held_out = results["LCCo"]["images"]
    _say("")
    _say(f"held-out synthetic sets: {held_out} images, P/J protocol 'ssnm' (adaptive threshold, cap 0.8)")
    _say(f"{'model':<11} {'P (%)':>7} {'J (%)':>7} {'train s':>8}")
    for name in runs:
        r = results[name]
        _say(f"{name:<11} {100 * r['P']:7.2f} {100 * r['J']:7.2f} {r['train_seconds']:8.1f}")
    r = results["Zero-shot"]
    _say(f"{'Zero-shot':<11} {100 * r['P']:7.2f} {100 * r['J']:7.2f} {'none':>8}   (no training, no masks)")
    for name in ("LCCo", "LCCo-paper"):
        dp = 100 * (results[name]["P"] - results["Baseline"]["P"])
        dj = 100 * (results[name]["J"] - results["Baseline"]["J"])
        _say(f"{name:<11} - Baseline: P {dp:+.2f}, J {dj:+.2f} points")
    if quick:
        _say("(--quick: a pipeline check; these numbers measure nothing)")
    _say(f"figure: {out / 'figure.png'}   results: {out / 'results.json'}   wall time {results['wall_seconds']:.0f} s")
    return results
