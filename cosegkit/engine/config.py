"""What a training run is: one flat, JSON-serialisable config, and the builders it drives.

:class:`TrainConfig` holds every setting of ``cosegkit train``; the run folder keeps it as
``config.json`` (resolved: every default written out), and ``--resume`` rebuilds the same run
from it. The builders turn a config into the model, the training sets and the evaluation sets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cosegkit.data.readers import READERS, get_reader
from cosegkit.data.sampling import Augmentation, EvalSets, TrainSets
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

__all__ = [
    "DATASETS",
    "SyntheticTrainSets",
    "TrainConfig",
    "build_eval_sets",
    "build_model",
    "build_train_sets",
    "steps_for_epochs",
]

DATASETS: tuple[str, ...] = ("synthetic", *READERS)
"""Dataset names ``cosegkit train`` accepts: the synthetic world and every reader."""


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``cosegkit train --help`` for each one's flag).

    Data: ``dataset`` is ``"synthetic"`` or a reader name (``"pascal_voc"``, ``"coco"``,
    ``"icoseg"``, ``"msrc"``, ``"internet"``, ``"processed"``, ``"folder"``) with ``root`` its
    folder (for COCO, the instances json; images beside it in ``coco_images``). ``classes``
    keeps only those groups for training; ``eval_classes`` names held-out groups evaluated at
    the end of the run. ``world_*`` describe the synthetic world.

    Model: an smp ``encoder`` with ``encoder_weights`` (tag, file or ``None``), an open_clip
    ``clip_model`` with ``clip_pretrained`` (tag, file or ``None``), the module switches and
    ``top_k``. Optimisation: ``steps`` of ``batch_size`` sets of ``set_size`` images, AdamW
    with ``lr`` (``encoder_lr`` for the encoder, when set) and a cosine schedule after
    ``warmup`` steps, loss weights ``lambda1`` and ``lambda2``. The seed fixes the initialisation (a random CLIP included) and the data.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.engine import TrainConfig
        >>> config = TrainConfig(steps=200, world_classes=4, image_size=64, set_size=3)
        >>> config.dataset, config.encoder, config.clip_model, config.batch_size, config.world_objects
        ('synthetic', 'resnet50', 'ViT-B-16', 2, (2, 3))
        >>> TrainConfig.from_dict(config.to_dict()) == config
        True
        >>> path = Path(tempfile.mkdtemp()) / "config.json"
        >>> config.save(path)
        >>> TrainConfig.load(path).steps
        200
        >>> synthetic = config.world().sample_set(config.set_size, seed=0)
        >>> synthetic.images.shape, synthetic.masks.shape
        (torch.Size([3, 3, 64, 64]), torch.Size([3, 1, 64, 64]))

        Settings are checked when the config is made:

        >>> TrainConfig(steps=0)
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: steps must be a positive integer, got 0
    """

    # data
    dataset: str = "synthetic"
    root: str | None = None
    coco_images: str | None = None
    classes: list[str] | None = None
    eval_classes: list[str] | None = None
    world_classes: int = 16
    world_seed: int = 0
    world_objects: tuple[int, int] = (2, 3)
    image_size: int = 224
    set_size: int = 5
    batch_size: int = 2
    augment: bool = True
    workers: int = 0
    # model
    encoder: str = "resnet50"
    encoder_weights: str | None = "imagenet"
    encoder_depth: int = 5
    decoder_channels: list[int] | None = None
    clip_model: str = "ViT-B-16"
    clip_pretrained: str | None = "openai"
    use_correspondence: bool = True
    use_interaction: bool = True
    use_regularization: bool = True
    top_k: int = 5
    heads: int = 8
    variant: str = "default"
    residual: bool | None = None
    correspondence_residual: bool | None = None
    unit_scale: bool | None = None
    class_pool: str | None = None
    class_prior: float | None = None
    # optimisation
    steps: int = 1000
    lr: float = 1e-4
    encoder_lr: float | None = None
    weight_decay: float = 1e-4
    warmup: int = 0
    lambda1: float = 1.0
    lambda2: float = 1.0
    seed: int = 0
    # run
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    eval_set_size: int | None = 5
    eval_preset: str = "ssnm"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise KeyError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.dataset != "synthetic" and not self.root:
            raise CosegValueError(f"dataset {self.dataset!r} needs its folder: pass root (--root PATH)")
        for name in ("steps", "set_size", "batch_size", "image_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CosegValueError(f"{name} must be a positive integer, got {value!r}")
        if self.lr <= 0 or (self.encoder_lr is not None and self.encoder_lr < 0):
            raise CosegValueError(f"learning rates must be positive, got lr={self.lr}, encoder_lr={self.encoder_lr}")
        self.world_objects = tuple(self.world_objects)  # type: ignore[assignment]
        from cosegkit.models.lcco import get_variant

        get_variant(self.variant)  # an unknown name raises KeyError listing the valid ones

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON data."""
        data = dataclasses.asdict(self)
        data["world_objects"] = list(self.world_objects)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CosegValueError(f"unknown config keys {unknown}; valid keys are {sorted(names)}")
        if "variant" not in data:  # written before the variants existed
            from cosegkit.models.lcco import LEGACY_SETTINGS

            data = {**LEGACY_SETTINGS, **data}
        return cls(**data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a ``config.json`` written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CosegValueError(f"could not read the run config {str(path)!r}: {err}") from err
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def world(self) -> SyntheticWorld:
        """The synthetic world of this config."""
        return SyntheticWorld(
            num_classes=self.world_classes,
            image_size=self.image_size,
            objects_per_image=self.world_objects,
            seed=self.world_seed,
        )

    def vocabulary(self) -> tuple[list[str] | None, list[str] | None]:
        """The CLIP prompt vocabulary and templates: the world's classes, or the defaults."""
        if self.dataset == "synthetic":
            from cosegkit.clip.pretrain import SYNTHETIC_TEMPLATES

            return self.world().class_names, list(SYNTHETIC_TEMPLATES)
        return None, None


class SyntheticTrainSets(Dataset):
    """Items of the synthetic world in the layout of :class:`~cosegkit.data.TrainSets`.

    Item ``i`` is ``world.sample_set(set_size, seed=(seed, i))`` with ``valid`` all True and
    its target class under ``group``.
    """

    def __init__(self, world: SyntheticWorld, set_size: int, length: int, seed: int = 0) -> None:
        self.world, self.set_size, self.length, self.seed = world, set_size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"item {index} out of range for {self.length} sets")
        s = self.world.sample_set(self.set_size, seed=(self.seed, index))
        n = len(s)
        return {
            "images": s.images,
            "masks": s.masks,
            "valid": torch.ones(n, dtype=torch.bool),
            "score": torch.ones(n, dtype=torch.bool),
            "group": torch.tensor(s.target),
            "indices": torch.arange(n),
        }


def _select(groups: Sequence[Group], names: Sequence[str] | None, what: str) -> list[Group]:
    if not names:
        return list(groups)
    by_name = {g.name: g for g in groups}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"{what} {missing} are not groups of this dataset; its groups are {sorted(by_name)}")
    return [by_name[n] for n in names]


def steps_for_epochs(config: TrainConfig, epochs: float) -> int:
    """Optimizer steps that show the training groups' images about ``epochs`` times.

    One epoch is ``ceil(images / (set_size * batch_size))`` steps, over the images of the
    groups that ``config.classes`` selects. The synthetic world has no epochs.
    """
    if config.dataset == "synthetic":
        raise CosegValueError("the synthetic world is endless: give --steps, not --epochs")
    if epochs <= 0:
        raise CosegValueError(f"epochs must be positive, got {epochs}")
    images = sum(len(g) for g in _select(_read_groups(config), config.classes, "training classes"))
    return max(1, math.ceil(epochs * images / (config.set_size * config.batch_size)))


def _read_groups(config: TrainConfig) -> list[Group]:
    reader = get_reader(config.dataset)
    if config.dataset == "coco":
        if not config.coco_images:
            raise CosegValueError("dataset 'coco' needs the image folder too: pass coco_images (--coco-images PATH)")
        return reader(config.root, config.coco_images, ssnm_filter=bool(config.extra.get("ssnm_filter", False)))
    return reader(config.root)


def build_train_sets(config: TrainConfig, length: int) -> Dataset:
    """The training dataset of ``length`` items: synthetic sets, or :class:`~cosegkit.data.TrainSets` of a reader's groups.

    Example:
        >>> import torch
        >>> from cosegkit.engine import TrainConfig, build_train_sets
        >>> config = TrainConfig(world_classes=4, image_size=32, set_size=3)
        >>> sets = build_train_sets(config, length=8)
        >>> len(sets)
        8
        >>> item = sets[0]
        >>> sorted(item)
        ['group', 'images', 'indices', 'masks', 'score', 'valid']
        >>> item["images"].shape, item["masks"].shape, item["valid"].shape, item["group"].shape
        (torch.Size([3, 3, 32, 32]), torch.Size([3, 1, 32, 32]), torch.Size([3]), torch.Size([]))
        >>> item["images"].dtype, item["valid"].dtype, item["valid"].all().item()
        (torch.float32, torch.bool, True)

        An item depends on its index and the seed only, so a resumed run sees the same data:

        >>> torch.equal(build_train_sets(config, length=8)[5]["images"], sets[5]["images"])
        True
    """
    if config.dataset == "synthetic":
        return SyntheticTrainSets(config.world(), config.set_size, length, seed=config.seed)
    groups = _select(_read_groups(config), config.classes, "training classes")
    return TrainSets(
        groups,
        config.set_size,
        config.image_size,
        length=length,
        augment=Augmentation() if config.augment else None,
        seed=config.seed,
    )


def build_eval_sets(config: TrainConfig, classes: Sequence[str] | None = None, *, sets: int | None = None) -> Dataset:
    """Held-out evaluation sets: synthetic sets drawn with seed ``config.extra["eval_seed"]``
    (default ``config.seed + 1``; ``sets`` of them, default ``config.extra["eval_sets"]`` or 40),
    or :class:`~cosegkit.data.EvalSets` of the named groups.

    Runs that differ only in their seed score on different synthetic sets unless they share
    an ``eval_seed``; ``examples/ablation.py`` gives every seed the demo's held-out sets.

    Example:
        >>> import torch
        >>> from cosegkit.engine import TrainConfig, build_eval_sets, build_train_sets
        >>> config = TrainConfig(world_classes=4, image_size=32, set_size=3, eval_set_size=4)
        >>> len(build_eval_sets(config)), len(build_eval_sets(config, sets=6))
        (40, 6)
        >>> item = build_eval_sets(config, sets=6)[0]
        >>> item["images"].shape, item["masks"].shape, item["valid"].shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 1, 32, 32]), torch.Size([4]))
        >>> torch.equal(item["images"][:3], build_train_sets(config, length=6)[0]["images"])  # held out: other sets
        False
        >>> other_seed = TrainConfig(world_classes=4, image_size=32, set_size=3, eval_set_size=4, seed=5)
        >>> torch.equal(build_eval_sets(other_seed, sets=6)[0]["images"], item["images"])
        False
        >>> other_seed.extra["eval_seed"] = config.seed + 1  # score on the same held-out sets
        >>> torch.equal(build_eval_sets(other_seed, sets=6)[0]["images"], item["images"])
        True
    """
    if config.dataset == "synthetic":
        sets = sets or int(config.extra.get("eval_sets", 40))
        seed = int(config.extra.get("eval_seed", config.seed + 1))
        return SyntheticTrainSets(config.world(), config.eval_set_size or config.set_size, sets, seed=seed)
    groups = _select(_read_groups(config), classes, "evaluation classes")
    return EvalSets(groups, config.eval_set_size, config.image_size)


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The LCCo of ``config``, initialised from ``config.seed`` (so a resumed run rebuilds it).

    Example:
        A tiny random model (no weights are downloaded), fine for smoke tests:

        >>> import torch
        >>> from cosegkit.engine import TrainConfig, build_model
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=2, batch_size=1, heads=2, top_k=1,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ... )
        >>> model = build_model(config).eval()
        >>> type(model).__name__
        'LCCo'
        >>> images = torch.rand(1, config.set_size, 3, config.image_size, config.image_size)
        >>> with torch.no_grad():
        ...     out = model(images)
        >>> images.shape, out.masks.shape, out.class_probs.shape
        (torch.Size([1, 2, 3, 32, 32]), torch.Size([1, 2, 1, 32, 32]), torch.Size([1, 4]))

        The same config builds the same weights:

        >>> a, b = build_model(config).state_dict(), model.state_dict()
        >>> all(torch.equal(a[name], b[name]) for name in b)
        True
    """
    from cosegkit.clip.pretrain import SYNTHETIC_CLIP, register_synthetic_clip
    from cosegkit.models.lcco import LCCo
    from cosegkit.testing import TINY_CLIP_CONFIGS, register_tiny_clips

    if config.clip_model == SYNTHETIC_CLIP:
        register_synthetic_clip()
    elif config.clip_model in TINY_CLIP_CONFIGS:
        register_tiny_clips()
    classnames, templates = config.vocabulary()
    torch.manual_seed(config.seed)
    return LCCo(
        encoder_name=config.encoder,
        encoder_weights=config.encoder_weights,
        encoder_depth=config.encoder_depth,
        decoder_channels=config.decoder_channels,
        clip_model=config.clip_model,
        clip_pretrained=config.clip_pretrained,
        classnames=classnames,
        templates=templates,
        top_k=config.top_k,
        heads=config.heads,
        clip_heads=config.heads,
        use_correspondence=config.use_correspondence,
        use_interaction=config.use_interaction,
        use_regularization=config.use_regularization,
        variant=config.variant,
        residual=config.residual,
        correspondence_residual=config.correspondence_residual,
        unit_scale=config.unit_scale,
        class_pool=config.class_pool,
        class_prior=config.class_prior,
    )
