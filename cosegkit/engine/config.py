"""What a training run is: one flat, JSON-serialisable config, and the builders it drives.

:class:`TrainConfig` holds every setting of ``cosegkit train``; the run folder keeps it as
``config.json`` (resolved: every default written out), and ``--resume`` rebuilds the same run
from it. The builders turn a config into the model, the training sets and the evaluation sets.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import inspect
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cosegkit import _names
from cosegkit.data.composite import CompositeWorld, split_photos
from cosegkit.data.readers import READERS, get_reader
from cosegkit.data.sampling import Augmentation, EvalSets, TrainSets
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.data.types import DataError, Group
from cosegkit.errors import CosegValueError

__all__ = [
    "AMP_DTYPES",
    "CLASS_ORACLE_DATASETS",
    "DATASETS",
    "GENERATED_DATASETS",
    "MODELS",
    "SyntheticTrainSets",
    "TrainConfig",
    "build_eval_sets",
    "build_model",
    "build_photo_eval_sets",
    "build_train_sets",
    "check_mask_sizes",
    "composite_groups",
    "labelled_eval_groups",
    "oracle_class_names",
    "steps_for_epochs",
    "train_groups",
    "training_class_names",
]

DATASETS: tuple[str, ...] = _names.DATASETS
"""Dataset names ``cosegkit train`` accepts: the synthetic world, the composite world and every reader."""

GENERATED_DATASETS: tuple[str, ...] = _names.GENERATED_DATASETS
"""The datasets whose training sets are generated, every set new and no epochs.

The synthetic world of shapes and the composite world of real object cut-outs
(:class:`~cosegkit.data.composite.CompositeWorld`).
"""

_WORLD_CACHE_SIZE = 6  # composite worlds kept in memory (a PASCAL world at 128 px is about 30 MB)
_WORLDS: collections.OrderedDict[str, CompositeWorld] = collections.OrderedDict()

LOGGERS: tuple[str, ...] = ("tensorboard",)
"""The loggers ``cosegkit train --log`` writes beside ``metrics.jsonl``: TensorBoard (``<run>/tensorboard``,
the optional extra ``cosegkit[tensorboard]``)."""
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The mixed precisions of ``cosegkit train --amp`` (``TrainConfig.amp``), by name: the autocast dtype.

``fp16`` also scales the loss with a ``torch.amp.GradScaler``; ``bf16`` needs none."""

MODELS: tuple[str, ...] = ("lcco", "ufo")
"""The networks ``cosegkit train`` trains (``--model``): LCCo, and its peer UFO (:class:`~cosegkit.UFO`)."""

CLASS_ORACLE_DATASETS: tuple[str, ...] = ("synthetic", "composite")
"""The datasets ``class_oracle`` works on: generated worlds, whose sets' ``group`` is the target's
class index and whose CLIP vocabulary is the world's class names in class-index order, so a
group index is a vocabulary index. A reader's group index is a position in the groups it found,
which no vocabulary follows."""


def _flag(name: str) -> str:
    """The ``cosegkit train`` flag of a TrainConfig field (without the leading dashes)."""
    return name.replace("_", "-")


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``cosegkit train --help`` for each one's flag).

    Data: ``dataset`` is ``"synthetic"``, ``"composite"`` or a reader name (``"pascal_voc"``,
    ``"coco"``, ``"icoseg"``, ``"msrc"``, ``"internet"``, ``"processed"``, ``"folder"``) with
    ``root`` its folder (for COCO, the instances json; images beside it in ``coco_images``).
    ``classes`` keeps only those groups for training; ``eval_classes`` names held-out groups
    evaluated at the end of the run. ``world_*`` describe the synthetic world.

    The composite world (``dataset="composite"``, :class:`~cosegkit.data.composite.CompositeWorld`)
    pastes real object cut-outs of ``root``'s masked photos, read by the reader named in
    ``reader`` (e.g. ``"pascal_voc"``, ``"folder"``), into generated sets of ``world_objects``
    objects per image on a background photo. Its photos are split, class by class, into a
    training part and a held-out part (``held_out``, the held-out fraction, and
    ``split_seed``; :func:`~cosegkit.data.composite.split_photos`): :meth:`world` is built
    from the training photos only, :meth:`held_out_world` from the held-out ones, and
    :func:`build_photo_eval_sets` scores the held-out photos themselves. ``world_seed`` and
    ``image_size`` describe it as they do the synthetic world; ``classes`` selects the
    reader's groups it uses. ``missing_masks="skip"``
    leaves out images without a mask and ``on_empty="warn"`` groups without images, each with
    a warning, where the reader would refuse them (``--missing-masks``, ``--on-empty``).

    ``model`` picks the network (:data:`~cosegkit.engine.config.MODELS`): ``"lcco"``, or
    ``"ufo"``, the peer :class:`~cosegkit.UFO` on the same ``encoder`` (at
    ``encoder_depth`` 5) with ``ufo_dim`` channels per level (UFO's 512), trained with its own
    loss (:class:`~cosegkit.losses.UFOLoss`) on each set's class (its ``group``); the CLIP and
    LCCo's module settings do not apply to it.

    Model: an smp ``encoder`` with ``encoder_weights`` (tag, file or ``None``), an open_clip
    ``clip_model`` with ``clip_pretrained`` (tag, file or ``None``), the module switches and
    ``top_k``. ``class_oracle`` trains and scores a *class oracle*: each set's true class
    (its ``group``) replaces the regularization module's own choice :math:`i^*` (eq. 6-8), in
    training and in the evaluation at the end (:data:`~cosegkit.engine.config.CLASS_ORACLE_DATASETS`
    only; the saved model records it, see :attr:`LCCo.class_oracle <cosegkit.LCCo.class_oracle>`).
    The grouping layer (``use_grouping``, an extension) takes ``grouping_level``,
    ``num_groups``, ``grouping_layers`` and ``grouping_activation`` as :class:`~cosegkit.LCCo`
    does; a config written before the last two existed reads as 2 and ``"gelu"``.
    Optimisation: ``steps`` of ``batch_size`` sets of ``set_size`` images, AdamW
    with ``lr`` (``encoder_lr`` for the encoder, when set) and a cosine schedule after
    ``warmup`` steps, loss weights ``lambda1`` and ``lambda2``. The seed fixes the initialisation (a random CLIP included) and the data.

    Mixed precision: ``amp`` is ``None`` (float32), ``"bf16"`` or ``"fp16"`` (autocast on CUDA;
    fp16 with a gradient scaler, :data:`~cosegkit.engine.config.AMP_DTYPES`); ``True`` and
    ``False``, as configs written before fp16 hold, read as ``"bf16"`` and ``None``.

    Continuing: ``init_from`` names a trained model (a model folder, a run folder or a hub
    name) whose architecture and weights the run starts from
    (:mod:`cosegkit.engine.finetune`); ``extensions`` records each time the run was extended
    (``--resume --steps N``): ``{"step": s, "from_steps": old, "to_steps": N}``, the step the
    extension started at and the plans before and after, which the learning-rate schedule
    follows. :func:`~cosegkit.engine.train` writes it; a new run starts with none.

    Training without masks: ``pseudo_masks="zero-shot"`` trains on zero-shot pseudo masks
    of the run's own CLIP instead of ground truth (:mod:`cosegkit.engine.pseudo`). On a
    generated world (:data:`~cosegkit.engine.config.GENERATED_DATASETS`) the training sets are a fixed pool of
    ``pseudo_pool`` generated sets (default ``steps x batch_size``, every item distinct),
    labelled once; the world's masks are never read for training. A pixel is
    by default (``pseudo_rule="adaptive"``) object where the zero-shot map is at least its own
    threshold ``t`` (as P and J binarise it, preset ``ssnm``) plus ``pseudo_margin`` (0.1),
    background where it is at most ``t - pseudo_margin``, ignored in between; with
    ``pseudo_rule="fixed"``, object where it is ``>= pseudo_high``, background where it is
    ``<= pseudo_low``. ``pseudo_templates`` and ``pseudo_background``
    are the zero-shot prompts (default: CLIP-ES's, or the synthetic CLIP's own template);
    further zero-shot settings go under ``extra["zero_shot"]``.

    Eq. (12)'s target: ``class_targets="cached"`` (the default) embeds each training image's
    masked view once, un-augmented, and reuses it (:mod:`cosegkit.engine.class_targets`, cached
    in ``<run>/class_targets``); ``"per-set"`` sends the augmented masked images through CLIP
    at every step. The generated worlds (synthetic, composite), whose images never recur, are
    always per set. A config written before the setting existed reads as ``"per-set"``.

    The CLIP vocabulary (:meth:`vocabulary`) is the synthetic world's class names (with the
    template ``"a {}"``) when the dataset is synthetic or the CLIP is the synthetic one
    (:data:`~cosegkit.engine.pretrain.SYNTHETIC_CLIP`); the composite world's class names on
    the composite dataset; else the default vocabulary.

    Watching a run: ``log=["tensorboard"]`` also writes TensorBoard event files into
    ``<run>/tensorboard`` (:data:`~cosegkit.engine.config.LOGGERS`; ``metrics.jsonl`` is
    written either way). ``eval_every`` scores the held-out sets (the end-of-run evaluation's,
    or ``validation_sets`` of them spread evenly) every that many steps, writes
    ``<run>/validation.jsonl`` and keeps the best model by J in ``<run>/best``
    (:mod:`cosegkit.engine.watch`); a dataset on disk needs ``eval_classes`` for it.

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

        Mixed precision:

        >>> TrainConfig(amp=True).amp, TrainConfig(amp="fp16").amp  # plain --amp is bf16
        ('bf16', 'fp16')

        Pseudo masks, for a folder of images without masks:

        >>> config = TrainConfig(dataset="folder", root="photos", pseudo_masks="zero-shot")
        >>> config.pseudo_low, config.pseudo_high, config.pseudo_templates, config.pseudo_background
        (0.25, 0.55, None, None)
        >>> TrainConfig(dataset="folder", root="photos", pseudo_masks="zero-shot", pseudo_low=0.6)
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: need 0 <= pseudo_low <= pseudo_high <= 1, got pseudo_low=0.6, pseudo_high=0.55 (--pseudo-low, --pseudo-high)
    """

    # data
    dataset: str = "synthetic"
    root: str | None = None
    reader: str | None = None
    held_out: float = 0.3
    split_seed: int = 0
    coco_images: str | None = None
    classes: list[str] | None = None
    eval_classes: list[str] | None = None
    world_classes: int = 16
    world_seed: int = 0
    world_objects: tuple[int, int] = (2, 3)
    missing_masks: str = "error"
    on_empty: str = "error"
    image_size: int = 224
    set_size: int = 5
    batch_size: int = 2
    augment: bool = True
    workers: int = 0
    # model
    model: str = "lcco"
    ufo_dim: int = 512
    encoder: str = "resnet50"
    encoder_weights: str | None = "imagenet"
    encoder_depth: int = 5
    decoder_channels: list[int] | None = None
    clip_model: str = "ViT-B-16"
    clip_pretrained: str | None = "openai"
    use_correspondence: bool = True
    use_interaction: bool = True
    use_regularization: bool = True
    class_oracle: bool = False
    top_k: int = 5
    heads: int = 8
    variant: str = "default"
    residual: bool | None = None
    correspondence_residual: bool | None = None
    unit_scale: bool | None = None
    class_pool: str | None = None
    class_prior: float | None = None
    use_grouping: bool = False
    grouping_level: int = 1
    num_groups: int = 8
    grouping_layers: int = 2
    grouping_activation: str = "gelu"
    superpixel_weight: float = 0.0
    superpixel_method: str = "felzenszwalb"
    grouping_weight: float = 1.0
    distortion_weight: float = 0.0
    # optimisation
    steps: int = 1000
    lr: float = 1e-4
    encoder_lr: float | None = None
    weight_decay: float = 1e-4
    warmup: int = 0
    lambda1: float = 1.0
    lambda2: float = 1.0
    class_targets: str = "cached"
    seed: int = 0
    # run
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    device: str = "auto"
    amp: str | None = None
    compile: bool = False
    eval_set_size: int | None = 5
    eval_preset: str = "ssnm"
    # training without masks
    pseudo_masks: str | None = None
    pseudo_low: float = 0.25
    pseudo_high: float = 0.55
    pseudo_rule: str = "adaptive"
    pseudo_margin: float = 0.1
    pseudo_templates: list[str] | None = None
    pseudo_background: list[str] | None = None
    pseudo_pool: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # watching a run
    log: list[str] | None = None
    eval_every: int | None = None
    validation_sets: int | None = None
    # continuing from a trained model; extending a run
    init_from: str | None = None
    extensions: list[dict[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise KeyError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.dataset != "synthetic" and not self.root:
            raise CosegValueError(f"dataset {self.dataset!r} needs its folder: pass root (--root PATH)")
        self._check_composite()
        if self.dataset == "synthetic" and (self.classes or self.eval_classes):
            raise CosegValueError(
                "classes and eval_classes (--classes, --eval-classes) select groups of a dataset on disk; the "
                "synthetic world trains on all its classes (--world-classes sets how many) and is scored on "
                "held-out sets of them"
            )
        for name, choices in (("missing_masks", ("error", "skip")), ("on_empty", ("error", "warn"))):
            if getattr(self, name) not in choices:
                raise CosegValueError(
                    f"{name} must be one of {list(choices)}, got {getattr(self, name)!r} (--{_flag(name)})"
                )
        for name in ("steps", "set_size", "batch_size", "image_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CosegValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dataset in GENERATED_DATASETS and self.image_size < 16:
            raise CosegValueError(
                f"the {self.dataset} world draws images of at least 16 px, got image_size={self.image_size} "
                f"(--image-size)"
            )
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise CosegValueError(
                f"workers must be a non-negative integer (0: load in the main process), got {self.workers!r}"
            )
        if self.lr <= 0 or (self.encoder_lr is not None and self.encoder_lr < 0):
            raise CosegValueError(
                f"learning rates must be positive, got lr={self.lr}, encoder_lr={self.encoder_lr} (--lr, --encoder-lr)"
            )
        for name in ("weight_decay", "warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise CosegValueError(f"{name} must be non-negative, got {value!r} (--{_flag(name)})")
        if self.class_prior is not None and (
            isinstance(self.class_prior, bool) or not isinstance(self.class_prior, (int, float)) or self.class_prior < 0
        ):
            raise CosegValueError(f"class_prior must be non-negative, got {self.class_prior!r} (--class-prior)")
        self.world_objects = tuple(self.world_objects)  # type: ignore[assignment]
        self._check_amp()
        self._check_continuation()
        self._check_model()
        self._check_class_oracle()
        self._check_pseudo_masks()
        if self.grouping_level not in (1, 2, 3):
            raise CosegValueError(f"grouping_level must be 1, 2 or 3, got {self.grouping_level!r}")
        for name in ("num_groups", "grouping_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CosegValueError(f"{name} must be a positive integer, got {value!r} (--{_flag(name)})")
        from cosegkit.layers._blocks import ACTIVATIONS

        if self.grouping_activation not in ACTIVATIONS:
            raise CosegValueError(
                f"grouping_activation must be one of {sorted(ACTIVATIONS)}, got {self.grouping_activation!r} "
                f"(--grouping-activation; quick_gelu is SegCLIP's)"
            )
        if not isinstance(self.superpixel_weight, (int, float)) or self.superpixel_weight < 0:
            raise CosegValueError(
                f"superpixel_weight must be non-negative, got {self.superpixel_weight!r} (--superpixel-weight)"
            )
        for name in ("lambda1", "lambda2", "grouping_weight", "distortion_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise CosegValueError(f"{name} must be non-negative, got {value!r} (--{_flag(name)})")
        if self.superpixel_weight > 0 and not self.use_grouping:
            raise CosegValueError(
                "superpixel_weight > 0 trains the grouping layer's assignment: turn the layer on "
                "(use_grouping=True, --grouping)"
            )
        from cosegkit.data.superpixels import SUPERPIXEL_METHODS

        if self.superpixel_method not in SUPERPIXEL_METHODS:
            raise CosegValueError(
                f"superpixel_method must be one of {sorted(SUPERPIXEL_METHODS)}, got {self.superpixel_method!r}"
            )
        from cosegkit.engine.class_targets import CLASS_TARGETS

        if self.class_targets not in CLASS_TARGETS:
            raise CosegValueError(f"class_targets must be one of {list(CLASS_TARGETS)}, got {self.class_targets!r}")
        from cosegkit.models.lcco import get_variant

        get_variant(self.variant)  # an unknown name raises KeyError listing the valid ones
        self._check_watching()

    def _check_watching(self) -> None:
        """``log``, ``eval_every`` and ``validation_sets``: loggers by name; validation needs held-out sets."""
        if self.log is not None:
            if isinstance(self.log, str) or not all(isinstance(name, str) for name in self.log):
                raise CosegValueError(f"log must be a list of logger names {list(LOGGERS)}, got {self.log!r} (--log)")
            unknown = [name for name in self.log if name not in LOGGERS]
            if unknown:
                raise CosegValueError(f"unknown logger(s) {unknown} (--log); choose from {list(LOGGERS)}")
            self.log = list(dict.fromkeys(self.log)) or None
        for name in ("eval_every", "validation_sets"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CosegValueError(f"{name} must be a positive integer or None, got {value!r} (--{_flag(name)})")
        if self.validation_sets is not None and self.eval_every is None:
            raise CosegValueError(
                "validation_sets (--validation-sets) sizes the validation of eval_every (--eval-every): set both, "
                "or leave it out"
            )
        if self.eval_every is not None and self.dataset not in GENERATED_DATASETS and not self.eval_classes:
            raise CosegValueError(
                f"eval_every (--eval-every) scores the held-out sets during training, and a {self.dataset!r} run "
                f"has none: name held-out groups with --eval-classes (eval_classes), or drop --eval-every"
            )

    def _check_model(self) -> None:
        if self.model not in MODELS:
            raise CosegValueError(f"model must be one of {list(MODELS)}, got {self.model!r} (--model)")
        if isinstance(self.ufo_dim, bool) or not isinstance(self.ufo_dim, int) or self.ufo_dim < 4 or self.ufo_dim % 4:
            raise CosegValueError(
                f"ufo_dim must be a positive multiple of 4 (UFO's 4 heads), got {self.ufo_dim!r} (--ufo-dim)"
            )
        if self.model != "ufo":
            return
        lcco_only = {
            "class_oracle": (self.class_oracle, "--class-oracle"),
            "pseudo_masks": (self.pseudo_masks, "--pseudo-masks"),
            "use_grouping": (self.use_grouping, "--grouping"),
        }
        lcco_modules = {
            "--no-correspondence": not self.use_correspondence,
            "--no-interaction": not self.use_interaction,
            "--no-regularization": not self.use_regularization,
            "--variant": self.variant != "default",
            "--residual": self.residual is not None,
            "--correspondence-residual": self.correspondence_residual is not None,
            "--unit-scale": self.unit_scale is not None,
            "--class-pool": self.class_pool is not None,
            "--class-prior": self.class_prior is not None,
            "--lambda1": self.lambda1 != 1.0,
            "--lambda2": self.lambda2 != 1.0,
        }  # LCCo's modules, readings and loss weights: a silent no-op on UFO
        given = [flag for value, flag in lcco_only.values() if value] + [f for f, on in lcco_modules.items() if on]
        if given:
            raise CosegValueError(
                f"{', '.join(given)} set(s) LCCo's modules or targets, and UFO has none of them; drop "
                f"{', '.join(given)} or train LCCo (--model lcco)"
            )
        if self.encoder_depth != 5:
            raise CosegValueError(
                f"UFO reads its encoder at strides 4, 8, 16 and 32, so it needs encoder_depth 5, got "
                f"{self.encoder_depth} (--encoder-depth 5)"
            )

    def _check_amp(self) -> None:
        """``amp``: ``None``, ``"bf16"`` or ``"fp16"``; ``True``/``False`` (configs written before fp16) read as bf16/None."""
        if self.amp is True:
            self.amp = "bf16"
        elif self.amp is False:
            self.amp = None
        if self.amp not in AMP_DTYPES and self.amp is not None:
            raise CosegValueError(
                f"amp must be None, 'bf16' or 'fp16', got {self.amp!r} (--amp bf16 or --amp fp16; leave it out for fp32)"
            )

    def _check_continuation(self) -> None:
        """``init_from`` names a model; ``extensions`` is the list :func:`~cosegkit.engine.train` writes."""
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise CosegValueError(
                f"init_from must be a model folder, a run folder or a hub name, got {self.init_from!r} (--init-from)"
            )
        if not isinstance(self.extensions, list):
            raise CosegValueError(f"extensions must be a list, got {self.extensions!r}")
        previous = 0
        for ext in self.extensions:
            keys = ("step", "from_steps", "to_steps")
            if (
                not isinstance(ext, dict)
                or sorted(ext) != sorted(keys)
                or not all(isinstance(ext[k], int) and not isinstance(ext[k], bool) for k in keys)
            ):
                raise CosegValueError(
                    f"each entry of extensions is {{'step': int, 'from_steps': int, 'to_steps': int}}, got {ext!r}"
                )
            if not previous <= ext["step"] <= ext["from_steps"] < ext["to_steps"]:
                raise CosegValueError(
                    f"extension {ext} does not follow the run: need the previous extension's step ({previous}) "
                    f"<= step <= from_steps < to_steps"
                )
            previous = ext["step"]

    def _check_class_oracle(self) -> None:
        if not isinstance(self.class_oracle, bool):
            raise CosegValueError(f"class_oracle must be True or False, got {self.class_oracle!r} (--class-oracle)")
        if not self.class_oracle:
            return
        if self.dataset not in CLASS_ORACLE_DATASETS:
            worlds = " or ".join(repr(d) for d in CLASS_ORACLE_DATASETS if d in DATASETS)
            raise CosegValueError(
                f"class_oracle (--class-oracle) needs a generated world, dataset {worlds}, where a set's group is "
                f"its class's index in the vocabulary; the groups of dataset {self.dataset!r} are numbered in "
                f"reading order, which no vocabulary follows"
            )
        if not self.use_regularization:
            raise CosegValueError(
                "class_oracle (--class-oracle) gives the CLIP regularization module (eq. 6-8) each set's class; "
                "drop --no-regularization (use_regularization=True)"
            )

    def _check_composite(self) -> None:
        """The composite world's settings: a reader of the photos, a held-out fraction, a split seed."""
        if self.dataset != "composite":
            if self.reader is not None:
                raise CosegValueError(
                    f"reader (--reader) names the layout of the composite world's photos; it is only for "
                    f"dataset 'composite' (--dataset composite), got dataset {self.dataset!r} with reader {self.reader!r}"
                )
            if (self.held_out, self.split_seed) != (0.3, 0):
                raise CosegValueError(
                    f"held_out and split_seed (--held-out, --split-seed) split the composite world's photos; they are "
                    f"only for dataset 'composite' (--dataset composite), got dataset {self.dataset!r}"
                )
            return
        if not self.reader:
            raise CosegValueError(
                f"dataset 'composite' builds its world from the masked photos of a dataset on disk: name their "
                f"layout with reader (--reader), one of {sorted(READERS)}"
            )
        if self.reader not in READERS:
            raise CosegValueError(
                f"reader must be one of {sorted(READERS)} (the layout of --root's photos), got {self.reader!r} (--reader)"
            )
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, (int, float)) or not 0 < self.held_out < 1:
            raise CosegValueError(
                f"held_out must be a fraction in (0, 1) (the share of each class's photos held out), got "
                f"{self.held_out!r} (--held-out)"
            )
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise CosegValueError(f"split_seed must be a non-negative integer, got {self.split_seed!r} (--split-seed)")
        if self.eval_classes:
            raise CosegValueError(
                "eval_classes (--eval-classes) names held-out groups of a dataset on disk; the composite world is "
                "scored on held-out photos of its own classes (--held-out sets their share)"
            )

    def _check_pseudo_masks(self) -> None:
        from cosegkit.engine.pseudo import PSEUDO_MASKS

        pool = self.pseudo_pool
        if pool is not None:
            if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
                raise CosegValueError(f"pseudo_pool must be a positive integer, got {pool!r} (--pseudo-pool)")
            if self.dataset not in GENERATED_DATASETS:
                raise CosegValueError(
                    f"pseudo_pool (--pseudo-pool) sizes the pool of generated sets of a generated world; dataset "
                    f"{self.dataset!r} trains on its own images: leave it out"
                )
            if self.pseudo_masks is None:
                raise CosegValueError(
                    "pseudo_pool (--pseudo-pool) sizes the pool of sets labelled with pseudo masks: use it with "
                    "pseudo_masks='zero-shot' (--pseudo-masks zero-shot), or leave it out"
                )
        if self.pseudo_masks is None:
            return
        if self.pseudo_masks not in PSEUDO_MASKS:
            raise CosegValueError(
                f"pseudo_masks must be None or one of {list(PSEUDO_MASKS)}, got {self.pseudo_masks!r}"
            )
        if self.class_oracle:
            raise CosegValueError(
                "class_oracle (--class-oracle) tells the model each set's true class, and pseudo masks "
                "(--pseudo-masks) train without ground truth: use one or the other"
            )
        if self.pseudo_rule not in ("fixed", "adaptive"):
            raise CosegValueError(f"pseudo_rule must be 'fixed' or 'adaptive', got {self.pseudo_rule!r}")
        if not isinstance(self.pseudo_margin, (int, float)) or not 0 <= self.pseudo_margin < 1:
            raise CosegValueError(f"pseudo_margin must be in [0, 1), got {self.pseudo_margin!r} (--pseudo-margin)")
        low, high = self.pseudo_low, self.pseudo_high
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 <= low <= high <= 1):
            raise CosegValueError(
                f"need 0 <= pseudo_low <= pseudo_high <= 1, got pseudo_low={low}, pseudo_high={high} "
                f"(--pseudo-low, --pseudo-high)"
            )
        for name in ("pseudo_templates", "pseudo_background"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                raise CosegValueError(
                    f"{name} must be a non-empty list of non-empty strings, got {value!r} (--{_flag(name)})"
                )
        for t in self.pseudo_templates or ():
            if t.count("{}") != 1:
                raise CosegValueError(
                    f"each pseudo template needs exactly one '{{}}' for the class name, got {t!r} (--pseudo-templates)"
                )

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
        if "class_targets" not in data:  # written when eq. (12)'s target was always computed per set
            data = {**data, "class_targets": "per-set"}
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

    def world(self) -> SyntheticWorld | CompositeWorld:
        """The world the training sets are drawn from: the synthetic one, or the composite one of the training photos.

        On the composite dataset, a :class:`~cosegkit.data.composite.CompositeWorld` over the
        training part of :func:`~cosegkit.data.composite.split_photos` (``held_out``,
        ``split_seed``) of the reader's groups (``classes`` of them): no held-out photo is in
        it, as a cut-out or as a background. Building it loads every photo once (4 to 8 s for
        the 598 training photos of the PASCAL-VOC co-segmentation set); built worlds are
        kept in memory, keyed by everything that defines them (the settings and the files'
        sizes and modification times), so training, evaluation and figures build it once.
        On any other dataset, the synthetic world of ``world_classes``, ``image_size``,
        ``world_objects`` and ``world_seed``.

        Example:
            >>> from cosegkit.engine import TrainConfig
            >>> TrainConfig(world_classes=4, image_size=32).world().class_names[:2]
            ['orange dotted triangle', 'red checkered ring']

            The composite world of a folder of masked photos (here written from the synthetic
            world: 5 classes of 10 photos), from its training photos only:

            >>> import tempfile
            >>> from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
            >>> root = tempfile.mkdtemp()
            >>> _ = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2), root, 10)
            >>> config = TrainConfig(dataset="composite", root=root, reader="folder", image_size=32, held_out=0.3)
            >>> world, held = config.world(), config.held_out_world()
            >>> len(world.photos), len(held.photos), set(world.photos).isdisjoint(held.photos)
            (35, 15, True)
            >>> config.world() is world  # built once
            True
        """
        if self.dataset == "composite":
            return _composite_world(self, held_out=False)
        return SyntheticWorld(
            num_classes=self.world_classes,
            image_size=self.image_size,
            objects_per_image=self.world_objects,
            seed=self.world_seed,
        )

    def held_out_world(self) -> SyntheticWorld | CompositeWorld:
        """The world the held-out sets are drawn from.

        On the composite dataset, the :class:`~cosegkit.data.composite.CompositeWorld` of the
        held-out photos (the part of :func:`~cosegkit.data.composite.split_photos` that
        :meth:`world` leaves out), with the training world's settings and classes in the same
        order. On any other dataset, :meth:`world` itself: the synthetic world's held-out sets
        are other seeds of the same world.

        Raises:
            DataError: the held-out photos do not give every class of the training world a
                cut-out (a class's held-out photos all have empty masks).

        Example:
            >>> from cosegkit.engine import TrainConfig
            >>> config = TrainConfig(world_classes=5, image_size=32)
            >>> config.held_out_world().class_names == config.world().class_names  # other seeds, same world
            True
        """
        if self.dataset == "composite":
            return _composite_world(self, held_out=True)
        return self.world()

    def vocabulary(self) -> tuple[list[str] | None, list[str] | None]:
        """The CLIP prompt vocabulary and templates: the world's classes, or the defaults (``None``).

        On the composite dataset, the composite world's class names in class-index order (so a
        set's ``group`` is its vocabulary index), with the template ``"a {}"`` when the CLIP
        is one pre-trained on a world's captions (:data:`~cosegkit.engine.pretrain.SYNTHETIC_CLIP`,
        :data:`~cosegkit.engine.pretrain.COMPOSITE_CLIP`) and the default templates (``None``)
        otherwise. The synthetic world's class names (template ``"a {}"``) on the synthetic
        dataset, and with the synthetic CLIP on any other dataset (it knows no other words).
        Else the defaults.

        Example:
            >>> from cosegkit.engine import TrainConfig
            >>> names, templates = TrainConfig(world_classes=5, image_size=32).vocabulary()
            >>> len(names), templates
            (5, ['a {}'])
            >>> TrainConfig(dataset="folder", root="photos").vocabulary()
            (None, None)
        """
        from cosegkit.engine.pretrain import COMPOSITE_CLIP, SYNTHETIC_CLIP, SYNTHETIC_TEMPLATES

        if self.dataset == "composite":
            captioned = self.clip_model in (SYNTHETIC_CLIP, COMPOSITE_CLIP)
            return self.world().class_names, list(SYNTHETIC_TEMPLATES) if captioned else None
        if self.dataset == "synthetic" or self.clip_model == SYNTHETIC_CLIP:
            return self.world().class_names, list(SYNTHETIC_TEMPLATES)
        return None, None


class SyntheticTrainSets(Dataset):
    """Items of a generated world (synthetic or composite) in the layout of :class:`~cosegkit.data.TrainSets`.

    Item ``i`` is ``world.sample_set(set_size, seed=(seed, i))`` with ``valid`` all True and
    its target class under ``group`` (an index into ``world.class_names``). No augmentation:
    every set is new.

    Example:
        >>> from cosegkit.data.synthetic import SyntheticWorld
        >>> from cosegkit.engine.config import SyntheticTrainSets
        >>> world = SyntheticWorld(num_classes=5, image_size=32)
        >>> sets = SyntheticTrainSets(world, set_size=3, length=4, seed=0)
        >>> item = sets[2]
        >>> item["images"].shape, item["valid"].tolist()
        (torch.Size([3, 3, 32, 32]), [True, True, True])
        >>> world.class_names[int(item["group"])] == world.sample_set(3, seed=(0, 2)).target_name
        True
    """

    def __init__(self, world: SyntheticWorld | CompositeWorld, set_size: int, length: int, seed: int = 0) -> None:
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
    groups that ``config.classes`` selects. The generated worlds (synthetic, composite) have no
    epochs.
    """
    if config.dataset in GENERATED_DATASETS:
        raise CosegValueError(f"the {config.dataset} world is endless: give --steps, not --epochs")
    if epochs <= 0:
        raise CosegValueError(f"epochs must be positive, got {epochs}")
    images = sum(len(g) for g in train_groups(config))
    return max(1, math.ceil(epochs * images / (config.set_size * config.batch_size)))


def _read_groups(config: TrainConfig, *, masks: bool = True, **options: Any) -> list[Group]:
    layout = config.reader if config.dataset == "composite" else config.dataset
    reader = get_reader(layout)
    options = {"missing_masks": config.missing_masks, "on_empty": config.on_empty, **options}
    accepted = inspect.signature(reader).parameters
    options = {k: v for k, v in options.items() if k in accepted}
    if layout == "coco":
        if not config.coco_images:
            raise CosegValueError("dataset 'coco' needs the image folder too: pass coco_images (--coco-images PATH)")
        return reader(
            config.root, config.coco_images, ssnm_filter=bool(config.extra.get("ssnm_filter", False)), **options
        )
    if layout == "folder":
        return reader(config.root, masks=masks, **options)
    return reader(config.root, **options)


def composite_groups(config: TrainConfig) -> list[Group]:
    """The reader's groups the composite world of ``config`` is made of: ``config.classes`` of them.

    Example:
        >>> import tempfile
        >>> from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.config import composite_groups
        >>> root = tempfile.mkdtemp()
        >>> _ = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2), root, 3)
        >>> config = TrainConfig(dataset="composite", root=root, reader="folder", classes=["red dotted star"])
        >>> [(g.name, len(g)) for g in composite_groups(config)]
        [('red dotted star', 3)]
    """
    if config.dataset != "composite":
        raise CosegValueError(f"composite_groups needs dataset 'composite', got {config.dataset!r}")
    return _select(_read_groups(config), config.classes, "classes (--classes)")


def _split(config: TrainConfig, groups: Sequence[Group]) -> tuple[frozenset[str], frozenset[str]]:
    """The composite config's (training, held-out) photos."""
    try:
        return split_photos(groups, config.held_out, seed=config.split_seed)
    except CosegValueError as err:
        raise CosegValueError(f"{err}: add photos to the class, or leave it out (--classes)") from err


def _composite_world(config: TrainConfig, *, held_out: bool) -> CompositeWorld:
    """The composite world of the training (or held-out) photos, built once per process and settings."""
    from cosegkit.engine.class_targets import data_fingerprint

    groups = composite_groups(config)
    settings = {
        "part": "held_out" if held_out else "train",
        "reader": config.reader,
        "root": os.path.abspath(str(config.root)),
        "coco_images": None if config.coco_images is None else os.path.abspath(config.coco_images),
        "classes": config.classes,
        "missing_masks": config.missing_masks,
        "on_empty": config.on_empty,
        "image_size": config.image_size,
        "world_objects": list(config.world_objects),
        "world_seed": config.world_seed,
        "held_out": config.held_out,
        "split_seed": config.split_seed,
        "data": data_fingerprint(groups),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if key in _WORLDS:
        _WORLDS.move_to_end(key)
        return _WORLDS[key]
    train, held = _split(config, groups)
    try:
        world = CompositeWorld(
            groups,
            image_size=config.image_size,
            objects_per_image=config.world_objects,
            seed=config.world_seed,
            photos=held if held_out else train,
        )
    except DataError as err:
        if not held_out:
            raise CosegValueError(f"the composite world: {err} (--world-objects, --classes, --image-size)") from err
        raise DataError(
            f"the held-out photos: {err}; every class needs masked photos in both parts (--held-out, --split-seed)"
        ) from err
    except CosegValueError as err:
        raise CosegValueError(f"the composite world: {err} (--world-objects, --classes, --image-size)") from err
    if held_out:
        trained = _composite_world(config, held_out=False)
        if world.class_names != trained.class_names:
            raise DataError(
                f"the held-out photos give cut-outs of the classes {world.class_names}, the training photos of "
                f"{trained.class_names}; every class needs masked photos in both parts (--held-out, --split-seed)"
            )
    _WORLDS[key] = world
    while len(_WORLDS) > _WORLD_CACHE_SIZE:
        _WORLDS.popitem(last=False)
    return world


_PSEUDO_HINT = (
    "train on zero-shot pseudo masks instead: cosegkit train --pseudo-masks zero-shot "
    "(TrainConfig(pseudo_masks='zero-shot'))"
)


def train_groups(config: TrainConfig) -> list[Group]:
    """The training groups of a (non-synthetic) config: ``config.classes`` of the dataset's groups.

    With pseudo masks they carry no masks at all (a folder's ``masks/`` is not even read;
    other readers' groups are stripped of theirs): nothing in training can reach ground truth.
    Without, a group that has no masks is an error that suggests pseudo masks.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.config import train_groups
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "images" / "cats").mkdir(parents=True)
        >>> Image.new("RGB", (8, 6)).save(root / "images" / "cats" / "a.jpg")
        >>> train_groups(TrainConfig(dataset="folder", root=str(root)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.data.types.DataError: training needs masks, but these groups have none: ['cats']; train on zero-shot ...
        >>> pseudo = TrainConfig(dataset="folder", root=str(root), pseudo_masks="zero-shot")
        >>> [(g.name, g.masks) for g in train_groups(pseudo)]
        [('cats', None)]
    """
    if config.dataset in GENERATED_DATASETS:
        raise CosegValueError(
            f"the {config.dataset} world has no training groups of files; its training sets are generated "
            f"(build_train_sets, TrainConfig.world)"
        )
    if config.pseudo_masks:
        from cosegkit.engine.pseudo import strip_masks

        groups = _select(_read_groups(config, masks=False), config.classes, "training classes (--classes)")
        return [strip_masks(g) for g in groups]
    try:
        groups = _select(_read_groups(config), config.classes, "training classes (--classes)")
    except DataError as err:
        if config.dataset == "folder" and "mask" in str(err):
            raise DataError(f"{err}; or {_PSEUDO_HINT}") from err
        raise
    unlabelled = [g.name for g in groups if g.masks is None and "segmentations" not in g.meta]
    if unlabelled:
        raise DataError(f"training needs masks, but these groups have none: {unlabelled[:10]}; {_PSEUDO_HINT}")
    return groups


def check_mask_sizes(groups: Sequence[Group], *, remedy: str = "") -> None:
    """Check, from the file headers only, that every mask of ``groups`` has its image's size.

    Training samples a few images per step, so a wrong-size mask would otherwise surface only
    at the step that draws it; this reads every pair's header (no pixel is decoded) before
    the first step. Groups without mask files (unlabelled, COCO) are skipped.

    Args:
        groups: the groups to check.
        remedy: what to do, appended to the message (e.g. the command-line flag).

    Raises:
        DataError: one line naming the pairs whose sizes differ (the first three, and how many).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.data.types import Group
        >>> from cosegkit.engine.config import check_mask_sizes
        >>> tmp = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 6)).save(tmp / "a.jpg")
        >>> Image.new("L", (8, 6)).save(tmp / "a.png")
        >>> Image.new("RGB", (8, 6)).save(tmp / "b.jpg")
        >>> Image.new("L", (6, 6)).save(tmp / "b.png")
        >>> check_mask_sizes([Group("cats", (tmp / "a.jpg",), (tmp / "a.png",))])  # passes silently
        >>> check_mask_sizes([Group("cats", (tmp / "a.jpg", tmp / "b.jpg"), (tmp / "a.png", tmp / "b.png"))])
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.data.types.DataError: 1 mask(s) of 2 differ in size from their image: ...b.png is 6x6 but ...b.jpg is 8x6 ...
    """
    from cosegkit.data.io import image_size

    checked, wrong = 0, []
    for group in groups:
        if group.masks is None:
            continue
        for image, mask in zip(group.images, group.masks, strict=True):
            checked += 1
            image_wh, mask_wh = image_size(image), image_size(mask)
            if image_wh != mask_wh:
                wrong.append(f"{mask} is {mask_wh[0]}x{mask_wh[1]} but {image} is {image_wh[0]}x{image_wh[1]}")
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise DataError(
            f"{len(wrong)} mask(s) of {checked} differ in size from their image: {'; '.join(wrong[:3])}{more} "
            f"(width x height); a mask must have its image's size: fix or remove these files"
            + (f", {remedy}" if remedy else "")
        )


def build_train_sets(
    config: TrainConfig, length: int, *, pseudo_masks: Any = None, groups: Sequence[Group] | None = None
) -> Dataset:
    """The training dataset of ``length`` items: generated sets, or :class:`~cosegkit.data.TrainSets` of a reader's groups.

    On the synthetic and the composite dataset, :class:`~cosegkit.engine.config.SyntheticTrainSets` of
    :meth:`TrainConfig.world` (for the composite one, the world of the training photos),
    without augmentation: every set is new.

    With ``config.pseudo_masks`` set, ``pseudo_masks`` is the run's
    :class:`~cosegkit.engine.pseudo.PseudoMaskStore` (:func:`~cosegkit.engine.pseudo.prepare_pseudo_masks`
    makes it) and the sets are :class:`~cosegkit.engine.pseudo.PseudoTrainSets`: the same
    sampling and augmentation, items with ``masks`` (the confident object pixels) and
    ``weights`` (0 where the pseudo label is not confident), and no ground truth read. On a
    generated world it is the run's :class:`~cosegkit.engine.pseudo.PseudoPool`
    (:func:`~cosegkit.engine.pseudo.prepare_pseudo_pool`) and the sets are
    :class:`~cosegkit.engine.pseudo.PseudoWorldSets`: item ``i`` is the pool's set
    ``i mod size``, with its pseudo labels. ``groups`` are the training groups when already read (``train_groups(config)``), so a
    reader's files are listed once.

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
    if config.dataset in GENERATED_DATASETS:  # no augmentation: every set is new
        if not config.pseudo_masks:
            return SyntheticTrainSets(config.world(), config.set_size, length, seed=config.seed)
        from cosegkit.engine.pseudo import PseudoPool, PseudoWorldSets

        if not isinstance(pseudo_masks, PseudoPool):
            raise CosegValueError(
                "this config trains on pseudo masks of a generated world: compute them first with "
                "cosegkit.engine.pseudo.prepare_pseudo_pool and pass the pool as pseudo_masks="
            )
        if (pseudo_masks.set_size, pseudo_masks.seed) != (config.set_size, config.seed):
            raise CosegValueError(
                f"the pseudo-mask pool holds sets of {pseudo_masks.set_size} drawn with seed {pseudo_masks.seed}, but "
                f"the config trains on sets of {config.set_size} with seed {config.seed}: prepare the pool for this config"
            )
        return PseudoWorldSets(
            pseudo_masks,
            length,
            config.pseudo_low,
            config.pseudo_high,
            rule=config.pseudo_rule,
            margin=config.pseudo_margin,
        )
    groups = list(groups) if groups is not None else train_groups(config)
    if config.pseudo_masks:
        from cosegkit.engine.pseudo import PseudoMaskLoader, PseudoTrainSets

        if pseudo_masks is None:
            raise CosegValueError(
                "this config trains on pseudo masks: compute them first with "
                "cosegkit.engine.pseudo.prepare_pseudo_masks and pass the store as pseudo_masks="
            )
        missing = [g.name for g in groups if g.name not in pseudo_masks.files]
        if missing:
            raise DataError(f"the pseudo-mask store has no maps for the groups {missing[:10]}")
        loader = PseudoMaskLoader(
            pseudo_masks, config.pseudo_low, config.pseudo_high, rule=config.pseudo_rule, margin=config.pseudo_margin
        )
    else:
        loader = None
    sets = TrainSets(
        groups,
        config.set_size,
        config.image_size,
        length=length,
        augment=Augmentation() if config.augment else None,
        seed=config.seed,
        loader=loader,
        require_masks=not config.pseudo_masks,
    )
    return PseudoTrainSets(sets) if config.pseudo_masks else sets


def build_eval_sets(config: TrainConfig, classes: Sequence[str] | None = None, *, sets: int | None = None) -> Dataset:
    """Held-out evaluation sets: generated sets drawn with seed ``config.extra["eval_seed"]``
    (default ``config.seed + 1``; ``sets`` of them, default ``config.extra["eval_sets"]`` or 40),
    or :class:`~cosegkit.data.EvalSets` of the named groups.

    On the synthetic dataset the sets are other seeds of the training world; on the composite
    dataset they are drawn from :meth:`TrainConfig.held_out_world`, the world of the held-out
    photos (:func:`build_photo_eval_sets` gives the held-out photos themselves).

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
    if config.dataset in GENERATED_DATASETS:
        sets = sets or int(config.extra.get("eval_sets", 40))
        seed = int(config.extra.get("eval_seed", config.seed + 1))
        return SyntheticTrainSets(config.held_out_world(), config.eval_set_size or config.set_size, sets, seed=seed)
    if config.pseudo_masks and config.dataset == "folder":
        groups, unlabelled = labelled_eval_groups(config, classes)
        if not groups:
            raise DataError(f"none of the evaluation groups has masks ({unlabelled[:10]}); evaluation needs them")
    else:
        groups = _select(_read_groups(config), classes, "evaluation classes (--eval-classes)")
    return EvalSets(groups, config.eval_set_size, config.image_size)


def oracle_class_names(config: TrainConfig) -> list[str]:
    """The class name of each ``group`` index of ``config``'s sets, which a class oracle's vocabulary must equal.

    Raises:
        CosegValueError: the dataset is not one of :data:`CLASS_ORACLE_DATASETS`.

    Example:
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.config import oracle_class_names
        >>> config = TrainConfig(world_classes=4, image_size=32, class_oracle=True)
        >>> oracle_class_names(config) == config.world().class_names == config.vocabulary()[0]
        True
    """
    if config.dataset not in CLASS_ORACLE_DATASETS:
        worlds = [d for d in CLASS_ORACLE_DATASETS if d in DATASETS]
        raise CosegValueError(
            f"dataset {config.dataset!r} has no class names by group index: the class oracle (--class-oracle) "
            f"needs one of {worlds}"
        )
    return list(config.world().class_names)


def build_photo_eval_sets(config: TrainConfig, *, chunking: str = "contiguous") -> EvalSets:
    """The held-out photos of a composite config themselves, as a co-segmentation benchmark distributes them.

    One group per class of the composite world, in its class order and named by its class,
    holding that class's held-out photos (those :meth:`TrainConfig.world` leaves out) with
    their masks, cut into sets of ``config.eval_set_size`` images (``None``: whole groups)
    at ``config.image_size``. Photos without a mask are left out (they cannot be scored).

    Args:
        config: a config of the composite dataset.
        chunking: how a group is cut into sets (:class:`~cosegkit.data.EvalSets`).

    Returns:
        :class:`~cosegkit.data.EvalSets` over the held-out photos.

    Example:
        >>> import tempfile
        >>> from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
        >>> from cosegkit.engine import TrainConfig, build_photo_eval_sets
        >>> root = tempfile.mkdtemp()
        >>> _ = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, objects_per_image=2), root, 10)
        >>> config = TrainConfig(dataset="composite", root=root, reader="folder", image_size=32, eval_set_size=2)
        >>> photos = build_photo_eval_sets(config)
        >>> [(g.name, len(g)) for g in photos.groups][:2], len(photos)  # 3 of each class's 10 photos
        ([('blue striped diamond', 3), ('orange dotted triangle', 3)], 10)
        >>> photos[0]["images"].shape
        torch.Size([2, 3, 32, 32])
    """
    if config.dataset != "composite":
        raise CosegValueError(
            f"the held-out photos belong to the composite dataset (--dataset composite), got {config.dataset!r}"
        )
    groups = composite_groups(config)
    _, held = _split(config, groups)
    classes = config.world().class_names
    by_class: dict[str, list[Group]] = {name: [] for name in classes}
    for group in groups:
        if group.class_name not in by_class:
            continue  # a class without any masked training photo is not in the world
        keep = [i for i, path in enumerate(group.images) if str(path) in held]
        if keep and (group.masks is not None or "segmentations" in group.meta):
            by_class[group.class_name].append(_restrict(group, keep))
    merged = []
    for name, parts in by_class.items():
        if not parts:
            continue
        if len(parts) == 1:
            merged.append(dataclasses.replace(parts[0], name=name))
        elif all(p.masks is not None for p in parts):
            images = tuple(path for p in parts for path in p.images)
            masks = tuple(path for p in parts for path in p.masks or ())
            merged.append(Group(name, images, masks, class_name=name))
        else:  # masks held in metadata (COCO) cannot be merged: one group each
            merged.extend(parts)
    if not merged:
        raise DataError("no held-out photo has a mask; the photo evaluation needs masks")
    return EvalSets(merged, config.eval_set_size, config.image_size, chunking=chunking)  # type: ignore[arg-type]


def _restrict(group: Group, keep: Sequence[int]) -> Group:
    """The group with the images ``keep`` only (and their masks, and per-image metadata)."""
    count = len(group.images)
    meta = {
        k: type(v)(v[i] for i in keep) if isinstance(v, (list, tuple)) and len(v) == count else v
        for k, v in group.meta.items()
    }
    masks = None if group.masks is None else tuple(group.masks[i] for i in keep)
    return dataclasses.replace(group, images=tuple(group.images[i] for i in keep), masks=masks, meta=meta)


def labelled_eval_groups(config: TrainConfig, classes: Sequence[str] | None = None) -> tuple[list[Group], list[str]]:
    """The evaluation groups that have masks, and the names of those that have none.

    A folder trained on pseudo masks may hold masks for some groups only: its groups are
    read with the masks that exist (images without one left out of the evaluation). Other
    layouts have masks by construction.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.config import labelled_eval_groups
        >>> root = Path(tempfile.mkdtemp())
        >>> for group in ("cats", "dogs"):
        ...     (root / "images" / group).mkdir(parents=True)
        ...     Image.new("RGB", (8, 6)).save(root / "images" / group / "a.jpg")
        >>> (root / "masks" / "dogs").mkdir(parents=True)
        >>> Image.new("L", (8, 6)).save(root / "masks" / "dogs" / "a.png")
        >>> config = TrainConfig(dataset="folder", root=str(root), pseudo_masks="zero-shot")
        >>> groups, unlabelled = labelled_eval_groups(config, ["cats", "dogs"])
        >>> [g.name for g in groups], unlabelled
        (['dogs'], ['cats'])
    """
    if config.dataset != "folder":
        groups = _select(_read_groups(config), classes, "evaluation classes (--eval-classes)")
        return groups, []
    # checks the names
    wanted = _select(_read_groups(config, masks=False), classes, "evaluation classes (--eval-classes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = _read_groups(config, missing_masks="skip", on_empty="warn")
        except DataError:  # no group with a mask at all
            found = []
    labelled = {g.name: g for g in found if g.masks is not None}
    groups = [labelled[g.name] for g in wanted if g.name in labelled]
    return groups, [g.name for g in wanted if g.name not in labelled]


def training_class_names(config: TrainConfig, groups: Sequence[Group] | None = None) -> list[str]:
    """The classes a training set's ``group`` indexes, in index order.

    The world's class names on a generated world; the training groups' names (``groups``, or
    :func:`train_groups` read again) on a dataset of files. UFO's classification head has one
    output per name.

    Example:
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.config import training_class_names
        >>> training_class_names(TrainConfig(world_classes=4, image_size=32))
        ['orange dotted triangle', 'red checkered ring', 'blue dotted diamond', 'yellow striped crescent']
    """
    if config.dataset in GENERATED_DATASETS:
        return list(config.world().class_names)
    return [g.name for g in (groups if groups is not None else train_groups(config))]


def build_model(config: TrainConfig, groups: Sequence[Group] | None = None) -> torch.nn.Module:
    """The LCCo of ``config``, initialised from ``config.seed`` (so a resumed run rebuilds it).

    The model records the run's ``image_size`` and ``set_size`` (:attr:`LCCo.image_size
    <cosegkit.LCCo.image_size>`), so the saved model is evaluated and exported at the size it
    was trained at. With ``init_from`` set, the model holds that trained model's weights
    (:func:`~cosegkit.engine.finetune.init_model`).

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
        >>> type(model).__name__, model.image_size, model.set_size
        ('LCCo', 32, 2)
        >>> images = torch.rand(1, config.set_size, 3, config.image_size, config.image_size)
        >>> with torch.no_grad():
        ...     out = model(images)
        >>> images.shape, out.masks.shape, out.class_probs.shape
        (torch.Size([1, 2, 3, 32, 32]), torch.Size([1, 2, 1, 32, 32]), torch.Size([1, 4]))

        The same config builds the same weights:

        >>> a, b = build_model(config).state_dict(), model.state_dict()
        >>> all(torch.equal(a[name], b[name]) for name in b)
        True

        ``model="ufo"`` builds the peer, its classification head over the training classes:

        >>> import dataclasses
        >>> ufo = build_model(dataclasses.replace(config, model="ufo", encoder="resnet18", ufo_dim=16))
        >>> type(ufo).__name__, ufo.classifier.out_features, ufo.image_size
        ('UFO', 4, 32)
    """
    from cosegkit.engine.pretrain import (
        COMPOSITE_CLIP,
        SYNTHETIC_CLIP,
        register_composite_clip,
        register_synthetic_clip,
    )
    from cosegkit.models.lcco import LCCo
    from cosegkit.testing import TINY_CLIP_CONFIGS, register_tiny_clips

    if config.init_from:  # fine-tuning: the source's weights (cosegkit.engine.finetune)
        from cosegkit.engine.finetune import inherit_architecture, init_model

        return init_model(inherit_architecture(config), groups)
    if config.model == "ufo":
        from cosegkit.models.ufo import UFO

        classnames = training_class_names(config, groups)
        torch.manual_seed(config.seed)
        return UFO(
            encoder_name=config.encoder,
            encoder_weights=config.encoder_weights,
            classnames=classnames,
            dim=config.ufo_dim,
            image_size=config.image_size,
            set_size=config.set_size,
        )
    if config.clip_model == SYNTHETIC_CLIP:
        register_synthetic_clip()
    elif config.clip_model == COMPOSITE_CLIP:
        register_composite_clip()
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
        use_grouping=config.use_grouping,
        grouping_level=config.grouping_level,
        num_groups=config.num_groups,
        grouping_layers=config.grouping_layers,
        grouping_activation=config.grouping_activation,
        image_size=config.image_size,
        set_size=config.set_size,
        class_oracle=config.class_oracle,
    )
