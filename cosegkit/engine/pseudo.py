r"""Training without masks: zero-shot pseudo masks, cached in the run folder, and their confidence.

With ``TrainConfig(pseudo_masks="zero-shot")`` (``cosegkit train --pseudo-masks zero-shot``)
the training groups need no masks. Before the first step, a
:class:`~cosegkit.zeroshot.ZeroShotCoseg` built on the run's own CLIP (the model's
vocabulary; CLIP-ES's prompts unless the config names others) segments every training image
once, at the training image size:

1. the group's common class is the argmax of :math:`\sigma` summed over *all* the group's
   images (:func:`~cosegkit.zeroshot.segment_group`, in chunks);
2. every image's map :math:`p \in [0, 1]` is the refined CAM of that class.

The maps are cached in the run folder, one file per group, and ``--resume`` reuses them::

    <run>/pseudo_masks/<key>/
        key.json                  what the key covers (CLIP, prompts, zero-shot settings, image size)
        classes.json              the class chosen for each group, with its sigma and the runners-up
        <sha256(group)[:16]>.safetensors   "probs": (n, S, S) uint8 round(255 p), "scores": (P,);
                                  metadata: the key, the group, its image files, the class

The key is a SHA-256 of ``key.json``'s content: the CLIP architecture, its weights tag or
file *and a digest of the loaded weights*, the class names, templates, synonyms and
background words, the zero-shot settings and the image size. Any change gives another key,
so the maps are computed afresh; a group file whose image list differs from the group's is
recomputed too. The thresholds ``pseudo_low`` and ``pseudo_high`` are not part of the key:
they are applied when a map is loaded, so changing them reuses the cache.

Training uses CLIP-ES's confidence-guided labels: a pixel is object where
:math:`p \ge` ``pseudo_high``, background where :math:`p \le` ``pseudo_low``, and ignored in
between (weight 0 in the IoU losses, see :func:`~cosegkit.losses.iou_loss`). Eq. (12)'s
class targets come from the binary object mask, as the model computes them from masks. The
loader returns the label and the weight as the two channels of the item's mask, so flips and
scale-crops move both exactly as they move a ground-truth mask; :class:`PseudoTrainSets` then
splits them into ``masks`` and ``weights``.

No ground-truth mask is read for training: the training groups are read without masks
(:func:`~cosegkit.data.read_folder` with ``masks=False``; the other readers' groups are
stripped of theirs), and a folder's ``masks/`` is ignored.

A generated world (dataset ``"synthetic"`` or ``"composite"``, :data:`~cosegkit.engine.config.GENERATED_DATASETS`)
draws its sets rather than reading them, so a run on its pseudo masks trains on a fixed pool
(:func:`prepare_pseudo_pool`): set ``i`` is ``world.sample_set(set_size, seed=(seed, i))``,
the set a run on the world's own masks trains on as item ``i``, for ``i <``
``TrainConfig.pseudo_pool`` (default: one set per training item). The zero-shot model sees
each set's images only and picks the set's class itself, from the world's class names; the
world's masks and target class are never read. The maps are cached in the run folder as
well, :data:`POOL_FILE_SETS` sets per file::

    <run>/pseudo_masks/<key>/
        key.json                  the file-based key's content plus the world's fingerprint, set size and seed
        classes.json              how often each class was chosen, and each set's class with its sigma
        sets_<first>.safetensors  "probs": (sets, N, S, S) uint8 round(255 p), "scores": (sets, P),
                                  "class_index": (sets,); metadata: the key, the first set and the count

Training item ``j`` is set ``j mod pool_size`` (:class:`PseudoWorldSets`), its images drawn
again and its labels the cached maps, thresholded as above.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cosegkit.data.types import DataError, Group
from cosegkit.engine._files import atomic_write
from cosegkit.errors import CosegValueError

__all__ = [
    "POOL_FILE_SETS",
    "PSEUDO_MASKS",
    "PseudoMaskLoader",
    "PseudoMaskStore",
    "PseudoPool",
    "PseudoTrainSets",
    "PseudoWorldSets",
    "build_zero_shot",
    "cache_key",
    "pool_key",
    "pool_size",
    "prepare_pseudo_masks",
    "prepare_pseudo_pool",
    "pseudo_targets",
    "strip_masks",
    "zero_shot_settings",
]

log = logging.getLogger(__name__)

PSEUDO_MASKS: tuple[str, ...] = ("zero-shot",)
"""The pseudo-mask sources ``TrainConfig.pseudo_masks`` accepts (besides ``None``)."""

CACHE_FORMAT = "cosegkit-pseudo-masks-v1"
CHUNK_SIZE = 16  # images per zero-shot forward pass; the maps do not depend on it

# Further ZeroShotCoseg settings a config may set under extra["zero_shot"].
_ZERO_SHOT_EXTRA = (
    "synonyms",
    "attention_blocks",
    "box_threshold",
    "refine",
    "score",
    "image_size",
    "cam_scaling",
    "pos_interpolation",
    "box_precision",
)


def pseudo_targets(
    probs: torch.Tensor, low: float, high: float, *, rule: str = "fixed", margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-ES's confidence-guided labels of a map ``probs`` ``(h, w)`` in [0, 1]: ``(target, weight)``.

    ``rule="fixed"``: ``target`` is 1 where ``probs >= high``; ``weight`` is 1 where the label
    is confident (``probs >= high`` or ``probs <= low``) and 0 in between.
    ``rule="adaptive"``: the map's own threshold ``t`` (the ``ssnm`` preset's, as P and J
    binarise a map, :func:`~cosegkit.metrics.thresholds`) replaces the fixed ones: object
    where ``probs >= t + margin``, background where ``probs <= t - margin``, ignored in
    between (``margin=0``: nothing ignored; ``low`` and ``high`` are not used).
    Both outputs are float, shaped like ``probs``.

    Example:
        >>> import torch
        >>> from cosegkit.engine.pseudo import pseudo_targets
        >>> target, weight = pseudo_targets(torch.tensor([0.1, 0.25, 0.4, 0.55, 0.9]), low=0.25, high=0.55)
        >>> target.tolist(), weight.tolist()
        ([0.0, 0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0, 1.0])
        >>> m = torch.tensor([[0.0, 0.1], [0.5, 1.0]])  # ssnm's threshold of this map: 2 x its mean, 0.8
        >>> [t.tolist() for t in pseudo_targets(m, 0.25, 0.55, rule="adaptive")]
        [[[0.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]
        >>> [t.tolist() for t in pseudo_targets(m, 0.25, 0.55, rule="adaptive", margin=0.35)]
        [[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]
    """
    if rule == "adaptive":
        from cosegkit.metrics import thresholds

        t = thresholds(probs.float(), "ssnm").reshape(())
        fg, bg = probs >= t + margin, probs <= t - margin
        if margin == 0:
            bg = ~fg
    elif rule == "fixed":
        fg, bg = probs >= high, probs <= low
    else:
        raise CosegValueError(f"unknown pseudo-mask rule {rule!r}; use 'fixed' or 'adaptive'")
    return fg.float(), (fg | bg).float()


def strip_masks(group: Group) -> Group:
    """The group without anything that leads to a ground-truth mask (files, COCO polygons, MSRC colours).

    Example:
        >>> from cosegkit.data import Group
        >>> from cosegkit.engine.pseudo import strip_masks
        >>> group = Group("cats", ("a.jpg",), ("a.png",), meta={"mask_colour": (64, 0, 0)})
        >>> bare = strip_masks(group)
        >>> bare.masks, bare.meta, bare.images
        (None, {}, ('a.jpg',))
    """
    meta: dict[str, Any] = {}
    if "segmentations" in group.meta:  # COCO images load as stored, without EXIF transposition
        meta["exif_transpose"] = False
    return dataclasses.replace(group, masks=None, meta=meta)


def _load_image(group: Group, index: int) -> torch.Tensor:
    from cosegkit.data.io import load_image

    return load_image(group.images[index], exif_transpose=bool(group.meta.get("exif_transpose", True)))


def zero_shot_settings(config) -> dict[str, Any]:
    """The :class:`~cosegkit.zeroshot.ZeroShotCoseg` arguments of a config (besides its CLIP).

    ``templates``: ``config.pseudo_templates``, else the templates of the config's own
    vocabulary when it has one (the synthetic CLIP's ``"a {}"``), else CLIP-ES's
    ``"a clean origami {}."``. ``background``: ``config.pseudo_background``, else CLIP-ES's 25
    words. ``config.extra["zero_shot"]`` may set ``synonyms``, ``attention_blocks``,
    ``box_threshold``, ``refine``, ``score``, ``cam_scaling``, ``pos_interpolation``,
    ``box_precision`` and ``image_size`` (the CLIP's input side; default ``None``: the training image size, rounded
    up to the patch). The class names are always the CLIP's
    vocabulary, the model's.

    Example:
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import zero_shot_settings
        >>> config = TrainConfig(dataset="folder", root="photos", pseudo_masks="zero-shot")
        >>> settings = zero_shot_settings(config)
        >>> settings["templates"], len(settings["background"]), settings["box_threshold"]
        (['a clean origami {}.'], 25, 0.4)
        >>> config.extra["zero_shot"] = {"box_threshold": 0.5}
        >>> zero_shot_settings(config)["box_threshold"]
        0.5
    """
    from cosegkit.zeroshot.prompts import BACKGROUND_WORDS, CLIP_ES_TEMPLATES, DEFAULT_SYNONYMS

    _, own_templates = config.vocabulary()
    templates = config.pseudo_templates or own_templates or list(CLIP_ES_TEMPLATES)
    settings: dict[str, Any] = {
        "templates": list(templates),
        "background": list(config.pseudo_background or BACKGROUND_WORDS),
        "synonyms": {k: list(v) for k, v in DEFAULT_SYNONYMS.items()},
        "attention_blocks": 8,
        "box_threshold": 0.4,
        "refine": True,
        "score": "patch_mean",
        "cam_scaling": "twice",
        "pos_interpolation": "bilinear",
        "box_precision": "uint8",
        "image_size": None,
    }
    extra = dict(config.extra.get("zero_shot") or {})
    unknown = sorted(set(extra) - set(_ZERO_SHOT_EXTRA))
    if unknown:
        raise CosegValueError(f"unknown extra['zero_shot'] settings {unknown}; valid: {list(_ZERO_SHOT_EXTRA)}")
    settings.update(extra)
    if settings["synonyms"] is not None:
        settings["synonyms"] = {k: list(v) for k, v in dict(settings["synonyms"]).items()}
    return settings


def build_zero_shot(config, clip, *, classnames: Sequence[str] | None = None):
    """The :class:`~cosegkit.zeroshot.ZeroShotCoseg` of a config on a :class:`~cosegkit.clip.FrozenClip`.

    The foreground is ``classnames`` (a generated world's class names), else the CLIP's own
    vocabulary; everything else is :func:`zero_shot_settings`.
    Unless ``extra["zero_shot"]["image_size"]`` says otherwise, it keeps the input size (the
    training image size, rounded up to the patch).

    Example:
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import build_zero_shot
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> config = TrainConfig(dataset="folder", root="photos", pseudo_masks="zero-shot",
        ...                      pseudo_background=["grass", "sky"])
        >>> zs = build_zero_shot(config, clip)
        >>> zs.classnames, zs.background, zs.templates
        (('cat', 'dog'), ('grass', 'sky'), ('a clean origami {}.',))
    """
    from cosegkit.zeroshot import ZeroShotCoseg

    return ZeroShotCoseg(
        clip, classnames=None if classnames is None else list(classnames), **zero_shot_settings(config)
    )


def cache_key(config, zs) -> tuple[str, dict[str, Any]]:
    """The cache key of a config's pseudo masks and the description it hashes.

    The description holds the CLIP (architecture, weights tag or file, SHA-256 of the loaded
    weights), the prompts (class names, templates, synonyms, background words as the
    zero-shot model uses them), the zero-shot settings (the CLIP input size among them) and
    the training image size; the key is the
    first 16 hex digits of the SHA-256 of its JSON.

    Example:
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import build_zero_shot, cache_key
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> config = TrainConfig(dataset="folder", root="photos", image_size=32, pseudo_masks="zero-shot",
        ...                      clip_model="coseg-test-tiny", clip_pretrained=None)
        >>> key, description = cache_key(config, build_zero_shot(config, clip))
        >>> len(key), sorted(description)
        (16, ['clip', 'format', 'image_size', 'method', 'prompts', 'zero_shot'])
        >>> config.image_size = 64  # another image size: another key
        >>> cache_key(config, build_zero_shot(config, clip))[0] != key
        True
    """
    description = {
        "format": CACHE_FORMAT,
        "method": config.pseudo_masks,
        "clip": {
            "model": zs.clip.source.get("model_name") or config.clip_model,  # the architecture built
            "pretrained": config.clip_pretrained,
            "weights_sha256": zs.clip.weights_sha256(),
        },
        "prompts": {
            "classnames": list(zs.classnames),
            "templates": list(zs.templates),
            "synonyms": {k: list(v) for k, v in sorted(zs.synonyms.items())},
            "background": list(zs.background),
        },
        "zero_shot": {
            "attention_blocks": zs.attention_blocks,
            "box_threshold": zs.box_threshold,
            "refine": zs.refine,
            "score": zs.score,
            "cam_scaling": zs.cam_scaling,
            "pos_interpolation": zs.pos_interpolation,
            "box_precision": zs.box_precision,
            "tower": zs.tower,
            "input_size": zs.image_size if isinstance(zs.image_size, (int, type(None))) else list(zs.image_size),
        },
        "image_size": int(config.image_size),
    }
    blob = json.dumps(description, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], description


def _group_file(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16] + ".safetensors"


def _read_meta(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # missing, truncated or foreign: recompute
        return None


def _images_of(group: Group) -> list[str]:
    return [str(p) for p in group.images]


def _is_current(path: Path, key: str, group: Group) -> bool:
    meta = _read_meta(path)
    if meta is None:
        return False
    try:
        return (
            meta.get("format") == CACHE_FORMAT
            and meta.get("key") == key
            and meta.get("group") == group.name
            and json.loads(meta.get("images", "null")) == _images_of(group)
        )
    except json.JSONDecodeError:
        return False


@dataclass
class PseudoMaskStore:
    """The cached pseudo masks of a run: one file per group under ``folder``.

    Attributes:
        folder: ``<run>/pseudo_masks/<key>``.
        key: the cache key (:func:`cache_key`).
        files: group name -> its ``.safetensors`` file.
        classes: group name -> ``{"class": name, "index": i, "images": n, "top": [[name, sigma], ...]}``.
        image_size: the side ``S`` of the stored maps.
        computed: the groups computed by this process (the others came from the cache).

    Example:
        A store is made by :func:`prepare_pseudo_masks` (whose example makes this one);
        :meth:`probs` reads one map:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.engine.pseudo import PseudoMaskStore
        >>> store = PseudoMaskStore(Path(tempfile.mkdtemp()), "0123456789abcdef", {}, {}, 32, [])
        >>> store.image_size, store.files
        (32, {})
    """

    folder: Path
    key: str
    files: dict[str, Path]
    classes: dict[str, dict[str, Any]]
    image_size: int
    computed: list[str]

    def probs(self, group: str, index: int) -> torch.Tensor:
        """The map of image ``index`` of ``group``: ``(S, S)`` float32 in [0, 1]."""
        from safetensors import safe_open

        with safe_open(str(self.files[group]), framework="pt") as f:
            q = f.get_slice("probs")[index : index + 1]
        return q[0].float() / 255.0


def _compute_group(zs, group: Group, image_size: int, device, bar) -> tuple[torch.Tensor, Any]:
    from cosegkit.data.sampling import _resize_pair
    from cosegkit.zeroshot.groups import segment_group

    class Images(Sequence):
        def __len__(self) -> int:
            return len(group)

        def __getitem__(self, index):  # type: ignore[override]
            return _resize_pair(_load_image(group, index), None, image_size)[0]

    result = segment_group(
        zs,
        Images(),
        chunk_size=CHUNK_SIZE,
        device=device,
        dtype=torch.uint8,
        progress=(lambda k: bar.update(k)) if bar is not None else None,
    )
    return result.probs[:, 0].contiguous(), result


def _top(scores: torch.Tensor, names: Sequence[str], k: int = 3) -> list[list[Any]]:
    values, order = scores.sort(descending=True)
    return [[names[int(i)], round(float(v), 4)] for v, i in zip(values[:k], order[:k], strict=True)]


def prepare_pseudo_masks(
    config,
    groups: Sequence[Group],
    clip,
    cache_root: str | Path,
    *,
    device: torch.device | str = "cpu",
    dist=None,
    progress: bool = False,
) -> PseudoMaskStore:
    """Compute (or find in the cache) the zero-shot pseudo masks of ``groups``.

    Every group whose file under ``cache_root/<key>/`` is missing, from another key, or
    lists other images is computed (:func:`~cosegkit.zeroshot.segment_group` at
    ``config.image_size``) and written atomically; the others are reused. Under several
    processes each computes its share of the groups (group ``i`` on rank ``i % world``) and
    waits for the others' files. ``classes.json`` records the class of each group.

    Args:
        config: the run's :class:`~cosegkit.engine.TrainConfig` (``pseudo_masks`` set).
        groups: the training groups (their masks, if any, are never read).
        clip: the run's :class:`~cosegkit.clip.FrozenClip` (its vocabulary is the zero-shot one).
        cache_root: ``<run>/pseudo_masks``.
        device: where the zero-shot model runs.
        dist: the :class:`~cosegkit.engine.distributed.DistInfo` of the process group, or None.
        progress: show a progress bar over the images to compute.

    Returns:
        A :class:`PseudoMaskStore`.

    Example:
        Three images of one group and a tiny random CLIP; the second call finds the cache:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.data import Group
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import prepare_pseudo_masks
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> folder = Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     Image.new("RGB", (40, 30), (40 * i, 90, 200)).save(folder / f"{i}.png")
        >>> group = Group("blue things", tuple(sorted(folder.glob("*.png"))), None)
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> config = TrainConfig(dataset="folder", root=str(folder), image_size=32, pseudo_masks="zero-shot",
        ...                      clip_model="coseg-test-tiny", clip_pretrained=None, pseudo_background=["sky"])
        >>> store = prepare_pseudo_masks(config, [group], clip, folder / "pseudo_masks")
        >>> store.probs("blue things", 2).shape, store.probs("blue things", 2).dtype
        (torch.Size([32, 32]), torch.float32)
        >>> store.classes["blue things"]["class"] in ("cat", "dog"), store.computed
        (True, ['blue things'])
        >>> sorted(p.name for p in store.folder.iterdir() if p.suffix == ".json")
        ['classes.json', 'key.json']
        >>> prepare_pseudo_masks(config, [group], clip, folder / "pseudo_masks").computed  # cached
        []
    """
    from safetensors.torch import save_file

    if config.pseudo_masks not in PSEUDO_MASKS:
        raise CosegValueError(f"pseudo_masks must be one of {list(PSEUDO_MASKS)}, got {config.pseudo_masks!r}")
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    zs = build_zero_shot(config, clip).to(device)
    key, description = cache_key(config, zs)
    folder = Path(cache_root) / key
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (folder / "key.json").is_file():
        atomic_write(folder / "key.json", lambda tmp: Path(tmp).write_text(json.dumps(description, indent=2) + "\n"))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise DataError(f"two training groups share a name: {sorted({n for n in names if names.count(n) > 1})}")
    files = {g.name: folder / _group_file(g.name) for g in groups}
    mine = [g for i, g in enumerate(groups) if i % world == rank and not _is_current(files[g.name], key, g)]
    computed = []
    if mine:
        total = sum(len(g) for g in mine)
        log.info(
            "pseudo masks: zero-shot maps of %d image(s) in %d group(s) at %d px -> %s",
            total,
            len(mine),
            config.image_size,
            folder,
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="pseudo masks", unit="image", dynamic_ncols=True)
        try:
            with torch.random.fork_rng(devices=[]):  # leave the training's random streams untouched
                for group in mine:
                    probs, result = _compute_group(zs, group, config.image_size, device, bar)
                    meta = {
                        "format": CACHE_FORMAT,
                        "key": key,
                        "group": group.name,
                        "images": json.dumps(_images_of(group)),
                        "class": result.class_name,
                        "class_index": str(result.class_index),
                        "top": json.dumps(_top(result.class_scores, zs.classnames)),
                        "rerun": str(result.rerun),
                    }
                    tensors = {"probs": probs, "scores": result.class_scores.float().contiguous()}
                    atomic_write(files[group.name], lambda tmp, t=tensors, m=meta: save_file(t, tmp, metadata=m))
                    computed.append(group.name)
        finally:
            if bar is not None:
                bar.close()
    if world > 1:  # wait for the other processes' groups (files on a shared folder)
        waiting = [g for g in groups if not _is_current(files[g.name], key, g)]
        while waiting:
            time.sleep(1.0)
            waiting = [g for g in waiting if not _is_current(files[g.name], key, g)]
    classes: dict[str, dict[str, Any]] = {}
    for g in groups:
        meta = _read_meta(files[g.name]) or {}
        classes[g.name] = {
            "class": meta.get("class"),
            "index": int(meta.get("class_index", -1)),
            "images": len(g),
            "top": json.loads(meta.get("top", "[]")),
        }
    if rank == 0:
        atomic_write(folder / "classes.json", lambda tmp: Path(tmp).write_text(json.dumps(classes, indent=2) + "\n"))
        if world == 1 and len(computed) < len(groups):
            log.info("pseudo masks: reused the cached maps of %d group(s) in %s", len(groups) - len(computed), folder)
        for name, c in classes.items():
            log.info("pseudo masks: group %r -> class %r (%d images)", name, c["class"], c["images"])
    return PseudoMaskStore(folder, key, files, classes, int(config.image_size), computed)


class PseudoMaskLoader:
    """``(group, index) -> (image, label_and_weight)``: a training image and its pseudo label.

    The stored ``S x S`` map is resized (bilinear) to the image's own size and thresholded
    (:func:`pseudo_targets`); the label and its weight are the two channels of the returned
    mask ``(2, H, W)``, so that :class:`~cosegkit.data.TrainSets`'s augmentation moves both
    like a ground-truth mask. The image is loaded alone: no mask file is ever opened.

    Example:
        >>> import torch
        >>> from pathlib import Path
        >>> from types import SimpleNamespace
        >>> from cosegkit.engine.pseudo import PseudoMaskLoader
        >>> ramp = torch.linspace(0, 1, 8).expand(8, 8)  # a fake stored map, S = 8
        >>> store = SimpleNamespace(probs=lambda group, index: ramp)
        >>> loader = PseudoMaskLoader(store, low=0.25, high=0.55, image=lambda group, index: torch.rand(3, 16, 12))
        >>> image, mask = loader(SimpleNamespace(name="g"), 0)
        >>> image.shape, mask.shape, sorted(mask[0].unique().tolist()), sorted(mask[1].unique().tolist())
        (torch.Size([3, 16, 12]), torch.Size([2, 16, 12]), [0.0, 1.0], [0.0, 1.0])
    """

    def __init__(
        self, store: PseudoMaskStore, low: float, high: float, image=None, *, rule: str = "fixed", margin: float = 0.0
    ) -> None:
        self.store, self.low, self.high = store, float(low), float(high)
        self.rule, self.margin = rule, float(margin)
        self.image = image or _load_image

    def __call__(self, group: Group, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image(group, index)
        probs = self.store.probs(group.name, index)
        h, w = image.shape[-2:]
        if tuple(probs.shape) != (h, w):
            probs = F.interpolate(probs[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        target, weight = pseudo_targets(probs, self.low, self.high, rule=self.rule, margin=self.margin)
        return image, torch.stack([target, weight])


class PseudoTrainSets(Dataset):
    """Training sets on pseudo masks: a :class:`~cosegkit.data.TrainSets` whose loader is a
    :class:`PseudoMaskLoader`, its items' two-channel masks split into ``masks`` (the binary
    label) and ``weights`` (1 where the label is confident), each ``(N, 1, S, S)``.

    Padded images have weight 0. Everything else is the wrapped sets' (same items, same seed).

    Example:
        >>> import torch
        >>> from cosegkit.data import Group, TrainSets
        >>> from cosegkit.engine.pseudo import PseudoTrainSets
        >>> fake = lambda g, i: (torch.rand(3, 20, 20), torch.ones(2, 20, 20))  # label 1, weight 1
        >>> groups = [Group("g", ("a", "b"), None)]
        >>> plain = TrainSets(groups, set_size=3, image_size=16, length=2, loader=fake, require_masks=False)
        >>> sets = PseudoTrainSets(plain)
        >>> item = sets[0]
        >>> item["masks"].shape, item["weights"].shape, item["weights"][:, 0, 0, 0].tolist()  # the third is padding
        (torch.Size([3, 1, 16, 16]), torch.Size([3, 1, 16, 16]), [1.0, 1.0, 0.0])
    """

    def __init__(self, sets: Dataset) -> None:
        self.sets = sets

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.sets[index])
        both = item["masks"]
        if both.shape[1] != 2:
            raise DataError(f"pseudo-mask items need a label and a weight channel, got masks of {tuple(both.shape)}")
        item["masks"], item["weights"] = both[:, :1].contiguous(), both[:, 1:].contiguous()
        return item

    def unaugmented(self, group: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped sets' un-augmented image and its binary pseudo label (the weight dropped)."""
        image, both = self.sets.unaugmented(group, index)
        return image, both[:1].contiguous()

    def set_epoch(self, epoch: int) -> None:
        with contextlib.suppress(AttributeError):
            self.sets.set_epoch(epoch)


# ---------------------------------------------------------------------------------------------
# generated worlds: a fixed pool of sets, labelled once


POOL_FORMAT = "cosegkit-pseudo-pool-v1"
POOL_FILE_SETS = 64
"""The number of sets in each cache file of a generated world's pool (the unit of writing, resuming and sharing out)."""


def pool_size(config, processes: int = 1) -> int:
    """The number of generated sets a run on pseudo masks trains on.

    ``config.pseudo_pool`` when set; else one set per training item, ``steps x batch_size x
    processes``, so that no item repeats, as in a run on the world's own masks.

    Example:
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import pool_size
        >>> config = TrainConfig(steps=600, batch_size=4, pseudo_masks="zero-shot")
        >>> pool_size(config), pool_size(config, processes=2)
        (2400, 4800)
        >>> config.pseudo_pool = 500
        >>> pool_size(config)
        500
    """
    if config.pseudo_pool is not None:
        return int(config.pseudo_pool)
    return int(config.steps) * int(config.batch_size) * int(processes)


def pool_key(config, zs, world) -> tuple[str, dict[str, Any]]:
    """The cache key of a generated world's pseudo masks and the description it hashes.

    :func:`cache_key`'s description (CLIP, prompts, zero-shot settings, image size) plus what
    fixes the sets: the world's fingerprint, the set size and the data seed (set ``i`` is
    ``world.sample_set(set_size, seed=(seed, i))``). The pool's size is not in the key: set
    ``i`` is the same in a pool of any size, so a larger pool reuses the smaller one's sets.

    Example:
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import build_zero_shot, pool_key
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> config = TrainConfig(world_classes=4, image_size=32, set_size=3, pseudo_masks="zero-shot",
        ...                      clip_model="coseg-test-tiny", clip_pretrained=None)
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=config.world().class_names)
        >>> key, description = pool_key(config, build_zero_shot(config, clip), config.world())
        >>> len(key), description["sets"]["set_size"], description["sets"]["seed"]
        (16, 3, 0)
        >>> config.seed = 1  # other sets: another key
        >>> pool_key(config, build_zero_shot(config, clip), config.world())[0] != key
        True
    """
    _, description = cache_key(config, zs)
    description = {
        **description,
        "format": POOL_FORMAT,
        "sets": {
            "world_fingerprint": world.fingerprint(),
            "set_size": int(config.set_size),
            "seed": int(config.seed),
            "item": "world.sample_set(set_size, seed=(seed, i))",
        },
    }
    blob = json.dumps(description, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], description


@dataclass
class PseudoPool:
    """The cached pseudo masks of a generated world's pool of sets: ``size`` sets, files of
    :data:`POOL_FILE_SETS` under ``folder``.

    Set ``i`` is ``world.sample_set(set_size, seed=(seed, i))``; only its images were shown to
    the zero-shot model.

    Attributes:
        folder: ``<run>/pseudo_masks/<key>``.
        key: the cache key (:func:`pool_key`).
        world: the generated world.
        size: the number of sets.
        set_size: images per set ``N``.
        seed: the data seed.
        image_size: the side ``S`` of the stored maps.
        classes: per set, ``{"class": name, "index": i, "top": [[name, sigma], ...]}``: the
            zero-shot model's own choice.
        computed: the sets computed by this process (the others came from the cache).

    Example:
        A pool is made by :func:`prepare_pseudo_pool` (whose example makes one);
        :meth:`probs` reads the maps of one set.

        >>> from cosegkit.engine.pseudo import PseudoPool
        >>> [PseudoPool.file_name(i) for i in (0, 63, 64)]
        ['sets_00000000.safetensors', 'sets_00000000.safetensors', 'sets_00000064.safetensors']
    """

    folder: Path
    key: str
    world: Any
    size: int
    set_size: int
    seed: int
    image_size: int
    classes: list[dict[str, Any]]
    computed: list[int]

    @staticmethod
    def file_name(index: int) -> str:
        """The cache file that holds set ``index``."""
        return f"sets_{index - index % POOL_FILE_SETS:08d}.safetensors"

    def probs(self, index: int) -> torch.Tensor:
        """The maps of set ``index``: ``(N, S, S)`` float32 in [0, 1]."""
        from safetensors import safe_open

        if not 0 <= index < self.size:
            raise IndexError(f"set {index} out of range for a pool of {self.size}")
        row = index % POOL_FILE_SETS
        with safe_open(str(self.folder / self.file_name(index)), framework="pt") as f:
            q = f.get_slice("probs")[row : row + 1]
        return q[0].float() / 255.0


def _pool_files(size: int) -> list[tuple[int, int]]:
    """``(first, count)`` of each cache file of a pool of ``size`` sets."""
    return [(first, min(POOL_FILE_SETS, size - first)) for first in range(0, size, POOL_FILE_SETS)]


def _pool_file_current(path: Path, key: str, first: int, count: int) -> bool:
    meta = _read_meta(path)
    return (
        meta is not None
        and meta.get("format") == POOL_FORMAT
        and meta.get("key") == key
        and meta.get("first") == str(first)
        and meta.get("count") == str(count)
    )


def prepare_pseudo_pool(
    config,
    world,
    clip,
    cache_root: str | Path,
    *,
    size: int | None = None,
    device: torch.device | str = "cpu",
    dist=None,
    progress: bool = False,
) -> PseudoPool:
    """Compute (or find in the cache) the zero-shot pseudo masks of a generated world's pool of sets.

    Set ``i < size`` is ``world.sample_set(config.set_size, seed=(config.seed, i))``, as item
    ``i`` of a run on the world's own masks. The zero-shot model (:func:`build_zero_shot`'s
    settings on the run's CLIP, the world's class names as its vocabulary) sees the set's
    images only: the set's class is its own choice (the argmax of :math:`\\sigma` over the set,
    :func:`~cosegkit.zeroshot.segment_group`), and neither the world's masks nor its target
    class are read. Files of :data:`POOL_FILE_SETS` sets whose key or range differ are
    computed and written atomically; the others are reused. Under several processes each
    computes its share of the files (file ``j`` on rank ``j % world``) and waits for the
    others'. ``classes.json`` records each set's class.

    Args:
        config: the run's :class:`~cosegkit.engine.TrainConfig` (``pseudo_masks`` set).
        world: the generated world (``config.world()``): ``sample_set``, ``class_names`` and
            ``fingerprint``.
        clip: the run's :class:`~cosegkit.clip.FrozenClip`.
        cache_root: ``<run>/pseudo_masks``.
        size: the number of sets (default :func:`pool_size`).
        device: where the zero-shot model runs.
        dist: the :class:`~cosegkit.engine.distributed.DistInfo` of the process group, or None.
        progress: show a progress bar over the sets to compute.

    Returns:
        A :class:`PseudoPool`.

    Example:
        Five sets of a small synthetic world and a tiny random CLIP; the second call finds the
        cache:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.pseudo import prepare_pseudo_pool
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> config = TrainConfig(world_classes=4, image_size=32, set_size=3, pseudo_masks="zero-shot",
        ...                      pseudo_pool=5, clip_model="coseg-test-tiny", clip_pretrained=None)
        >>> world = config.world()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=world.class_names)
        >>> folder = Path(tempfile.mkdtemp()) / "pseudo_masks"
        >>> pool = prepare_pseudo_pool(config, world, clip, folder)
        >>> pool.size, pool.probs(4).shape, pool.computed
        (5, torch.Size([3, 32, 32]), [0, 1, 2, 3, 4])
        >>> pool.classes[4]["class"] in world.class_names
        True
        >>> prepare_pseudo_pool(config, world, clip, folder).computed  # cached
        []
    """
    from safetensors.torch import save_file

    from cosegkit.zeroshot.groups import segment_group

    if config.pseudo_masks not in PSEUDO_MASKS:
        raise CosegValueError(f"pseudo_masks must be one of {list(PSEUDO_MASKS)}, got {config.pseudo_masks!r}")
    size = pool_size(config, dist.world if dist is not None else 1) if size is None else int(size)
    if size < 1:
        raise CosegValueError(f"the pool needs at least one set, got size={size} (--pseudo-pool)")
    rank, processes = (dist.rank, dist.world) if dist is not None else (0, 1)
    zs = build_zero_shot(config, clip, classnames=world.class_names).to(device)
    key, description = pool_key(config, zs, world)
    folder = Path(cache_root) / key
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (folder / "key.json").is_file():
        atomic_write(folder / "key.json", lambda tmp: Path(tmp).write_text(json.dumps(description, indent=2) + "\n"))
    files = _pool_files(size)
    mine = [
        (first, count)
        for j, (first, count) in enumerate(files)
        if j % processes == rank and not _pool_file_current(folder / PseudoPool.file_name(first), key, first, count)
    ]
    computed: list[int] = []
    if mine:
        total = sum(count for _, count in mine)
        log.info(
            "pseudo masks: zero-shot maps of %d generated set(s) of %d image(s) at %d px -> %s",
            total,
            config.set_size,
            config.image_size,
            folder,
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="pseudo masks", unit="set", dynamic_ncols=True)
        try:
            with torch.random.fork_rng(devices=[]):  # leave the training's random streams untouched
                for first, count in mine:
                    probs, scores, chosen, tops = [], [], [], []
                    for i in range(first, first + count):
                        images = world.sample_set(config.set_size, seed=(config.seed, i)).images
                        result = segment_group(
                            zs, list(images), chunk_size=CHUNK_SIZE, device=device, dtype=torch.uint8
                        )
                        probs.append(result.probs[:, 0])
                        scores.append(result.class_scores.float())
                        chosen.append(result.class_index)
                        tops.append(_top(result.class_scores, zs.classnames))
                        if bar is not None:
                            bar.update(1)
                    tensors = {
                        "probs": torch.stack(probs).contiguous(),
                        "scores": torch.stack(scores).contiguous(),
                        "class_index": torch.tensor(chosen, dtype=torch.int64),
                    }
                    meta = {
                        "format": POOL_FORMAT,
                        "key": key,
                        "first": str(first),
                        "count": str(count),
                        "class_index": json.dumps(chosen),
                        "top": json.dumps(tops),
                    }
                    path = folder / PseudoPool.file_name(first)
                    atomic_write(path, lambda tmp, t=tensors, m=meta: save_file(t, tmp, metadata=m))
                    computed.extend(range(first, first + count))
        finally:
            if bar is not None:
                bar.close()
    if processes > 1:  # wait for the other processes' files (on a shared folder)
        waiting = [f for f in files if not _pool_file_current(folder / PseudoPool.file_name(f[0]), key, *f)]
        while waiting:
            time.sleep(1.0)
            waiting = [f for f in waiting if not _pool_file_current(folder / PseudoPool.file_name(f[0]), key, *f)]
    classes: list[dict[str, Any]] = []
    for first, _count in files:
        meta = _read_meta(folder / PseudoPool.file_name(first)) or {}
        chosen = json.loads(meta.get("class_index", "[]"))
        for index, top in zip(chosen, json.loads(meta.get("top", "[]")), strict=True):
            classes.append({"class": zs.classnames[index], "index": index, "top": top})
    if rank == 0:
        summary = {
            "sets": size,
            "set_size": int(config.set_size),
            "chosen": {name: sum(c["class"] == name for c in classes) for name in zs.classnames},
            "per_set": classes,
        }
        atomic_write(folder / "classes.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1) + "\n"))
        if len(computed) < size and processes == 1:
            log.info("pseudo masks: reused the cached maps of %d generated set(s) in %s", size - len(computed), folder)
    return PseudoPool(
        folder, key, world, size, int(config.set_size), int(config.seed), int(config.image_size), classes, computed
    )


class PseudoWorldSets(Dataset):
    """Training sets of a generated world on pseudo masks: item ``i`` is set ``i mod size`` of a
    :class:`PseudoPool`, its images generated again and its masks the pool's pseudo labels.

    An item holds ``images`` ``(N, 3, S, S)``, ``masks`` (the confident object pixels) and
    ``weights`` (1 where the label is confident, :func:`pseudo_targets`), each
    ``(N, 1, S, S)``; ``group`` is the set's index in the pool. The world's masks and target
    class are never read: they are not in the item.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> from cosegkit.engine.pseudo import PseudoWorldSets
        >>> world = SyntheticWorld(num_classes=6, image_size=32)
        >>> ramp = torch.linspace(0, 1, 32).expand(2, 32, 32)  # fake maps for sets of 2
        >>> pool = SimpleNamespace(world=world, size=3, set_size=2, seed=0, probs=lambda i: ramp)
        >>> sets = PseudoWorldSets(pool, length=7, low=0.25, high=0.55, rule="fixed")
        >>> item = sets[4]  # set 4 mod 3 = 1 of the pool
        >>> sorted(item), int(item["group"])
        (['group', 'images', 'indices', 'masks', 'score', 'valid', 'weights'], 1)
        >>> torch.equal(item["images"], world.sample_set(2, seed=(0, 1)).images)
        True
        >>> item["masks"].shape, item["masks"][0, 0, 0, -1].item(), item["weights"][0, 0, 0, 12].item()
        (torch.Size([2, 1, 32, 32]), 1.0, 0.0)
    """

    def __init__(
        self, pool: PseudoPool, length: int, low: float, high: float, *, rule: str = "fixed", margin: float = 0.0
    ) -> None:
        self.pool, self.length = pool, int(length)
        self.low, self.high, self.rule, self.margin = float(low), float(high), rule, float(margin)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} out of range for {self.length} sets")
        i = index % self.pool.size
        images = self.pool.world.sample_set(self.pool.set_size, seed=(self.pool.seed, i)).images
        n, _, h, w = images.shape
        probs = self.pool.probs(i)
        if tuple(probs.shape[-2:]) != (h, w):
            probs = F.interpolate(probs[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        labels = [pseudo_targets(p, self.low, self.high, rule=self.rule, margin=self.margin) for p in probs]
        return {
            "images": images,
            "masks": torch.stack([target for target, _ in labels])[:, None],
            "weights": torch.stack([weight for _, weight in labels])[:, None],
            "valid": torch.ones(n, dtype=torch.bool),
            "score": torch.ones(n, dtype=torch.bool),
            "group": torch.tensor(i),
            "indices": torch.arange(n),
        }
