"""Load any saved cosegkit model, LCCo or a peer, by what its ``config.json`` says it is."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosegkit.errors import WeightsUnavailableError
from cosegkit.models.lcco import CONFIG_NAME, LCCo, model_folder, read_config
from cosegkit.models.ufo import UFO, read_ufo_config

__all__ = ["ARCHITECTURES", "architecture", "load_model", "read_model_config"]

ARCHITECTURES: dict[str, type[nn.Module]] = {"lcco": LCCo, "ufo": UFO}
"""The model classes by the ``architecture`` their ``config.json`` names (LCCo's, written before
the key existed, names none)."""


def architecture(folder: str | os.PathLike[str]) -> str:
    """The architecture a model folder holds: ``"lcco"`` or ``"ufo"`` (reads ``config.json`` only).

    Raises:
        WeightsUnavailableError: no readable ``config.json``, or an architecture cosegkit does not know.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models import UFO
        >>> from cosegkit.models.loading import architecture
        >>> folder = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=2, dim=16).save_pretrained(
        ...     Path(tempfile.mkdtemp()) / "ufo")
        >>> architecture(folder)
        'ufo'
    """
    config_file = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(config_file.read_text())
    except FileNotFoundError as err:
        raise WeightsUnavailableError(f"{str(Path(folder))!r} is not a model folder: no {CONFIG_NAME} in it") from err
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsUnavailableError(f"{str(config_file)!r} is not a valid model config: {err}") from err
    name = data.get("architecture", "lcco") if isinstance(data, dict) else None
    if name == "segclip":
        raise WeightsUnavailableError(
            f"{str(Path(folder))!r} holds a SegCLIP model, a zero-shot co-segmenter: use it with --zero-shot "
            f"--method segclip --clip-pretrained FOLDER (SegClip.from_pretrained and SegClipCoseg in Python)"
        )
    if name not in ARCHITECTURES:
        raise WeightsUnavailableError(
            f"{str(config_file)!r} names the architecture {name!r}; this cosegkit loads {sorted(ARCHITECTURES)}"
        )
    return name


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The stored constructor settings of any model folder (``image_size``, ``set_size``... included); loads no weights.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models import UFO, read_model_config
        >>> folder = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=2, dim=16, image_size=64
        ...              ).save_pretrained(Path(tempfile.mkdtemp()) / "ufo")
        >>> config = read_model_config(folder)
        >>> config["encoder_name"], config["image_size"]
        ('resnet18', 64)
    """
    if architecture(folder) == "ufo":
        return read_ufo_config(folder)
    return read_config(folder)


def load_model(name_or_path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a saved model of any architecture: a ``save_pretrained`` folder, a run folder, or a hub id.

    The folder's ``config.json`` says which class rebuilds it (:data:`~cosegkit.models.loading.ARCHITECTURES`); a run
    folder of ``cosegkit train`` loads its ``model/``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models import UFO, load_model
        >>> folder = UFO(encoder_name="resnet18", encoder_weights=None, num_classes=2, dim=16).save_pretrained(
        ...     Path(tempfile.mkdtemp()) / "ufo")
        >>> type(load_model(folder)).__name__
        'UFO'
    """
    path = Path(name_or_path)
    path = model_folder(path) if path.is_dir() else LCCo._download(str(name_or_path))
    cls = ARCHITECTURES[architecture(path)]
    return cls.from_pretrained(path, map_location=map_location)
