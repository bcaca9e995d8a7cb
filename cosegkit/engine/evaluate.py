"""Evaluate a model on evaluation sets: per-image P and J, reduced over images and per group.

Works on any dataset whose items carry ``images``, ``masks``, ``valid`` and ``group`` (and
optionally ``score``): :class:`~cosegkit.data.EvalSets`, or the synthetic sets of
:class:`~cosegkit.engine.config.SyntheticTrainSets`. Under ``torchrun`` each process scores a
shard of the sets and the numbers are reduced across processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cosegkit.data.sampling import collate_sets
from cosegkit.data.types import DataError
from cosegkit.engine.distributed import DistInfo, all_gather_cat
from cosegkit.errors import CosegValueError
from cosegkit.metrics.functional import precision_jaccard, reduce_scores

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """The outcome of :func:`evaluate`.

    Attributes:
        P: precision over all scored images (the SSNM/UFO reduction).
        J: Jaccard index over all scored images.
        images: how many images were scored.
        per_group: ``{group name: {"P": ..., "J": ..., "images": ...}}``.
        preset: the binarisation preset used.

    Example:
        >>> import json
        >>> from cosegkit.engine import EvalResult
        >>> circles = {"P": 0.9, "J": 0.75, "images": 4}
        >>> result = EvalResult(P=0.9, J=0.75, images=4, per_group={"red plain circle": circles})
        >>> result.J, result.images, result.preset
        (0.75, 4, 'ssnm')
        >>> result.to_dict()  # doctest: +NORMALIZE_WHITESPACE
        {'P': 0.9, 'J': 0.75, 'images': 4, 'preset': 'ssnm',
         'per_group': {'red plain circle': {'P': 0.9, 'J': 0.75, 'images': 4}}}
        >>> EvalResult(**json.loads(json.dumps(result.to_dict()))) == result  # what eval.json holds
        True
    """

    P: float
    J: float
    images: int
    per_group: dict[str, dict[str, float]] = field(default_factory=dict)
    preset: str = "ssnm"

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON data."""
        return {"P": self.P, "J": self.J, "images": self.images, "preset": self.preset, "per_group": self.per_group}


def mask_probs(output: Any) -> torch.Tensor:
    """Mask probabilities ``(B, N, 1, H, W)`` of a model's output, as float.

    :class:`~cosegkit.LCCo` returns mask logits (``masks``);
    :class:`~cosegkit.zeroshot.ZeroShotCoseg` returns probabilities (``probs``).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from cosegkit.engine.evaluate import mask_probs
        >>> mask_probs(SimpleNamespace(masks=torch.zeros(1, 1, 1, 2, 2))).flatten().tolist()
        [0.5, 0.5, 0.5, 0.5]
        >>> mask_probs(SimpleNamespace(probs=torch.ones(1, 1, 1, 1, 2))).flatten().tolist()
        [1.0, 1.0]
    """
    return output.probs.float() if hasattr(output, "probs") else output.masks.float().sigmoid()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _check_oracle(net: torch.nn.Module, group_names: Sequence[str] | None) -> None:
    """Refuse the class oracle for a model without CLIP regularization, or for groups that are not its vocabulary."""
    if not getattr(net, "use_regularization", False):
        raise CosegValueError(
            f"class_oracle=True gives each set's class to an LCCo's CLIP regularization module (eq. 6-8), and this "
            f"{type(net).__name__} has none; evaluate it with class_oracle=False"
        )
    vocabulary = list(net.clip.classnames)
    if group_names is not None and list(group_names) != vocabulary:
        raise CosegValueError(
            f"class_oracle=True passes each set's group index as its vocabulary index, but the groups "
            f"{list(group_names)[:4]}... are not the model's vocabulary {vocabulary[:4]}...; the oracle scores "
            f"sets of the world the model was trained on (cosegkit evaluate: --data synthetic)"
        )


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    preset: str = "ssnm",
    batch_size: int = 1,
    group_names: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    workers: int = 0,
    dist: DistInfo | None = None,
    progress: Any = None,
    class_oracle: bool = False,
) -> EvalResult:
    """Score ``model`` on every set of ``dataset`` with :func:`~cosegkit.metrics.precision_jaccard`.

    Masks are compared at the images' resolution (the items' mask size). Images repeated to
    fill a set (``score`` False) and padding (``valid`` False) are run but not scored.

    The dataset's items fix the resolution the model runs at: build
    :class:`~cosegkit.data.EvalSets` at the size the model was trained at,
    ``EvalSets(groups, 5, model.image_size or 224)``, as ``cosegkit evaluate`` does
    (:attr:`LCCo.image_size <cosegkit.LCCo.image_size>` is ``None`` for a model saved before
    cosegkit stored it).

    Args:
        model: an :class:`~cosegkit.LCCo` (or a DDP wrapper of one), or a
            :class:`~cosegkit.zeroshot.ZeroShotCoseg`.
        dataset: evaluation sets.
        preset: ``"ssnm"``, ``"ufo"`` or ``"fixed"``.
        batch_size: sets per forward pass.
        group_names: names of the group ids, for ``per_group`` (ids otherwise).
        device: where to run.
        workers: data-loader worker processes.
        dist: the process group's rank and size; each rank scores every ``world``-th set.
        progress: a callable wrapping an iterable in a progress bar (e.g. ``tqdm``), or None.
        class_oracle: give the model each set's true class, its ``group``, as ``common_class``
            (:meth:`LCCo.forward <cosegkit.LCCo.forward>`): the class oracle, and the way a
            model with :attr:`LCCo.class_oracle <cosegkit.LCCo.class_oracle>` is scored. The
            sets' group indices must be the model's vocabulary indices, as in the synthetic
            world's sets; with ``group_names`` they are checked against the vocabulary.

    Returns:
        An :class:`EvalResult`.

    Raises:
        CosegValueError: ``class_oracle`` with a model that has no CLIP regularization
            module, or with ``group_names`` that are not the model's vocabulary.

    Example:
        A tiny random model (no weights are downloaded) scored on three synthetic sets of two
        images; its numbers mean nothing, but they are well-formed:

        >>> from cosegkit.engine import TrainConfig, build_eval_sets, build_model, evaluate
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=2, eval_set_size=2, batch_size=1, heads=2, top_k=1,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ... )
        >>> model = build_model(config)
        >>> sets = build_eval_sets(config, sets=3)
        >>> sets[0]["images"].shape, sets[0]["masks"].shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]))
        >>> names = config.world().class_names
        >>> result = evaluate(model, sets, preset="ssnm", batch_size=2, group_names=names)
        >>> result.images, result.preset, 0 <= result.P <= 1, 0 <= result.J <= 1
        (6, 'ssnm', True, True)
        >>> set(result.per_group) <= set(names), sum(g["images"] for g in result.per_group.values())
        (True, 6)
        >>> model.training  # evaluate leaves the model in eval mode
        False

        The class oracle: each set's true class replaces the model's own choice:

        >>> oracle = evaluate(model, sets, batch_size=2, group_names=names, class_oracle=True)
        >>> oracle.images, 0 <= oracle.J <= 1
        (6, True)
    """
    net = _unwrap(model)
    if class_oracle:
        _check_oracle(net, group_names)
    net.eval()
    indices = list(range(len(dataset)))
    if dist is not None and dist.world > 1:
        indices = indices[dist.rank :: dist.world]
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        collate_fn=collate_sets,
        num_workers=workers,
    )
    p_all, j_all, g_all = [], [], []
    iterator = progress(loader) if progress is not None else loader
    for batch in iterator:
        if "has_mask" in batch and not bool(batch["has_mask"].all()):
            ids = sorted({int(g) for g, ok in zip(batch["group"], batch["has_mask"], strict=True) if not ok})
            bad = [group_names[i] if group_names is not None and i < len(group_names) else i for i in ids]
            raise DataError(
                f"P and J need ground-truth masks, and the groups {bad} have images without one; evaluate "
                f"labelled groups only, or co-segment these images with 'cosegkit segment'"
            )
        images = batch["images"].to(device)
        valid = batch["valid"].to(device)
        score = batch.get("score", batch["valid"]).to(device) & valid
        given = {"common_class": batch["group"].to(device)} if class_oracle else {}
        probs = mask_probs(net(images, valid, **given))
        masks = batch["masks"].to(device)
        p, j = precision_jaccard(probs, masks, preset=preset, size=tuple(masks.shape[-2:]), valid=score)
        keep = ~torch.isnan(p)
        groups = batch["group"].to(device)[:, None].expand_as(p)
        p_all.append(p[keep].double())
        j_all.append(j[keep].double())
        g_all.append(groups[keep])
    p = torch.cat(p_all) if p_all else torch.empty(0, dtype=torch.float64, device=device)
    j = torch.cat(j_all) if j_all else torch.empty(0, dtype=torch.float64, device=device)
    g = torch.cat(g_all) if g_all else torch.empty(0, dtype=torch.long, device=device)
    if dist is not None and dist.world > 1:
        p, j, g = all_gather_cat(p), all_gather_cat(j), all_gather_cat(g)
    per_group: dict[str, dict[str, float]] = {}
    for gid in torch.unique(g).tolist():
        sel = g == gid
        name = group_names[gid] if group_names is not None and gid < len(group_names) else str(gid)
        per_group[name] = {"P": float(p[sel].mean()), "J": float(j[sel].mean()), "images": int(sel.sum())}
    if p.numel() == 0:
        return EvalResult(math.nan, math.nan, 0, per_group, preset)
    return EvalResult(float(reduce_scores(p)), float(reduce_scores(j)), int(p.numel()), per_group, preset)
