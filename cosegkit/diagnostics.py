"""Does a model use its set? Measurements of what each set-aware module of an LCCo contributes.

Three questions, each a function that works on any :class:`~cosegkit.LCCo` and a few sets:

- :func:`set_sensitivity`: how much an image's features change, at the input and the output of
  each module, when the *other* images of its set are replaced by images of other sets. A
  single-image model scores exactly 0 everywhere; a module that passes set information on
  raises the number between its input and its output.
- :func:`gradient_norms`: the gradient norm reaching each part of the model on one training
  batch, so a module that receives no learning signal shows up.
- :func:`class_accuracy`: how often the regularization module's :math:`i^*` (eq. 6), the
  interaction module's top-K (eq. 3-5), CLIP's own text distillation (the argmax of
  :math:`\\sigma`) and the ground-truth class of eq. (12) name the set's true class; and the
  coarse mask's Jaccard index on CLIP's patch grid.

For a model with the grouping layer, :func:`grouping_diagnostics` says whether its groups
are co-segments at all: how many groups a set uses, how much of the set they cover, how much
of the common object its main group holds and how pure that group is, and the best J any
single group reaches (what no read-out can beat).

:func:`diagnose_run` runs the first three on a run folder's final model and its checkpoints;
``python examples/diagnose.py RUN`` prints them as tables.

Axis legend: ``b`` batch of sets, ``n`` images per set, ``c`` channels, ``h w`` spatial,
``p`` prompts, ``k`` top-K.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosegkit.losses.lcco import LCCoLoss

__all__ = [
    "MODULES",
    "choice_agreement",
    "class_accuracy",
    "diagnose_run",
    "format_report",
    "gradient_norms",
    "grouping_diagnostics",
    "set_sensitivity",
]

MODULES: tuple[str, ...] = ("correspondence", "interaction", "regularization")
"""The set-aware modules of :class:`~cosegkit.LCCo`, coarse to fine, by attribute name."""

_PARTS: tuple[str, ...] = (
    "encoder",
    "center",
    "correspondence",
    "blocks",
    "interaction",
    "coarse",
    "regularization",
    "head",
)


def _features(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.features


def _capture(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs and outputs of every active module, and the mask logits, of one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in MODULES:
        module = getattr(model, name, None)
        if module is None or isinstance(module, nn.Identity):
            continue

        def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            seen[f"{name}.in"] = args[0].detach()
            seen[f"{name}.out"] = _features(out).detach()

        handles.append(module.register_forward_hook(hook))
    try:
        seen["masks"] = model(images).masks.detach()
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def set_sensitivity(model: nn.Module, images: torch.Tensor, others: torch.Tensor) -> dict[str, float]:
    """Relative change of image 0's features when the rest of its set is replaced.

    For every set of ``images``, image 0 is kept and images ``1 .. N-1`` are swapped for the
    same positions of ``others`` (images of other sets). The number reported for a tensor
    ``t`` is :math:`\\lVert t_0(\\text{set}) - t_0(\\text{swapped})\\rVert / \\lVert t_0(\\text{set})\\rVert`
    over image 0 of all sets, at the input (``"<module>.in"``) and output (``"<module>.out"``)
    of each active module and for the mask logits (``"masks"``). A single-image model scores
    0; a module that adds set information has ``out`` above ``in``.

    The model runs in its current mode (call ``model.eval()`` first to measure inference).

    Args:
        model: an :class:`~cosegkit.LCCo`.
        images: ``(B, N, 3, H, W)``, ``N >= 2``.
        others: images of other sets, the same shape.

    Returns:
        ``{name: relative change}``.

    Example:
        >>> import torch
        >>> from cosegkit import LCCo
        >>> from cosegkit.diagnostics import set_sensitivity
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> _ = torch.manual_seed(0)
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
        ...              clip_model="coseg-test-tiny", clip_pretrained=None,
        ...              decoder_channels=(32, 32, 16, 16), heads=4, clip_heads=4, top_k=3).eval()
        >>> sens = set_sensitivity(model, torch.rand(2, 4, 3, 64, 64), torch.rand(2, 4, 3, 64, 64))
        >>> sorted(sens)  # doctest: +NORMALIZE_WHITESPACE
        ['correspondence.in', 'correspondence.out', 'interaction.in', 'interaction.out', 'masks',
         'regularization.in', 'regularization.out']
        >>> sens["correspondence.in"]  # the encoder sees one image at a time
        0.0
        >>> sens["correspondence.out"] > 1e-4  # ISFC mixes in the other images
        True
    """
    if images.shape != others.shape or images.ndim != 5 or images.shape[1] < 2:
        raise ValueError(
            f"expected images and others of one shape (B, N, 3, H, W) with N >= 2, got "
            f"{tuple(images.shape)} and {tuple(others.shape)}"
        )
    swapped = torch.cat([images[:, :1], others[:, 1:]], dim=1)
    a = _capture(model, images)
    b = _capture(model, swapped)
    out = {}
    for name in sorted(a):
        x, y = a[name][:, 0].float(), b[name][:, 0].float()
        out[name] = float((x - y).norm() / x.norm().clamp_min(1e-12))
    return out


def gradient_norms(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, criterion: nn.Module | None = None
) -> dict[str, float]:
    """Gradient norm reaching each part of the model on one batch, and each loss term.

    Runs one forward pass in training mode with ``masks`` (so eq. 12's targets are computed),
    backpropagates :class:`~cosegkit.losses.LCCoLoss` and returns the L2 norm of the gradients
    of every part's parameters (``"grad/<part>"``) and the loss terms (``"loss/<term>"``). The
    model's gradients are cleared before and after; its mode is restored. Batch norm's running
    statistics move by one step, as in training.

    Args:
        model: an :class:`~cosegkit.LCCo`.
        images: ``(B, N, 3, H, W)``.
        masks: ``(B, N, 1, H, W)`` ground truth.
        criterion: the loss (default ``LCCoLoss()``).

    Returns:
        ``{name: value}``.

    Example:
        >>> import torch
        >>> from cosegkit import LCCo
        >>> from cosegkit.diagnostics import gradient_norms
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, use_interaction=False,
        ...              use_regularization=False, decoder_channels=(32, 32, 16, 16), heads=4)
        >>> norms = gradient_norms(model, torch.rand(1, 3, 3, 32, 32), (torch.rand(1, 3, 1, 32, 32) > 0.5).float())
        >>> sorted(norms)
        ['grad/blocks', 'grad/center', 'grad/correspondence', 'grad/encoder', 'grad/head', 'loss/iou', 'loss/total']
        >>> norms["grad/correspondence"] > 0
        True
    """
    criterion = criterion or LCCoLoss()
    mode = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        losses = criterion(model(images, masks=masks), masks)
        losses.total.backward()
        out = {}
        for part in _PARTS:
            module = getattr(model, part, None)
            if module is None or isinstance(module, nn.Identity):
                continue
            grads = [p.grad.float().pow(2).sum() for p in module.parameters() if p.grad is not None]
            if grads:
                out[f"grad/{part}"] = float(torch.stack(grads).sum().sqrt())
        for term, value in losses._asdict().items():
            if value is not None:
                out[f"loss/{term}"] = float(value.detach())
        return dict(sorted(out.items()))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(mode)


@torch.no_grad()
def class_accuracy(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor | None = None
) -> dict[str, float]:
    """How often the model's set-level class choices are right, and the coarse mask's quality.

    With ``classes`` (the sets' true vocabulary indices, e.g. the synthetic world's targets)
    every choice is scored against them; without, against eq. (12)'s ground-truth class from
    the masked images. Keys present when the model has the part:

    - ``istar``: :math:`i^*` of eq. (6) is the class;
    - ``topk``: the class is among the interaction module's top-K prompts;
    - ``sigma``: the argmax of :math:`\\sigma` (CLIP alone, no training) is the class;
    - ``eq12``: eq. (12)'s target from the masked images is the class (with ``classes`` only);
    - ``coarse_J``: Jaccard index of the coarse mask (eq. 11) at 0.5 against the
      area-downsampled ground truth, over all images.

    Args:
        model: an :class:`~cosegkit.LCCo`, run in eval mode.
        images: ``(B, N, 3, H, W)``.
        masks: ``(B, N, 1, H, W)``.
        classes: optional ``(B,)`` long.

    Returns:
        ``{name: fraction in [0, 1]}``.

    Example:
        >>> import torch
        >>> from cosegkit import LCCo
        >>> from cosegkit.diagnostics import class_accuracy
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
        ...              clip_model="coseg-test-tiny", clip_pretrained=None,
        ...              decoder_channels=(32, 32, 16, 16), heads=4, clip_heads=4, top_k=3)
        >>> acc = class_accuracy(model, torch.rand(2, 3, 3, 64, 64), torch.ones(2, 3, 1, 64, 64), torch.tensor([0, 5]))
        >>> sorted(acc)
        ['coarse_J', 'eq12', 'istar', 'sigma', 'topk']
        >>> all(0.0 <= v <= 1.0 for v in acc.values())
        True
    """
    from cosegkit.layers.interaction import distill_text
    from cosegkit.losses.iou import downsample_mask

    mode = model.training
    model.eval()
    try:
        out = model(images, masks=masks)
    finally:
        model.train(mode)
    reference = classes if classes is not None else out.class_targets
    result: dict[str, float] = {}
    if reference is None:
        return result
    reference = reference.to(images.device)
    result.update(choice_agreement(out, reference))
    if out.similarity is not None:  # the forward's own S: CLIP's choice without any training
        sigma_top = distill_text(out.similarity, 1)[:, 0]
        result["sigma"] = float((sigma_top == reference).float().mean())
    if classes is not None and out.class_targets is not None:
        result["eq12"] = float((out.class_targets == reference).float().mean())
    if out.coarse_masks is not None:
        gt = downsample_mask(masks, tuple(out.coarse_masks.shape[-2:])) >= 0.5
        pred = out.coarse_masks.sigmoid() >= 0.5
        inter = (gt & pred).flatten(2).sum(-1).float()
        union = (gt | pred).flatten(2).sum(-1).float()
        result["coarse_J"] = float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())
    return dict(sorted(result.items()))


def choice_agreement(output: Any, reference: torch.Tensor) -> dict[str, float]:
    """How often a forward's i* (``"istar"``) and top-K (``"topk"``) hold the ``(B,)`` reference class.

    Keys are present when the output has the part. Training logs this against eq. (12)'s
    target as ``acc/istar`` and ``acc/topk``.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from cosegkit.diagnostics import choice_agreement
        >>> out = SimpleNamespace(common_class=torch.tensor([1, 0]), topk_indices=torch.tensor([[1, 2], [3, 4]]))
        >>> choice_agreement(out, torch.tensor([1, 1]))
        {'istar': 0.5, 'topk': 0.5}
    """
    result = {}
    if output.common_class is not None:
        result["istar"] = float((output.common_class == reference).float().mean())
    if output.topk_indices is not None:
        result["topk"] = float((output.topk_indices == reference[:, None]).any(dim=1).float().mean())
    return result


def _stack_sets(dataset: Any, start: int, count: int) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in range(start, start + count)]
    return {key: torch.stack([item[key] for item in items]) for key in ("images", "masks", "group")}


def diagnose_run(run: str | Path, *, sets: int = 32, checkpoints: bool = True) -> dict[str, Any]:
    """All three diagnostics for a ``cosegkit train`` run folder.

    Loads the run's ``config.json``; measures its final ``model/`` (when there is one) and,
    with ``checkpoints``, every checkpoint kept in ``checkpoints/``, on ``sets`` held-out sets
    (the run's evaluation sets; for a synthetic run, the sets' true classes are known), plus
    a model freshly initialised from the run's config (``"init"``). Also returns the
    class-choice accuracies logged during training from ``metrics.jsonl``.

    Returns:
        A dict with ``"stages"``, mapping each stage (``"init"``, each checkpoint's name,
        ``"final"``) to its ``"sensitivity"``, ``"gradients"`` and ``"classes"`` dicts, and
        ``"logged"``, the ``metrics.jsonl`` records that hold class accuracies.

    Example:
        A two-step run of a tiny random model, then its diagnosis:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.diagnostics import diagnose_run, format_report
        >>> from cosegkit.engine import TrainConfig, train
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=3, batch_size=1, heads=2, top_k=2,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ...     steps=2, checkpoint_every=1, log_every=1, extra={"eval_sets": 4},
        ... )
        >>> run_dir = train(config, Path(tempfile.mkdtemp()) / "run", progress=False).run_dir
        >>> report = diagnose_run(run_dir, sets=2)
        >>> list(report["stages"])
        ['init', 'step_00000001', 'step_00000002', 'final']
        >>> sorted(report["stages"]["final"])
        ['classes', 'gradients', 'sensitivity']
        >>> report["stages"]["init"]["sensitivity"]["correspondence.in"]  # the encoder sees one image
        0.0
        >>> [record["step"] for record in report["logged"]]  # i* and top-K logged while training
        [1, 2]
        >>> print(format_report(report).splitlines()[0])
        sensitivity
    """
    from cosegkit.engine.checkpoint import find_checkpoints, load_checkpoint
    from cosegkit.engine.config import GENERATED_DATASETS, TrainConfig, build_eval_sets, build_model

    run = Path(run)
    config = TrainConfig.load(run / "config.json")
    eval_sets = build_eval_sets(config, config.eval_classes)
    if len(eval_sets) < 2 * sets:
        sets = max(1, len(eval_sets) // 2)
    data = _stack_sets(eval_sets, 0, sets)
    others = _stack_sets(eval_sets, sets, sets)["images"]
    classes = data["group"] if config.dataset in GENERATED_DATASETS else None  # a set's group is its class

    stages: list[tuple[str, dict[str, torch.Tensor] | None]] = [("init", None)]
    if checkpoints:
        for path in find_checkpoints(run / "checkpoints"):
            stages.append((path.stem, load_checkpoint(path)["model"]))
    report: dict[str, Any] = {"stages": {}}
    model = build_model(config)  # built once (its CLIP and text bank too); each stage loads its weights
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for stage, state in stages:
        model.load_state_dict(initial if state is None else state)
        report["stages"][stage] = _measure(model, data, others, classes)
    if (run / "model").is_dir():
        from cosegkit.models.lcco import LCCo

        report["stages"]["final"] = _measure(LCCo.from_pretrained(run / "model"), data, others, classes)
    logged = []
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if any(k.startswith("acc/") for k in record):
                logged.append({k: v for k, v in record.items() if k == "step" or k.startswith("acc/")})
    report["logged"] = logged
    return report


def _measure(
    model: nn.Module, data: dict[str, torch.Tensor], others: torch.Tensor, classes: torch.Tensor | None
) -> dict[str, dict[str, float]]:
    images, masks = data["images"], data["masks"]
    grads = gradient_norms(model, images[: max(1, len(images) // 4)], masks[: max(1, len(images) // 4)])
    model.eval()
    return {
        "sensitivity": set_sensitivity(model, images, others),
        "gradients": grads,
        "classes": class_accuracy(model, images, masks, classes),
    }


def format_report(report: dict[str, Any], columns: Sequence[str] = ("sensitivity", "gradients", "classes")) -> str:
    """:func:`diagnose_run`'s report as Markdown tables, one per measurement, a row per stage.

    Example:
        >>> from cosegkit.diagnostics import format_report
        >>> report = {"stages": {"init": {"classes": {"istar": 0.25}}, "final": {"classes": {"istar": 0.75}}},
        ...           "logged": []}
        >>> print(format_report(report, columns=["classes"]))
        classes
        | stage | istar |
        | --- | --: |
        | init | 0.250 |
        | final | 0.750 |
    """
    blocks = []
    stages = report["stages"]
    for column in columns:
        keys: list[str] = []
        for values in stages.values():
            keys += [k for k in values.get(column, {}) if k not in keys]
        if not keys:
            continue
        lines = [column, "| stage | " + " | ".join(keys) + " |", "| --- | " + " | ".join("--:" for _ in keys) + " |"]
        for stage, values in stages.items():
            row = values.get(column, {})
            lines.append(f"| {stage} | " + " | ".join(_cell(row.get(k, math.nan)) for k in keys) + " |")
        blocks.append("\n".join(lines))
    if report.get("logged"):
        keys = [k for k in report["logged"][0] if k != "step"]
        lines = [
            "logged during training (training batches, against eq. 12's target; means up to each step)",
            "| step | " + " | ".join(keys) + " |",
            "| --: | " + " | ".join("--:" for _ in keys) + " |",
        ]
        records = report["logged"]
        size = math.ceil(len(records) / 10)  # at most ten rows: means over consecutive records
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            means = [sum(r.get(k, math.nan) for r in chunk) / len(chunk) for k in keys]
            lines.append(f"| {chunk[-1]['step']} | " + " | ".join(_cell(m) for m in means) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(value: float) -> str:
    """Three decimals, or three significant digits for the small numbers a silenced module gives."""
    return f"{value:.3g}" if value != 0 and abs(value) < 1e-2 else f"{value:.3f}"


@torch.no_grad()
def grouping_diagnostics(model: nn.Module, sets: Any, *, limit: int | None = None) -> dict[str, float]:
    """Are the grouping layer's groups co-segments? Means over held-out sets with masks.

    On each set (in eval mode, soft assignment; a token belongs to its largest share):

    - ``groups_used``: groups that own at least one token of the set;
    - ``full_coverage``: groups present in every valid image (coverage 1);
    - ``target_share``: the share of the common object's tokens (ground truth averaged over
      each token's cell) owned by the group that owns most of them, its *main group*;
    - ``target_purity``: the share of the main group's tokens that are object;
    - ``oracle_J``: the J of the best single group's mask (its assignment, resized as
      :class:`~cosegkit.GroupingReadout` does), the ceiling of any read-out;
    - ``score_is_main``: how often the highest-scored group is the main group.

    Args:
        model: an :class:`~cosegkit.LCCo` with ``use_grouping=True``.
        sets: a dataset of set items with ``images``, ``masks`` and ``valid``
            (e.g. :func:`~cosegkit.engine.build_eval_sets`).
        limit: measure only the first ``limit`` sets.

    Example:
        >>> import torch
        >>> from cosegkit import LCCo
        >>> from cosegkit.diagnostics import grouping_diagnostics
        >>> from cosegkit.engine import TrainConfig, build_eval_sets
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, decoder_channels=(32, 32, 16, 16),
        ...              use_correspondence=False, use_interaction=False, use_regularization=False,
        ...              use_grouping=True, grouping_level=3, num_groups=4, heads=4)
        >>> sets = build_eval_sets(TrainConfig(world_classes=4, image_size=32, set_size=2, eval_set_size=2), sets=2)
        >>> report = grouping_diagnostics(model, sets)
        >>> sorted(report)
        ['full_coverage', 'groups_used', 'oracle_J', 'score_is_main', 'target_purity', 'target_share']
        >>> 1 <= report["groups_used"] <= 4 and 0 <= report["oracle_J"] <= 1
        True
    """
    import torch.nn.functional as F

    from cosegkit.layers.grouping import _hard
    from cosegkit.metrics import precision_jaccard
    from cosegkit.models.readout import GroupingReadout, token_masks_to_images

    if not getattr(model, "use_grouping", False):
        raise ValueError("grouping_diagnostics needs an LCCo built with use_grouping=True")
    readout = GroupingReadout(model).eval()
    totals: dict[str, float] = {}
    count = 0
    for index in range(len(sets) if limit is None else min(limit, len(sets))):
        item = sets[index]
        images, masks = item["images"][None], item["masks"][None].float()
        valid = item["valid"][None]
        out = readout(images, valid)
        a = out.grouping.assignment[0][valid[0]]  # (v, g, h, w)
        g = a.shape[1]
        hard = _hard(a[None])[0]
        target = F.interpolate(masks[0][valid[0]], size=a.shape[-2:], mode="area")[:, 0]  # (v, h, w)
        owned = (hard * target[:, None]).sum(dim=(0, 2, 3))  # object mass per group
        main = int(owned.argmax())
        size = hard[:, main].sum().clamp_min(1.0)
        present = hard.flatten(2).amax(dim=2)  # (v, g)
        best = 0.0
        h, w = images.shape[-2:]
        for k in range(g):
            probs = token_masks_to_images(a[:, k : k + 1], (h, w), int(getattr(model, "output_stride", 1)))
            _, j = precision_jaccard(probs[None], masks[0][valid[0]][None], size=(h, w))
            best = max(best, float(j.mean()))
        values = {
            "groups_used": float((hard.sum(dim=(0, 2, 3)) > 0).sum()),
            "full_coverage": float((present.min(dim=0).values > 0).sum()),
            "target_share": float(owned[main] / target.sum().clamp_min(1e-6)),
            "target_purity": float(owned[main] / size),
            "oracle_J": best,
            "score_is_main": float(int(out.chosen[0]) == main),
        }
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
        count += 1
    return {key: value / max(count, 1) for key, value in sorted(totals.items())}


def segclip_group_diagnostics(
    zero_shot: nn.Module, sets: Any, *, limit: int | None = None, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Where do SegCLIP's groups fail, if they do? Means over held-out images with masks.

    For a :class:`~cosegkit.zeroshot.SegClipCoseg`, each valid image's pixels are given to
    their argmax group (the soft assignment resized to the image, as the hard read-out does):

    - ``groups_used``: groups holding at least one pixel of the image (1 is a collapse);
    - ``target_share``: the share of the object's pixels held by the group that holds most of
      them, the image's *main group*;
    - ``target_purity``: the share of the main group's pixels that are object;
    - ``oracle_J``: the J of the image's best single group (its region as the mask), the
      ceiling of a read-out that picks one group;
    - ``picked_is_main``: how often the group with the highest affinity to the set's class is
      the main group (a read-out failure when the groups are good);
    - ``class_top1``: how often the set's class is the true one (only with ``class_names``
      and sets that carry their class index ``group``);
    - ``told_J``: the J of the read-out told the set's true class (same conditions), against
      ``own_J``, the J of the read-out of the set's own class: when ``told_J`` is the lower,
      the groups' embeddings do not carry the true class's text, whatever the naming.

    Args:
        zero_shot: a :class:`~cosegkit.zeroshot.SegClipCoseg`.
        sets: set items with ``images``, ``masks`` and ``valid`` (e.g.
            :func:`~cosegkit.engine.build_eval_sets`).
        limit: measure only the first ``limit`` sets.
        class_names: the sets' class names, by the index in their ``group`` entry, to score the
            class the set's texts named.

    Example:
        >>> import torch
        >>> from cosegkit.diagnostics import segclip_group_diagnostics
        >>> from cosegkit.engine import TrainConfig, build_eval_sets
        >>> from cosegkit.models import SegClip, SegClipConfig
        >>> from cosegkit.zeroshot import SegClipCoseg
        >>> config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2, first_stage_layer=1,
        ...                        num_groups=4, context_length=16, text_width=32, text_layers=1, head_width=16,
        ...                        mae_decoder=False)
        >>> train = TrainConfig(world_classes=4, image_size=32, set_size=2, eval_set_size=2)
        >>> names = train.world().class_names
        >>> zs = SegClipCoseg(SegClip(config), names)
        >>> report = segclip_group_diagnostics(zs, build_eval_sets(train, sets=2), class_names=names)
        >>> sorted(report)
        ['class_top1', 'groups_used', 'oracle_J', 'own_J', 'picked_is_main', 'target_purity', 'target_share', 'told_J']
        >>> 1 <= report["groups_used"] <= 4 and 0 <= report["oracle_J"] <= 1
        True
    """
    import torch.nn.functional as F

    from cosegkit.metrics import precision_jaccard

    totals: dict[str, float] = {}
    images_seen = sets_seen = scored = 0
    top1 = 0.0
    totals_told: dict[str, float] = {}
    for index in range(len(sets) if limit is None else min(limit, len(sets))):
        item = sets[index]
        valid = item["valid"]
        with torch.no_grad():
            out = zero_shot(item["images"][None], valid[None])
        h, w = item["images"].shape[-2:]
        soft = out.assignment[0][valid]  # (v, g, hh, ww)
        g = soft.shape[1]
        full = F.interpolate(soft.float(), size=(h, w), mode="bilinear", align_corners=False)
        regions = F.one_hot(full.argmax(dim=1), g).permute(0, 3, 1, 2).float()  # (v, g, h, w)
        target = (item["masks"][valid].float() >= 0.5).float()  # (v, 1, h, w)
        owned = (regions * target).sum(dim=(2, 3))  # (v, g)
        size = regions.sum(dim=(2, 3))
        main = owned.argmax(dim=1)
        rows = torch.arange(regions.shape[0])
        picked = out.affinity[0][valid].argmax(dim=1)
        js = torch.stack(
            [precision_jaccard(regions[None, :, k : k + 1], target[None], size=(h, w))[1][0] for k in range(g)]
        )  # (g, v)
        values = {
            "groups_used": (size > 0).sum(dim=1).float(),
            "target_share": owned[rows, main] / target.sum(dim=(1, 2, 3)).clamp_min(1.0),
            "target_purity": owned[rows, main] / size[rows, main].clamp_min(1.0),
            "oracle_J": js.amax(dim=0),
            "picked_is_main": (picked == main).float(),
        }
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + float(value.sum())
        images_seen += int(valid.sum())
        if class_names is not None and "group" in item:
            truth = class_names[int(item["group"])]
            named_right = zero_shot.classnames[int(out.common_class[0])] == truth
            top1 += float(named_right)
            sets_seen += 1
            score = item.get("score", valid)[None] & valid[None]
            masks = item["masks"][None].float()
            own_j = precision_jaccard(out.probs, masks, size=(h, w), valid=score)[1]
            if named_right:  # told the class it found: the same masks
                told_j = own_j
            else:
                with torch.no_grad():
                    told = zero_shot(item["images"][None], valid[None], class_name=truth)
                told_j = precision_jaccard(told.probs, masks, size=(h, w), valid=score)[1]
            totals_told["own_J"] = totals_told.get("own_J", 0.0) + float(own_j.nansum())
            totals_told["told_J"] = totals_told.get("told_J", 0.0) + float(told_j.nansum())
            scored += int((~torch.isnan(own_j)).sum())
    report = {key: value / max(images_seen, 1) for key, value in totals.items()}
    if sets_seen:
        report["class_top1"] = top1 / sets_seen
        report.update({key: value / max(scored, 1) for key, value in totals_told.items()})
    return dict(sorted(report.items()))
