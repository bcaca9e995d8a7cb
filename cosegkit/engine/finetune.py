"""Fine-tuning from a trained model: ``cosegkit train --init-from MODEL`` (``TrainConfig.init_from``).

The source is a model folder (``RUN/model`` or a ``save_pretrained`` folder), a run folder of
``cosegkit train`` (its ``model/``), or a Hugging Face hub name (``org/name``, fetched as
:meth:`LCCo.from_pretrained <cosegkit.LCCo.from_pretrained>` fetches it).

What comes from where:

- **The architecture comes from the source** (:data:`LCCO_ARCHITECTURE`, :data:`UFO_ARCHITECTURE`):
  the network (``model``), the encoder and decoder, the CLIP architecture and weights, the module
  switches, the variant and its readings, ``top_k``, ``heads``, the grouping layer; UFO's
  ``ufo_dim``. A setting left at its default takes the source's value; one set to something
  else is refused, naming its flag. ``encoder_weights`` (and, for a source with a CLIP,
  ``clip_pretrained``) are recorded as ``None``: the weights are the source's.
- **Everything else comes from the new run**: the data, the image and set sizes, the steps, the
  learning rates and schedule (started fresh: a new optimizer at step 0), the loss weights, the
  seed, the class oracle.
- **The vocabulary is the new run's** (:meth:`TrainConfig.vocabulary
  <cosegkit.engine.TrainConfig.vocabulary>`). When it differs from the source's, the frozen
  CLIP (the same weights) builds its text bank for the new class names and templates. Parts
  whose weights are indexed by the source's classes start afresh from the run's seed, with a
  log line: LCCo's eq. (7) ``MLP_3`` (``regularization.mlp3``, a ``P x P`` map over the
  class similarities) when the class names differ, and UFO's classification head
  (``classifier``) when its classes differ. Every other weight is the source's.

Resuming a fine-tuning run (``--resume``) builds the model from the source again (the frozen
CLIP's weights are not in the checkpoints), then loads the checkpoint's trainable weights: the
source must still be there.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosegkit.errors import CosegValueError, WeightsUnavailableError

__all__ = ["LCCO_ARCHITECTURE", "UFO_ARCHITECTURE", "inherit_architecture", "init_model", "source_folder"]

log = logging.getLogger(__name__)

LCCO_ARCHITECTURE: dict[str, str] = {
    "encoder": "encoder_name",
    "encoder_depth": "encoder_depth",
    "decoder_channels": "decoder_channels",
    "clip_model": "clip_model",
    "use_correspondence": "use_correspondence",
    "use_interaction": "use_interaction",
    "use_regularization": "use_regularization",
    "top_k": "top_k",
    "heads": "heads",
    "variant": "variant",
    "residual": "residual",
    "correspondence_residual": "correspondence_residual",
    "unit_scale": "unit_scale",
    "class_pool": "class_pool",
    "class_prior": "class_prior",
    "use_grouping": "use_grouping",
    "grouping_level": "grouping_level",
    "num_groups": "num_groups",
    "grouping_layers": "grouping_layers",
    "grouping_activation": "grouping_activation",
}
"""The :class:`~cosegkit.engine.TrainConfig` fields an LCCo source sets, by the key of its model ``config.json``."""

UFO_ARCHITECTURE: dict[str, str] = {"encoder": "encoder_name", "ufo_dim": "dim"}
"""The :class:`~cosegkit.engine.TrainConfig` fields a UFO source sets, by the key of its model ``config.json``."""

_SWITCHES = {  # boolean settings: the flag that sets each value
    "use_correspondence": {False: "--no-correspondence"},
    "use_interaction": {False: "--no-interaction"},
    "use_regularization": {False: "--no-regularization"},
    "use_grouping": {True: "--grouping"},
    "residual": {True: "--residual", False: "--no-residual"},
    "correspondence_residual": {True: "--correspondence-residual", False: "--no-correspondence-residual"},
    "unit_scale": {True: "--unit-scale", False: "--no-unit-scale"},
}

# the weights indexed by the source's classes, by architecture
_CLASS_INDEXED = {"lcco": ("regularization.mlp3.",), "ufo": ("classifier.",)}

_ARTICLED = {"lcco": "an LCCo", "ufo": "a UFO"}

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _given_flag(name: str, value: Any) -> str:
    """The command-line flag (with its value) that sets TrainConfig field ``name`` to ``value``."""
    if name in _SWITCHES and value in _SWITCHES[name]:
        return _SWITCHES[name][value]
    return f"--{name.replace('_', '-')} {_shown(value)}"


def source_folder(init_from: str) -> Path:
    """The model folder that ``init_from`` names: a model folder, a run folder's ``model/``, or a hub download.

    Raises:
        CosegValueError: not a model folder (a run that has not finished, a folder without
            ``config.json``), or neither a folder here nor a reachable hub name. The message
            names ``--init-from``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models import UFO
        >>> from cosegkit.engine.finetune import source_folder
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=2, dim=16).save_pretrained(run / "model")
        >>> source_folder(str(run)) == run / "model"  # a run folder gives its model/
        True
        >>> source_folder(str(run / "missing"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: --init-from '.../missing': no such folder, and not a hub name ...
    """
    from cosegkit.models.lcco import CONFIG_NAME, WEIGHTS_NAME, LCCo, model_folder

    path = Path(init_from)
    if path.is_dir():
        folder = model_folder(path)
        if (folder / "checkpoints").is_dir() and not (folder / WEIGHTS_NAME).is_file():
            raise CosegValueError(
                f"--init-from {init_from!r} is a run folder whose run has not finished (no model/ yet): finish it "
                f"(cosegkit train --out {init_from} --resume), then fine-tune from it"
            )
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise CosegValueError(
                f"--init-from {init_from!r} is not a model folder (expected {CONFIG_NAME} and {WEIGHTS_NAME}): pass "
                f"a cosegkit train run folder, its model/, a save_pretrained folder or a hub name (org/name)"
            )
        return folder
    if path.exists():
        raise CosegValueError(f"--init-from {init_from!r} is a file; pass a model folder, a run folder or a hub name")
    if not _HUB_NAME.match(init_from):
        raise CosegValueError(
            f"--init-from {init_from!r}: no such folder, and not a hub name (org/name); pass a model folder, a run "
            f"folder or a hub name"
        )
    try:
        return LCCo._download(init_from)
    except WeightsUnavailableError as err:
        raise CosegValueError(
            f"--init-from {init_from!r}: no such folder here, and the hub did not give it ({err})"
        ) from err


def _read_source(folder: Path) -> tuple[str, dict[str, Any]]:
    from cosegkit.models.loading import architecture, read_model_config

    try:
        return architecture(folder), read_model_config(folder)
    except WeightsUnavailableError as err:
        raise CosegValueError(f"--init-from: {err}") from err


def _uses_clip(settings: dict[str, Any]) -> bool:
    return bool(settings.get("use_interaction") or settings.get("use_regularization"))


def inherit_architecture(config: Any) -> Any:
    """``config`` with the architecture of its ``init_from`` model (see the module's text).

    A field left at its :class:`~cosegkit.engine.TrainConfig` default takes the source's value;
    a field set to another value than the source's is refused. Idempotent: a config that
    already holds the source's architecture comes back equal.

    Raises:
        CosegValueError: a conflicting setting (the message names its flags), or a source
            that cannot be read.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models import UFO
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.finetune import inherit_architecture
        >>> folder = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=2, dim=16).save_pretrained(
        ...     Path(tempfile.mkdtemp()) / "ufo")
        >>> config = inherit_architecture(TrainConfig(init_from=str(folder), steps=10))
        >>> config.model, config.encoder, config.ufo_dim, config.encoder_weights, config.steps
        ('ufo', 'resnet18', 16, None, 10)
        >>> inherit_architecture(TrainConfig(init_from=str(folder), ufo_dim=32))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: --init-from '...' sets the architecture (a UFO model): --ufo-dim 32 (the source's ufo_dim: 16); ...
    """
    from cosegkit.engine.config import TrainConfig

    arch, settings = _read_source(source_folder(config.init_from))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    absent: set[str] = set()
    if arch == "ufo":
        inherited: dict[str, Any] = {"model": "ufo", **{f: settings[k] for f, k in UFO_ARCHITECTURE.items()}}
        absent = {f for f in LCCO_ARCHITECTURE if f not in inherited}  # LCCo's modules: UFO has none
        inherited.update({f: defaults[f] for f in absent})
    else:
        inherited = {"model": "lcco", **{f: settings.get(k) for f, k in LCCO_ARCHITECTURE.items()}}
        inherited["decoder_channels"] = [int(c) for c in inherited["decoder_channels"]]
        if not _uses_clip(settings):  # no CLIP in the source: the run's own (e.g. for pseudo masks)
            inherited.pop("clip_model")
    conflicts = [
        f"{_given_flag(name, getattr(config, name))} "
        + ("(the source, a UFO, has no such setting)" if name in absent else f"(the source's {name}: {_shown(value)})")
        for name, value in inherited.items()
        if getattr(config, name) != defaults[name] and getattr(config, name) != value
    ]
    if config.encoder_weights not in (None, defaults["encoder_weights"]):
        conflicts.append(f"--encoder-weights {config.encoder_weights} (the weights are the source's)")
    if "clip_model" in inherited and config.clip_pretrained not in (None, defaults["clip_pretrained"]):
        conflicts.append(f"--clip-pretrained {config.clip_pretrained} (the CLIP's weights are the source's)")
    if conflicts:
        raise CosegValueError(
            f"--init-from {config.init_from!r} sets the architecture ({_ARTICLED[arch]} model): {'; '.join(conflicts)}; "
            f"drop these flags, or train a new model without --init-from"
        )
    inherited["encoder_weights"] = None
    if "clip_model" in inherited:
        inherited["clip_pretrained"] = None
    return dataclasses.replace(config, **inherited)


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def init_model(config: Any, groups: Sequence[Any] | None = None) -> nn.Module:
    """The model of a fine-tuning run: the source's weights in a model built for ``config``'s data.

    ``config`` is resolved by :func:`inherit_architecture`. The new model is built with the
    source's constructor settings, ``config``'s image and set sizes and class oracle, and the
    new run's vocabulary (LCCo: :meth:`TrainConfig.vocabulary
    <cosegkit.engine.TrainConfig.vocabulary>`; UFO: the training classes), initialised from
    ``config.seed``; then every weight of the source is loaded except those indexed by the
    source's classes when the classes differ (logged).

    Example:
        A UFO trained on two classes, fine-tuned on the synthetic world's four: the head starts
        afresh, everything else is the source's:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from cosegkit.models import UFO
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.finetune import inherit_architecture, init_model
        >>> source = UFO(encoder_name="resnet18", encoder_weights=None, classnames=["a", "b"], dim=16)
        >>> folder = source.save_pretrained(Path(tempfile.mkdtemp()) / "ufo")
        >>> config = inherit_architecture(TrainConfig(init_from=str(folder), world_classes=4, image_size=32))
        >>> model = init_model(config)
        >>> model.classifier.out_features, len(model.classnames)
        (4, 4)
        >>> torch.equal(model.intra_mlp.weight, source.intra_mlp.weight)
        True
    """
    from cosegkit.engine.config import training_class_names

    folder = source_folder(config.init_from)
    arch, settings = _read_source(folder)
    if arch != config.model:
        raise CosegValueError(
            f"--init-from {config.init_from!r} now holds a {arch} model, but this run trains a {config.model}: "
            f"the source changed since the run started"
        )
    if arch == "ufo":
        from cosegkit.models.ufo import UFO

        source = UFO.from_pretrained(folder)
        classnames = training_class_names(config, groups)
        kwargs = {k: v for k, v in settings.items() if k not in ("classnames", "num_classes", "image_size", "set_size")}
        torch.manual_seed(config.seed)
        model = UFO(
            **kwargs,
            encoder_weights=None,
            classnames=classnames,
            image_size=config.image_size,
            set_size=config.set_size,
        )
        fresh = list(source.classnames or ()) != classnames
        what = f"its classes ({len(source.classnames or ())} -> {len(classnames)})" if fresh else ""
    else:
        from cosegkit.clip.vocabulary import DEFAULT_TEMPLATES, DEFAULT_VOCABULARY
        from cosegkit.models.lcco import LCCo

        source = LCCo.from_pretrained(folder)
        names, templates = config.vocabulary()
        names = list(DEFAULT_VOCABULARY if names is None else names)
        templates = list(DEFAULT_TEMPLATES if templates is None else templates)
        clip = source.clip
        fresh = False
        what = ""
        if clip is not None and (list(clip.classnames), list(clip.templates)) != (names, templates):
            fresh = list(clip.classnames) != names
            log.info(
                "--init-from: the vocabulary differs from the source's (%d class names, %d templates -> %d, %d): "
                "the CLIP's text bank is rebuilt for it",
                len(clip.classnames),
                len(clip.templates),
                len(names),
                len(templates),
            )
            clip.set_vocabulary(names, templates)
            what = "the class names"
        kwargs = {
            k: v
            for k, v in settings.items()
            if k not in ("clip_model", "classnames", "templates", "image_size", "set_size", "class_oracle")
        }
        torch.manual_seed(config.seed)
        model = LCCo(
            **kwargs,
            clip=clip,
            encoder_weights=None,
            clip_pretrained=None,
            image_size=config.image_size,
            set_size=config.set_size,
            class_oracle=config.class_oracle,
        )
    state = source.state_dict()
    if fresh:
        prefixes = _CLASS_INDEXED[arch]
        dropped = sorted(k for k in state if k.startswith(prefixes))
        state = {k: v for k, v in state.items() if k not in dropped}
        if dropped:
            log.info(
                "--init-from: %s differ from the source's, so %s (indexed by the classes) starts afresh from the "
                "seed; every other weight is the source's",
                what,
                ", ".join(sorted({p.rstrip(".") for p in prefixes})),
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected = {k for k in model.state_dict() if k not in state}
    if unexpected or set(missing) != expected:
        raise CosegValueError(
            f"--init-from {config.init_from!r}: its weights do not fit the model built from its own config "
            f"(missing {sorted(set(missing))[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return model
