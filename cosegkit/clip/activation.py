"""Which open_clip architecture a CLIP's weights were trained in: QuickGELU or GELU.

OpenAI trained its CLIPs with QuickGELU, :math:`x \\, \\sigma(1.702 x)`; open_clip's
``"ViT-B-16"``, ``"RN50"``, ... are the GELU architectures, and it names the QuickGELU ones
``"ViT-B-16-quickgelu"``, ``"RN50-quickgelu"``, ... Both take the same weights, so open_clip
builds ``("ViT-B-16", "openai")`` with the wrong activation and only warns; a local file of
OpenAI's weights under ``"ViT-B-16"`` it builds without a word. The weights then run through
GELU, and the embeddings drift away from the CLIP that was trained.

:func:`trained_architecture` picks the architecture the weights were trained in: for a weights
tag, from open_clip's pretrained config (its ``quick_gelu`` field); for a local file, from what
the file says about itself (OpenAI's TorchScript archive or state-dict format, or the Hugging
Face download folder of a QuickGELU tag). :meth:`FrozenClip.from_name
<cosegkit.clip.FrozenClip.from_name>` builds what it picks.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cosegkit.errors import CosegValueError

__all__ = ["OPENAI_ONLY_KEYS", "ArchitectureChoice", "quick_gelu_architecture", "trained_architecture"]

OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Entries of OpenAI's CLIP state dicts that open_clip's own state dicts lack."""

QUICK_GELU_SUFFIX = "-quickgelu"
_registered_folder: Path | None = None


@dataclass
class ArchitectureChoice:
    """What :func:`trained_architecture` decided.

    Attributes:
        name: the open_clip architecture to build.
        state_dict: the weights, already read, when the file needed reading by cosegkit
            (a TorchScript archive, or a state dict in OpenAI's format, stripped of
            :data:`OPENAI_ONLY_KEYS`); ``None`` when open_clip loads the weights itself.
        note: one line saying what was corrected and why; ``None`` when nothing was.

    Example:
        >>> from cosegkit.clip.activation import ArchitectureChoice
        >>> ArchitectureChoice("RN50")
        ArchitectureChoice(name='RN50', note=None)
    """

    name: str
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    note: str | None = None


def _config(model_name: str) -> dict[str, Any] | None:
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")):
        return None  # the config comes with the weights there
    return open_clip.get_model_config(model_name)


def _uses_quick_gelu(model_name: str) -> bool | None:
    """True or False for a registered architecture; None when its config is not known here."""
    cfg = _config(model_name)
    return None if cfg is None else bool(cfg.get("quick_gelu", False))


def quick_gelu_architecture(model_name: str) -> str:
    """The open_clip name of ``model_name``'s QuickGELU twin: same config, ``quick_gelu=True``.

    open_clip's own ``"<name>-quickgelu"`` when it has one with that config; otherwise such a
    config is registered with open_clip (in a temporary folder) under that name, so that the
    architecture can be rebuilt by name, as :meth:`LCCo.from_pretrained
    <cosegkit.LCCo.from_pretrained>` does.

    Raises:
        CosegValueError: ``model_name`` is not a registered open_clip architecture.

    Example:
        >>> from cosegkit.clip.activation import quick_gelu_architecture
        >>> quick_gelu_architecture("ViT-B-16"), quick_gelu_architecture("ViT-B-16-quickgelu")
        ('ViT-B-16-quickgelu', 'ViT-B-16-quickgelu')
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> import open_clip
        >>> name = quick_gelu_architecture("coseg-test-tiny")  # open_clip has no such twin: registered
        >>> name, open_clip.get_model_config(name)["quick_gelu"]
        ('coseg-test-tiny-quickgelu', True)
    """
    import open_clip

    global _registered_folder
    base = _config(model_name)
    if base is None:
        raise CosegValueError(f"{model_name!r} is not a registered open_clip architecture; see open_clip.list_models()")
    if base.get("quick_gelu"):
        return model_name
    wanted = {**base, "quick_gelu": True}
    twin = model_name + QUICK_GELU_SUFFIX
    existing = open_clip.get_model_config(twin)
    if existing == wanted:
        return twin
    if existing is not None:  # a different architecture under that name: keep clear of it
        twin = model_name + "-cosegkit" + QUICK_GELU_SUFFIX
    if _registered_folder is None:
        _registered_folder = Path(tempfile.mkdtemp(prefix="cosegkit-quickgelu-configs-"))
    path = _registered_folder / f"{twin}.json"
    path.write_text(json.dumps(wanted))
    open_clip.add_model_config(path)
    return twin


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def _unwrap(checkpoint: Any) -> Any:
    """open_clip's reading of a checkpoint: the ``state_dict`` entry, without DDP's ``module.``."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if isinstance(checkpoint, dict) and checkpoint and next(iter(checkpoint)).startswith("module."):
        checkpoint = {k[len("module.") :]: v for k, v in checkpoint.items()}
    return checkpoint


def _read_openai_format(path: str) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """The file's state dict and its format when cosegkit must read it; ``(None, None)`` otherwise.

    A TorchScript archive (how OpenAI distributes its CLIPs) is read with
    :func:`torch.jit.load` and its ``state_dict()``; any other file with ``weights_only=True``
    or safetensors, never unpickling code. Files that fail to read are left to open_clip, whose
    error then says why.
    """
    if path.endswith((".npz", ".npy")):
        return None, None
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit is deprecated; OpenAI's downloads are TorchScript all the same
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            state = dict(torch.jit.load(path, map_location="cpu").state_dict())
        if any(key in state for key in OPENAI_ONLY_KEYS):
            return state, "OpenAI's TorchScript archive format"
        return state, None  # a TorchScript archive of some other CLIP: open_clip cannot read these
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
        except Exception:
            return None, None
        if not any(key in keys for key in OPENAI_ONLY_KEYS):
            return None, None
        from safetensors.torch import load_file

        return load_file(path), "OpenAI's state-dict format"
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None, None
    state = _unwrap(checkpoint)
    if isinstance(state, dict) and any(key in state for key in OPENAI_ONLY_KEYS):
        return dict(state), "OpenAI's state-dict format"
    return None, None


def _hub_download_of_quick_gelu_tag(path: str) -> str | None:
    """``"name/tag"`` when ``path`` lies in the Hugging Face cache folder of a QuickGELU tag's weights."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    parts = set(Path(path).parts) | set(Path(path).resolve().parts)
    for name, tag in open_clip.list_pretrained():
        cfg = get_pretrained_cfg(name, tag)
        hub = cfg.get("hf_hub", "")
        if not (cfg.get("quick_gelu") and hub):
            continue
        repo = os.path.split(hub)[0] if not hub.endswith("/") else hub.rstrip("/")
        if "models--" + repo.replace("/", "--") in parts:
            return f"{name}/{tag} ({repo})"
    return None


def _refusal(model_name: str, what: str) -> CosegValueError:
    import open_clip

    openai = [n for n, tag in open_clip.list_pretrained() if tag == "openai" and n.endswith(QUICK_GELU_SUFFIX)]
    return CosegValueError(
        f"the weights are {what}, trained with QuickGELU, but {model_name!r} is not an architecture "
        f"cosegkit can switch to QuickGELU; pass the QuickGELU architecture the weights belong to "
        f"(--clip-model on the command line), one of {', '.join(openai)}"
    )


def _plain_clip(model_name: str) -> bool:
    cfg = _config(model_name) or {}
    return not (
        cfg.get("custom_text")
        or "hf_model_name" in cfg.get("text_cfg", {})
        or "timm_model_name" in cfg.get("vision_cfg", {})
    )


def trained_architecture(model_name: str, pretrained: str | None) -> ArchitectureChoice:
    """The open_clip architecture to build for ``pretrained``: QuickGELU where the weights were trained so.

    Args:
        model_name: the open_clip architecture asked for, e.g. ``"ViT-B-16"``.
        pretrained: an open_clip weights tag, a path to a weights file (it must exist), or
            ``None`` (random weights: nothing to correct).

    Returns:
        The architecture to build, with the weights when they had to be read here and the one
        line that says what was corrected.

    Raises:
        CosegValueError: OpenAI weights under an architecture that has no QuickGELU setting
            (a timm or Hugging Face tower); the message names the architectures to pass.

    Example:
        >>> from cosegkit.clip.activation import trained_architecture
        >>> choice = trained_architecture("ViT-B-16", "openai")  # reads no weights
        >>> choice.name
        'ViT-B-16-quickgelu'
        >>> print(choice.note)
        open_clip's 'ViT-B-16' is the GELU architecture, but its 'openai' weights were trained with QuickGELU (open_clip's pretrained config says so): building 'ViT-B-16-quickgelu'
        >>> trained_architecture("ViT-B-16", "laion2b_s34b_b88k").note is None  # trained with GELU
        True
    """
    if pretrained is None or _uses_quick_gelu(model_name) is None:
        return ArchitectureChoice(model_name)
    from open_clip.pretrained import get_pretrained_cfg

    gelu = not _uses_quick_gelu(model_name)
    tag = get_pretrained_cfg(model_name, pretrained)
    if tag or not os.path.isfile(pretrained):  # a weights tag, as open_clip decides
        if gelu and tag.get("quick_gelu"):
            name = quick_gelu_architecture(model_name)
            return ArchitectureChoice(
                name,
                note=f"open_clip's {model_name!r} is the GELU architecture, but its {pretrained!r} weights were "
                f"trained with QuickGELU (open_clip's pretrained config says so): building {name!r}",
            )
        return ArchitectureChoice(model_name)
    state, fmt = _read_openai_format(pretrained)
    if fmt is not None and state is not None:
        state = {k: v for k, v in state.items() if k not in OPENAI_ONLY_KEYS}
    what = f"OpenAI CLIP weights in {fmt}" if fmt else None
    if what is None and gelu:
        hub = _hub_download_of_quick_gelu_tag(pretrained)
        what = f"the Hugging Face download of open_clip's {hub} weights" if hub else None
    if what is None or not gelu:
        return ArchitectureChoice(model_name, state)
    if not _plain_clip(model_name):
        raise _refusal(model_name, what)
    name = quick_gelu_architecture(model_name)
    return ArchitectureChoice(
        name,
        state,
        note=f"{pretrained!r} holds {what}, trained with QuickGELU, but open_clip's {model_name!r} is the "
        f"GELU architecture: building {name!r}",
    )
