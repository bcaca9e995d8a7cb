"""Sharing a trained model on the Hugging Face hub: :func:`push_to_hub` and the model card it writes.

A pushed repository holds the model folder's files as ``save_pretrained`` writes them
(``config.json``, ``model.safetensors`` and, for an LCCo with CLIP, ``clip.safetensors`` and
``open_clip_config/``) and a generated model card, ``README.md`` (:func:`model_card`). When the
folder is the ``model/`` of a ``cosegkit train`` run, the repository also holds the run's
settings (``training_config.json``), its held-out scores (``eval.json``, ``eval_photos.json``)
and its figure, and the card shows them. :meth:`LCCo.from_pretrained("ORG/NAME")
<cosegkit.LCCo.from_pretrained>` loads the model back; on the command line,
:func:`resolve_model_folder` turns ``--model ORG/NAME`` into the local copy of the repository.

``huggingface_hub`` is imported only inside the functions that talk to the hub, so importing
this module is cheap; writing a card reads JSON files only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosegkit.errors import CosegValueError, HubError

__all__ = [
    "PushReport",
    "check_figures",
    "check_model_folder",
    "check_repo_id",
    "default_figures",
    "hub_api",
    "hub_name",
    "model_card",
    "push_to_hub",
    "resolve_model_folder",
    "run_folder",
    "save_then_push",
    "write_repo_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
TRAINING_CONFIG_NAME = "training_config.json"
"""The run's ``config.json`` in the repository (the model's own ``config.json`` keeps that name)."""
EVAL_FILES = ("eval.json", "eval_photos.json")
FIGURE_NAMES = ("figure.png", "curves.png")
"""The figures a run folder (or the folder around it) may hold: ``cosegkit demo``'s masks and ``cosegkit plot``'s curves."""
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg")
ARCHITECTURE_NAMES = {"lcco": "LCCo", "ufo": "UFO", "segclip": "SegCLIP"}
LOGIN_HINT = (
    "log in with `hf auth login` (`huggingface-cli login` in older huggingface_hub), set HF_TOKEN, or pass --token"
)

MODEL_PATTERNS = ("*.json", "*.safetensors")
"""The files of a repository that loading a model reads (``open_clip_config/*.json`` included): what is downloaded."""
WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".json", ".onnx", ".pt2")
"""A name ending in one of these is a file, never a hub repository (``weights/segclip.bin``)."""

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

CITATION = """@misc{duan_lcco,
  title  = {{LCCo}: Lending {CLIP} to Co-Segmentation},
  author = {Duan, Xin and Yang, Yan and Pan, Liyuan and Liu, Xiabi},
  note   = {arXiv preprint}
}"""


def check_repo_id(repo_id: Any, name: str = "repo_id") -> str:
    """``repo_id`` if it names a hub model repository as ``ORG/NAME``; ``name`` is the argument named in the error.

    Both parts follow the hub's rules: letters, digits, ``-``, ``_`` and ``.``, no ``--`` or
    ``..``, not ending in ``.git``, at most 96 characters in all. The namespace is required,
    so that the card's ``from_pretrained("ORG/NAME")`` is the name that loads the model.

    Raises:
        CosegValueError: anything else, with ``name`` (e.g. ``--repo``) in the message.

    Example:
        >>> from cosegkit.hub import check_repo_id
        >>> check_repo_id("my-lab/lcco-pascal")
        'my-lab/lcco-pascal'
        >>> check_repo_id("lcco-pascal", "--repo")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegValueError: --repo 'lcco-pascal' is not a hub model repository name:
        expected ORG/NAME (your user name or an organisation, a slash, the model's name), e.g. my-lab/lcco-pascal
    """
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    valid = (
        len(parts) == 2
        and len(repo_id) <= 96
        and all(_REPO_PART.match(part) for part in parts)
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith((".git", "."))
    )
    if not valid:
        raise CosegValueError(
            f"{name} {repo_id!r} is not a hub model repository name: expected ORG/NAME (your user name or an "
            f"organisation, a slash, the model's name), e.g. my-lab/lcco-pascal"
        )
    return repo_id


def hub_name(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``spec`` reads as a hub model name ``ORG/NAME[@REVISION]``, else ``None``.

    ``revision`` (a branch, tag or commit) is ``None`` without ``@``. A name that ends like a
    weights file (``.bin``, ``.pt``, ``.safetensors``...) is a file path, not a repository. This
    looks at the text only: whether a local path of that name exists is the caller's question
    (:func:`resolve_model_folder` asks it first).

    Example:
        >>> from cosegkit.hub import hub_name
        >>> hub_name("my-lab/lcco-pascal"), hub_name("my-lab/lcco-pascal@v1.0")
        (('my-lab/lcco-pascal', None), ('my-lab/lcco-pascal', 'v1.0'))
        >>> hub_name("runs/pascal/model"), hub_name("./pascal"), hub_name("weights/segclip.bin")
        (None, None, None)
    """
    if not isinstance(spec, str):
        return None
    repo_id, at, revision = spec.partition("@")
    if at and (not revision or any(c.isspace() for c in revision) or revision != revision.strip("/")):
        return None
    try:
        check_repo_id(repo_id)
    except CosegValueError:
        return None
    if repo_id.lower().endswith(WEIGHT_FILE_SUFFIXES):
        return None
    return repo_id, (revision if at else None)


def resolve_model_folder(spec: str | os.PathLike[str], flag: str = "--model") -> Path:
    """The local folder a model argument names: the path itself if it exists, else the hub repository's snapshot.

    This is what every command-line flag that takes a trained model (``--model`` of ``segment``,
    ``evaluate`` and ``export``; ``--clip-pretrained`` of ``--method segclip``) does first, once,
    so that everything after reads one local folder:

    - a path that exists is returned unchanged, whatever it looks like: a local folder always
      wins over a hub name;
    - ``ORG/NAME`` or ``ORG/NAME@REVISION`` (:func:`hub_name`) is downloaded with
      ``huggingface_hub.snapshot_download`` (its ``.json`` and ``.safetensors`` files, into the
      hub cache, ``HF_HUB_CACHE``; a private repository takes the usual token, ``HF_TOKEN`` or
      ``hf auth login``), and the snapshot folder is returned. A copy already in the cache is
      used offline (``HF_HUB_OFFLINE=1``) or when the hub cannot be reached;
    - anything else is returned unchanged, for the caller to report as the missing folder it is.

    Args:
        spec: a local path, or ``ORG/NAME[@REVISION]``.
        flag: the argument named in errors (``--model``, ``--clip-pretrained``).

    Raises:
        HubError: a hub name that cannot be fetched (offline and not in the cache, no such
            repository or revision, no network) or that holds no cosegkit model; one line
            naming ``flag`` and what to do.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import resolve_model_folder
        >>> local = Path(tempfile.mkdtemp())
        >>> resolve_model_folder(local) == local  # an existing path is used as it is
        True
        >>> str(resolve_model_folder("runs/pascal/model"))  # not a hub name: left for the caller to report
        'runs/pascal/model'

        A hub name downloads once, then is read from the cache::

            folder = resolve_model_folder("my-lab/lcco-pascal")      # .../snapshots/<commit>
            folder = resolve_model_folder("my-lab/lcco-pascal@v1")   # a branch, tag or commit
    """
    path = Path(spec)
    named = None if path.exists() else hub_name(os.fspath(spec))
    if named is None:
        return path
    repo_id, revision = named
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_PATTERNS)))
    except (TypeError, AttributeError, NameError):  # a wrong call, not the hub's answer: keep the traceback
        raise
    except Exception as err:
        raise _download_error(err, os.fspath(spec), flag, repo_id, revision) from err
    if not (folder / CONFIG_NAME).is_file():
        raise HubError(
            f"{flag} {os.fspath(spec)!r}: the hub repository {repo_id} holds no cosegkit model (no {CONFIG_NAME}"
            f"{f' at {revision!r}' if revision else ''}); pass the ORG/NAME of a model uploaded with cosegkit push "
            f"or save_pretrained(push_to_hub=True), or a local model folder"
        )
    return folder


def _download_error(err: Exception, spec: str, flag: str, repo_id: str, revision: str | None) -> HubError:
    """One line for a failed ``snapshot_download`` of the hub name ``spec`` given to ``flag``."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause = err.__cause__ if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None else err
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    status = getattr(getattr(cause, "response", None), "status_code", None)
    where = f"{flag} {spec!r}"
    local = "or pass a local model folder"
    if isinstance(err, RevisionNotFoundError):
        return HubError(
            f"{where}: the hub repository {repo_id} has no revision {revision!r}; name one of its branches, tags or "
            f"commits after '@' (without '@...' the main branch is used)"
        )
    if isinstance(err, RepositoryNotFoundError) or status == 401:
        return HubError(
            f"{where}: no local folder of that name, and no model repository {repo_id} on the hub that this token "
            f"may read (the hub answered {status or type(err).__name__}); check the path or the name ORG/NAME, or "
            f"for a private or gated repository log in (`hf auth login`, or set HF_TOKEN)"
        )
    if type(err).__name__ == "IncompleteSnapshotError":  # huggingface_hub >= 1.0
        return HubError(
            f"{where}: the hub cache holds an incomplete copy of {repo_id} and the hub cannot be reached to complete "
            f"it; run again online (HF_HUB_OFFLINE unset), {local}"
        )
    offline = isinstance(cause, OfflineModeIsEnabled) or (
        cause is err and isinstance(err, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE
    )
    if offline:
        return HubError(
            f"{where}: no local folder of that name, and HF_HUB_OFFLINE is set while the hub cache "
            f"({constants.HF_HUB_CACHE}) holds no copy of {repo_id}{f'@{revision}' if revision else ''}; unset "
            f"HF_HUB_OFFLINE to download it once, {local}"
        )
    if isinstance(cause, HfHubHTTPError) and status is not None:
        return HubError(
            f"{where}: the hub ({constants.ENDPOINT}) answered {status} to the download of {repo_id}: {first}; retry "
            f"later, {local}"
        )
    return HubError(
        f"{where}: no local folder of that name, and the hub ({constants.ENDPOINT}) could not be reached to download "
        f"{repo_id} ({type(cause).__name__}: {first}); check the network (or HF_ENDPOINT) and retry, {local}"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_model_folder(path: str | os.PathLike[str], name: str = "folder") -> tuple[Path, dict[str, Any]]:
    """The model folder ``path`` names (a run folder gives its ``model/``) and its ``config.json``.

    Raises:
        CosegValueError: no model ``config.json``, an architecture cosegkit does not know, or
            missing weights; the message names the argument ``name`` (e.g. ``--model``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import check_model_folder
        >>> from cosegkit.testing import tiny_model
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = tiny_model().save_pretrained(run / "model")
        >>> folder, config = check_model_folder(run)  # a run folder gives its model/
        >>> folder == run / "model", config["model"]["encoder_name"]
        (True, 'tu-test_convnext')
    """
    from cosegkit.models.lcco import model_folder

    folder = model_folder(path)
    remedy = f"pass {name} a run folder of cosegkit train, its model/, or a folder written by save_pretrained"
    if not folder.is_dir():
        raise CosegValueError(f"{name} {os.fspath(path)!r} is not a model folder (no such folder); {remedy}")
    config = _read_json(folder / CONFIG_NAME)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CosegValueError(
            f"{name} {os.fspath(path)!r} is not a model folder (no model {CONFIG_NAME} in {str(folder)!r}); {remedy}"
        )
    architecture = config.get("architecture", "lcco")
    if architecture not in ARCHITECTURE_NAMES:
        raise CosegValueError(
            f"{name} {os.fspath(path)!r} holds a model of architecture {architecture!r}, which this cosegkit "
            f"does not know ({sorted(ARCHITECTURE_NAMES)})"
        )
    missing = [n for n in (WEIGHTS_NAME, *_clip_files(config)) if not (folder / n).is_file()]
    if missing:
        raise CosegValueError(
            f"{name} {os.fspath(path)!r} is not a complete model folder: {', '.join(missing)} missing in "
            f"{str(folder)!r}; {remedy}"
        )
    return folder, config


def _clip_files(config: dict[str, Any]) -> list[str]:
    settings = config["model"]
    with_clip = config.get("architecture", "lcco") == "lcco" and (
        settings.get("use_interaction") or settings.get("use_regularization")
    )
    return ["clip.safetensors"] if with_clip else []


def run_folder(folder: str | os.PathLike[str]) -> Path | None:
    """The ``cosegkit train`` run folder around a model folder, or ``None`` for a model folder on its own.

    A run folder holds the model as ``model/`` beside the run's own ``config.json`` (a
    :class:`~cosegkit.engine.TrainConfig`, which has no ``"model"`` settings dict).

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import run_folder
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "model").mkdir()
        >>> _ = (run / "model" / "config.json").write_text(json.dumps({"model": {"encoder_name": "resnet18"}}))
        >>> run_folder(run / "model") is None  # no run config beside it yet
        True
        >>> _ = (run / "config.json").write_text(json.dumps({"dataset": "synthetic", "model": "lcco"}))
        >>> run_folder(run / "model") == run.resolve()
        True
    """
    parent = Path(folder).resolve().parent
    config = _read_json(parent / CONFIG_NAME)
    if Path(folder).resolve().name != "model" or not isinstance(config, dict) or isinstance(config.get("model"), dict):
        return None
    return parent


def default_figures(run: Path | None) -> list[Path]:
    """The figures of a run: ``figure.png`` and ``curves.png`` in the run folder, else in the folder around it.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import default_figures
        >>> demo = Path(tempfile.mkdtemp())  # cosegkit demo writes figure.png beside its runs
        >>> (demo / "lcco").mkdir()
        >>> _ = (demo / "figure.png").write_bytes(b"")
        >>> [p.name for p in default_figures(demo / "lcco")]
        ['figure.png']
        >>> _ = (demo / "lcco" / "curves.png").write_bytes(b"")  # the run's own figure comes first
        >>> [str(p.relative_to(demo)) for p in default_figures(demo / "lcco")]
        ['lcco/curves.png']
    """
    if run is None:
        return []
    for where in (run, run.parent):
        found = [where / name for name in FIGURE_NAMES if (where / name).is_file()]
        if found:
            return found
    return []


def check_figures(figures: Sequence[str | os.PathLike[str]], name: str = "figure") -> list[Path]:
    """``figures`` as paths, once each is an image file the card can show.

    Raises:
        CosegValueError: a missing file, not an image, a name the repository uses for another
            file, or two figures of one name; the message names the argument ``name``.

    Example:
        >>> from cosegkit.hub import check_figures
        >>> check_figures(["/no/curves.png"], "--figure")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegValueError: --figure '/no/curves.png': no such file; pass an image file (PNG, JPEG, SVG...)
    """
    paths = [Path(f) for f in figures]
    for path in paths:
        if not path.is_file():
            raise CosegValueError(f"{name} {os.fspath(path)!r}: no such file; pass an image file (PNG, JPEG, SVG...)")
        if path.suffix.lower() not in FIGURE_SUFFIXES:
            raise CosegValueError(
                f"{name} {os.fspath(path)!r} is not an image the hub shows in a card; pass one of "
                f"{', '.join(FIGURE_SUFFIXES)}"
            )
        if path.name in (CONFIG_NAME, CARD_NAME, TRAINING_CONFIG_NAME):
            raise CosegValueError(f"{name} {os.fspath(path)!r} would overwrite the repository's {path.name}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise CosegValueError(f"{name}: two figures share a file name ({names}); rename one")
    return paths


# ---------------------------------------------------------------------- the card
def _percent(value: Any) -> float | None:
    return round(100.0 * float(value), 2) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _on_off(value: Any) -> str:
    return "on" if value else "off"


def _classes(names: Any, shown: int = 12) -> str:
    if not names:
        return "none stored"
    names = list(names)
    listed = ", ".join(f"`{n}`" for n in names[:shown])
    return f"{len(names)}: {listed}" + (", ..." if len(names) > shown else "")


def _describe(architecture: str, settings: dict[str, Any], run_config: dict[str, Any] | None) -> tuple[str, list]:
    """A paragraph on what the model is, and the rows of its settings table."""
    rows: list[tuple[str, Any]] = []
    if architecture == "lcco":
        clip = settings.get("clip_model")
        with_clip = bool(settings.get("use_interaction") or settings.get("use_regularization"))
        text = (
            f"An **LCCo** co-segmentation model (Lending CLIP to Co-Segmentation; Duan et al.) as cosegkit builds "
            f"it: a `{settings.get('encoder_name')}` encoder and a U-Net style decoder segment every image of a set, "
            f"refined across the set by image-set correspondence and, through a frozen CLIP, by CLIP interaction and "
            f"CLIP regularization. Given a set of images that share an object class, it returns one mask per image "
            f"for the common object."
        )
        if settings.get("class_oracle"):
            text += (
                " It is a *class oracle*: trained told each set's true class, it needs that class at inference "
                "(`common_class`), so it cannot segment new images whose class is unknown."
            )
        rows += [
            ("encoder", f"`{settings.get('encoder_name')}` (depth {settings.get('encoder_depth')})"),
            ("decoder channels", settings.get("decoder_channels")),
            ("CLIP", f"`{clip}`" if with_clip else "none (both CLIP modules off)"),
        ]
        if with_clip and run_config is not None:
            start = run_config.get("clip_pretrained")
            rows.append(("CLIP weights at the start of training", f"`{start}`" if start else "random"))
        rows += [
            ("image-set correspondence (eq. 1-2)", _on_off(settings.get("use_correspondence"))),
            ("CLIP interaction (eq. 3-5)", _on_off(settings.get("use_interaction"))),
            ("CLIP regularization (eq. 6-8)", _on_off(settings.get("use_regularization"))),
            ("variant", f"`{settings.get('variant', 'paper')}`"),
        ]
        if settings.get("use_grouping"):
            rows.append(("set grouping", f"on (level {settings.get('grouping_level')})"))
        if with_clip:
            rows.append(("class vocabulary", _classes(settings.get("classnames"))))
        rows.append(("class oracle", "yes" if settings.get("class_oracle") else "no"))
    elif architecture == "ufo":
        text = (
            f"A **UFO** co-segmentation model (Unified Framework for co-Object segmentation; Su et al., IEEE TMM "
            f"2023) as cosegkit builds it, on a `{settings.get('encoder_name')}` encoder. Given a set of images that "
            f"share an object class, it returns one mask per image for the common object."
        )
        rows += [
            ("encoder", f"`{settings.get('encoder_name')}`"),
            ("transformer", f"dim {settings.get('dim')}, depth {settings.get('depth')}, heads {settings.get('heads')}"),
            (
                "classes",
                _classes(settings.get("classnames")) if settings.get("classnames") else settings.get("num_classes"),
            ),
        ]
    else:
        text = (
            "A **SegCLIP** model (a CLIP whose image tower groups patches into learnable group tokens) in cosegkit's "
            "format. cosegkit uses it as a zero-shot co-segmenter: `SegClipCoseg` names each set's common class from "
            "a vocabulary and masks it, with no co-segmentation training."
        )
        rows += [(key, settings.get(key)) for key in ("embed_dim", "image_size", "patch_size", "width", "layers")]
        rows.append(("group tokens", settings.get("num_groups")))
    if architecture != "segclip":
        rows += [("trained image size", settings.get("image_size")), ("trained set size", settings.get("set_size"))]
    return text, rows


def _usage(architecture: str, repo_id: str, settings: dict[str, Any]) -> str:
    local = repo_id.split("/")[1]
    size = settings.get("image_size") or 224
    n = settings.get("set_size") or 5
    if architecture == "segclip":
        python = f"""```python
from cosegkit.models import SegClip
from cosegkit.zeroshot import SegClipCoseg

segclip = SegClip.from_pretrained("{repo_id}")
zero_shot = SegClipCoseg(segclip, ["cat", "dog", "car"])  # the vocabulary to choose each set's class from
probs = zero_shot(images).probs  # images (B, N, 3, H, W), RGB in [0, 1] -> masks (B, N, 1, H, W)
```"""
        command = f"""```bash
cosegkit segment --zero-shot --method segclip --clip-pretrained {repo_id} photos/ --out masks/
cosegkit evaluate --zero-shot --method segclip --clip-pretrained {repo_id} --data icoseg=data/icoseg
```"""
    else:
        cls, module = ("LCCo", "cosegkit") if architecture == "lcco" else ("UFO", "cosegkit")
        python = f"""```python
import torch
from {module} import {cls}

model = {cls}.from_pretrained("{repo_id}").eval()
images = torch.rand(1, {n}, 3, {size}, {size})  # (B sets, N images, 3, H, W), RGB in [0, 1]
probs = model.predict(images)  # (B, N, 1, H, W) object probabilities
```

`cosegkit.load_model("{repo_id}")` loads it too, whatever its architecture."""
        command = f"""```bash
cosegkit segment --model {repo_id} photos/ --out masks/
cosegkit evaluate --model {repo_id} --data icoseg=data/icoseg
cosegkit export --model {repo_id} --out {local}.onnx
```"""
    flag = "--clip-pretrained" if architecture == "segclip" else "--model"
    return (
        f"## How to use\n\nWith cosegkit installed, the weights download on first use and are cached.\n\n"
        f"{python}\n\nOn the command line, `{flag}` takes the same name (`{repo_id}@REVISION` for a branch, tag "
        f"or commit), downloaded into the same cache:\n\n{command}\n"
    )


def _training(run_config: dict[str, Any] | None) -> str:
    if run_config is None:
        return (
            "## Training\n\nThis model was pushed from a folder outside a `cosegkit train` run, so its training "
            "settings are not recorded here.\n"
        )
    world = ""
    if run_config.get("dataset") in ("synthetic", "composite"):
        world = (
            f", a generated world of {run_config.get('world_classes')} classes (seed {run_config.get('world_seed')})"
        )
        if run_config.get("dataset") == "composite":
            world += f" made of the cut-outs of `{run_config.get('root')}` ({run_config.get('reader')} layout)"
    summary = (
        f"Trained with `cosegkit train` on **{run_config.get('dataset')}**{world}: {run_config.get('steps')} steps "
        f"of {run_config.get('batch_size')} sets of {run_config.get('set_size')} images at "
        f"{run_config.get('image_size')} px, learning rate {run_config.get('lr')}, seed {run_config.get('seed')}. "
        f"The run's full settings (`{TRAINING_CONFIG_NAME}` in this repository):"
    )
    settings = json.dumps(run_config, indent=2)
    return (
        f"## Training\n\n{summary}\n\n<details>\n<summary>{TRAINING_CONFIG_NAME}</summary>\n\n"
        f"```json\n{settings}\n```\n\n</details>\n"
    )


def _eval_rows(run: Path | None, run_config: dict[str, Any] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(file name, what was scored, its eval.json data)`` for each evaluation file of the run."""
    if run is None:
        return []
    config = run_config or {}
    rows = []
    for name in EVAL_FILES:
        data = _read_json(run / name)
        if not isinstance(data, dict) or _percent(data.get("J")) is None:
            continue
        if name == "eval_photos.json":
            what = "the held-out photos themselves, one group per class"
        elif config.get("dataset") == "synthetic":
            sets = (config.get("extra") or {}).get("eval_sets", 40)
            what = f"{sets} held-out sets of {config.get('eval_set_size')} images, other seeds of the training world"
        elif config.get("dataset") == "composite":
            what = f"sets of {config.get('eval_set_size')} images from the world of the held-out photos"
        else:
            groups = config.get("eval_classes") or []
            what = f"the groups {', '.join(groups)} of {config.get('dataset')}" if groups else "the held-out groups"
        rows.append((name, what, data))
    return rows


_PRESET_WORDS = {
    "ssnm": "each mask binarised at its own threshold min(mean + std, 0.8) (SSNM's rule)",
    "ufo": "each mask binarised at its own threshold min(mean + std, 0.5) (UFO's rule)",
    "fixed": "each mask binarised at 0.5 (GroupSeg's rule)",
}


def _evaluation(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    if not rows:
        return "## Evaluation\n\nNo held-out evaluation was recorded with this model (no `eval.json` in its run).\n"
    lines = ["| held-out data | file | P (%) | J (%) | images | binarisation |", "|---|---|---|---|---|---|"]
    presets = []
    for name, what, data in rows:
        preset = data.get("preset", "ssnm")
        presets.append(preset)
        lines.append(
            f"| {what} | `{name}` | {_percent(data.get('P')):.2f} | {_percent(data.get('J')):.2f} | "
            f"{data.get('images')} | `{preset}` |"
        )
    rules = "; ".join(f"`{p}`: {_PRESET_WORDS.get(p, p)}" for p in dict.fromkeys(presets))
    protocol = (
        "Protocol: the SSNM/UFO evaluation that the co-segmentation literature reports (cosegkit's "
        "`precision_jaccard`). Per image, P is the pixel accuracy of the binary mask (object and background "
        "together) and J the Jaccard index of the object; both are averaged over all scored images, not per "
        f"group first. Binarisation: {rules}. Scores per group are in the JSON files."
    )
    return "## Evaluation\n\n" + "\n".join(lines) + f"\n\n{protocol}\n"


def _figures(names: Sequence[str]) -> str:
    if not names:
        return (
            "## Figure\n\nNo figure was pushed with this model (`cosegkit push --figure IMAGE` adds one; by default "
            "it takes the run's `figure.png` or `curves.png`).\n"
        )
    images = "\n\n".join(f"![{name}]({name})" for name in names)
    return f"## Figure\n\n{images}\n"


def _front_matter(
    architecture: str,
    repo_id: str,
    license: str | None,
    eval_rows: list[tuple[str, str, dict[str, Any]]],
    run_config: dict[str, Any] | None,
) -> str:
    import yaml

    meta: dict[str, Any] = {"library_name": "cosegkit"}
    if license:
        meta["license"] = license
    meta["pipeline_tag"] = "image-segmentation"
    meta["tags"] = ["cosegkit", "image-segmentation", "co-segmentation", architecture, "pytorch", "safetensors"]
    if eval_rows:
        dataset = (run_config or {}).get("dataset", "unknown")
        meta["model-index"] = [
            {
                "name": repo_id.split("/")[1],
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Image co-segmentation"},
                        "dataset": {"type": dataset, "name": f"{dataset}: {what}"},
                        "metrics": [
                            {"type": "accuracy", "name": "P (pixel accuracy, %)", "value": _percent(data["P"])},
                            {"type": "jaccard", "name": "J (Jaccard index, %)", "value": _percent(data["J"])},
                        ],
                    }
                    for _, what, data in eval_rows
                ],
            }
        ]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def model_card(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    figures: Sequence[str] = (),
    license: str | None = None,
) -> str:
    """The model card (``README.md``) of the model in ``folder`` as it will be pushed to ``repo_id``.

    YAML front matter the hub reads (``library_name: cosegkit``, ``pipeline_tag``, ``tags``,
    ``license`` when given, and ``model-index`` with the held-out scores when the run has an
    ``eval.json``), then what the model is (architecture, encoder, CLIP, the modules switched
    on), how to load it, the run's training settings, the evaluation table with its protocol,
    the figures, and the LCCo paper's citation. The training settings and scores come from the
    ``cosegkit train`` run folder around ``folder`` (:func:`run_folder`), when there is one.

    Args:
        folder: a model folder (a run folder gives its ``model/``).
        repo_id: ``ORG/NAME``, the name the card tells readers to load.
        figures: file names of the figures in the repository, embedded in this order.
        license: the weights' license as a hub identifier (``"mit"``, ``"cc-by-4.0"``...), or ``None``.

    Raises:
        CosegValueError: ``folder`` is not a model folder, or ``repo_id`` is not ``ORG/NAME``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import model_card
        >>> from cosegkit.testing import tiny_model
        >>> folder = tiny_model().save_pretrained(Path(tempfile.mkdtemp()) / "model")
        >>> card = model_card(folder, "my-lab/lcco-tiny")
        >>> card.splitlines()[:2]
        ['---', 'library_name: cosegkit']
        >>> 'LCCo.from_pretrained("my-lab/lcco-tiny")' in card
        True
    """
    check_repo_id(repo_id)
    folder, config = check_model_folder(folder, "folder")
    architecture = config.get("architecture", "lcco")
    settings = config["model"]
    run = run_folder(folder)
    run_config = _read_json(run / CONFIG_NAME) if run is not None else None
    eval_rows = _eval_rows(run, run_config)
    text, rows = _describe(architecture, settings, run_config)
    table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    version = config.get("cosegkit_version", "unknown")
    parts = [
        _front_matter(architecture, repo_id, license, eval_rows, run_config),
        f"# {repo_id.split('/')[1]}\n",
        f"{text}\n",
        f"## Model\n\n{table}\n\nSaved by cosegkit {version}.\n",
        _usage(architecture, repo_id, settings),
        _training(run_config),
        _evaluation(eval_rows),
        _figures(list(figures)),
        "## License\n\n"
        + (
            f"`{license}`.\n"
            if license
            else "Not stated: the weights' license follows the training data and the pretrained weights they "
            "started from.\n"
        ),
        f"## Citation\n\nThe LCCo method:\n\n```bibtex\n{CITATION}\n```\n",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------- the repository folder, the push
def write_repo_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    out: str | os.PathLike[str],
    *,
    figures: Sequence[str | os.PathLike[str]] | None = None,
    license: str | None = None,
) -> list[str]:
    """Write into ``out`` the files :func:`push_to_hub` uploads; returns their paths in the repository.

    The model folder's files, the card (``README.md``), and from the run folder around it
    ``training_config.json`` (the run's ``config.json``), ``eval.json`` and ``eval_photos.json``
    when present. ``figures`` are copied beside them under their own names; ``None`` takes the
    run's ``figure.png`` and ``curves.png`` (:func:`default_figures`), ``[]`` none.

    Raises:
        CosegValueError: not a model folder, a bad ``repo_id``, a missing or non-image figure,
            or an ``out`` folder that is not empty.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import write_repo_folder
        >>> from cosegkit.testing import tiny_model
        >>> folder = tiny_model().save_pretrained(Path(tempfile.mkdtemp()) / "model")
        >>> write_repo_folder(folder, "my-lab/lcco-tiny", Path(tempfile.mkdtemp()) / "repo")  # doctest: +NORMALIZE_WHITESPACE
        ['README.md', 'clip.safetensors', 'config.json', 'model.safetensors', 'open_clip_config/coseg-test-tiny.json']
    """
    check_repo_id(repo_id)
    source, _ = check_model_folder(folder, "folder")
    run = run_folder(source)
    chosen = default_figures(run) if figures is None else check_figures(figures, "figure")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CosegValueError(f"{os.fspath(out)!r} exists and is not an empty folder; name a new folder to write to")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*", CARD_NAME), dirs_exist_ok=True)
    if run is not None:
        if (run / CONFIG_NAME).is_file():
            shutil.copy2(run / CONFIG_NAME, target / TRAINING_CONFIG_NAME)
        for name in EVAL_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
    for path in chosen:
        shutil.copy2(path, target / path.name)
    card = model_card(source, repo_id, figures=[p.name for p in chosen], license=license)
    (target / CARD_NAME).write_text(card, encoding="utf-8")
    return sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())


@dataclass
class PushReport:
    """What :func:`push_to_hub` did.

    Attributes:
        repo_id: the repository, ``ORG/NAME``.
        files: the paths written to it (or, for a dry run, into ``folder``).
        revision: the branch pushed to.
        commit_url: the commit's address on the hub; ``None`` for a dry run.
        folder: the folder a dry run wrote; ``None`` after an upload.

    Example:
        >>> from cosegkit.hub import PushReport
        >>> report = PushReport("my-lab/lcco-tiny", ["README.md", "config.json", "model.safetensors"])
        >>> report.revision, report.commit_url is None
        ('main', True)
    """

    repo_id: str
    files: list[str] = field(default_factory=list)
    revision: str = "main"
    commit_url: str | None = None
    folder: Path | None = None


def hub_api() -> Any:
    """The hub client :func:`push_to_hub` uses when given none: a fresh ``huggingface_hub.HfApi``.

    Example:
        >>> from cosegkit.hub import hub_api
        >>> type(hub_api()).__name__
        'HfApi'
    """
    from huggingface_hub import HfApi

    return HfApi()


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    resolved = token or get_token()
    if not resolved:
        raise HubError(f"not logged in to the Hugging Face hub, and no token was given: {LOGIN_HINT}")
    return resolved


def _hub_error(err: Exception, repo_id: str, action: str) -> HubError:
    """One line for an error of ``huggingface_hub`` while ``action`` (e.g. "create the repository")."""
    from huggingface_hub.utils import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    status = getattr(getattr(err, "response", None), "status_code", None) if isinstance(err, HfHubHTTPError) else None
    if isinstance(err, LocalTokenNotFoundError):
        return HubError(f"not logged in to the Hugging Face hub: {LOGIN_HINT}")
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(f"could not {action} {repo_id}: HF_HUB_OFFLINE is set; unset it to push to the hub")
    if status == 401:
        return HubError(f"the hub refused the token (401 Unauthorized) to {action} {repo_id}: {LOGIN_HINT}")
    if status == 403:
        return HubError(
            f"the token may not {action} {repo_id} (403 Forbidden): use a token with write access to "
            f"{repo_id.split('/')[0]!r} (--token), or log in as a member with `hf auth login`"
        )
    if status is not None:
        return HubError(f"the hub answered {status} to {action} {repo_id}: {first}")
    return HubError(f"could not {action} {repo_id} ({type(err).__name__}: {first}); check the network and retry")


def push_to_hub(
    model_folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    figures: Sequence[str | os.PathLike[str]] | None = None,
    license: str | None = None,
    dry_run_to: str | os.PathLike[str] | None = None,
    api: Any = None,
) -> PushReport:
    """Upload a model folder, with a generated model card, to the Hugging Face hub as ``repo_id``.

    The repository is created if it does not exist (``private`` sets its visibility then; an
    existing repository keeps its own). Everything goes up in one commit:
    :func:`write_repo_folder` lays out the files in a temporary folder, then
    ``HfApi.upload_folder`` sends them. Pushing again replaces the files of the same name.

    Args:
        model_folder: a model folder, or a ``cosegkit train`` run folder (its ``model/`` is pushed,
            with the run's settings, scores and figure).
        repo_id: ``ORG/NAME``.
        private: make a new repository private (``None``: the hub's default, public).
        token: a hub token with write access; ``None`` takes the usual one (``HF_TOKEN``, or
            the one ``hf auth login`` stored).
        revision: the branch to push to, created from ``main`` if missing (default ``main``).
        commit_message: default ``"Upload <architecture> model with cosegkit"``.
        figures: image files to show in the card (``None``: the run's ``figure.png`` or
            ``curves.png``; ``[]``: none).
        license: the weights' license as a hub identifier, written in the card.
        dry_run_to: write the repository's files into this new folder and upload nothing (no
            token needed).
        api: the hub client (default :func:`hub_api`, a ``huggingface_hub.HfApi``); any
            object with its ``create_repo``, ``create_branch`` and ``upload_folder`` methods.

    Raises:
        CosegValueError: not a model folder, a bad ``repo_id`` or figure.
        HubError: no token, or the hub refused or could not be reached; one line that says what to do.

    Example:
        A dry run writes the folder that would go up:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.hub import push_to_hub
        >>> from cosegkit.testing import tiny_model
        >>> folder = tiny_model().save_pretrained(Path(tempfile.mkdtemp()) / "model")
        >>> report = push_to_hub(folder, "my-lab/lcco-tiny", dry_run_to=Path(tempfile.mkdtemp()) / "repo")
        >>> report.files, report.commit_url  # doctest: +NORMALIZE_WHITESPACE
        (['README.md', 'clip.safetensors', 'config.json', 'model.safetensors', 'open_clip_config/coseg-test-tiny.json'],
         None)
    """
    check_repo_id(repo_id)
    folder, config = check_model_folder(model_folder, "model_folder")
    branch = revision or "main"
    if dry_run_to is not None:
        files = write_repo_folder(folder, repo_id, dry_run_to, figures=figures, license=license)
        return PushReport(repo_id, files, branch, None, Path(dry_run_to))
    token = _resolve_token(token)
    api = hub_api() if api is None else api
    name = ARCHITECTURE_NAMES[config.get("architecture", "lcco")]
    message = commit_message or f"Upload {name} model with cosegkit"
    with tempfile.TemporaryDirectory(prefix="cosegkit-push-") as tmp:
        staging = Path(tmp) / "repo"
        files = write_repo_folder(folder, repo_id, staging, figures=figures, license=license)
        action = "create the repository"
        try:
            api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
            if branch != "main":
                action = f"create the branch {branch!r} of"
                api.create_branch(repo_id, branch=branch, token=token, repo_type="model", exist_ok=True)
            action = "upload to"
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=message,
                token=token,
                repo_type="model",
                revision=branch,
            )
        except (TypeError, AttributeError, NameError):  # a wrong call, not the hub's answer: keep the traceback
            raise
        except Exception as err:
            raise _hub_error(err, repo_id, action) from err
    return PushReport(repo_id, files, branch, getattr(commit, "commit_url", None) or str(commit), None)


_push = push_to_hub  # save_then_push's argument of the same name hides the function


def save_then_push(
    write: Callable[[], Path], *, push_to_hub: bool = False, repo_id: str | None = None, **push_kwargs: Any
) -> Path:
    """What every model's ``save_pretrained`` does: ``write()`` the folder, then push it when asked.

    ``push_to_hub=True`` needs ``repo_id``; ``push_kwargs`` go to :func:`push_to_hub` (``private``,
    ``token``, ``revision``, ``commit_message``, ``figures``, ``license``, ``api``). The
    arguments are checked before anything is written.

    Raises:
        CosegValueError: ``push_to_hub`` without a valid ``repo_id``, or push options without ``push_to_hub``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.testing import tiny_model
        >>> model = tiny_model()
        >>> model.save_pretrained(Path(tempfile.mkdtemp()), repo_id="my-lab/lcco-tiny")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegValueError: repo_id='my-lab/lcco-tiny' is given but push_to_hub is False; ...
    """
    if push_to_hub:
        if repo_id is None:
            raise CosegValueError("push_to_hub=True needs repo_id='ORG/NAME', the hub repository to push to")
        check_repo_id(repo_id)
    elif repo_id is not None or push_kwargs:
        given = f"repo_id={repo_id!r}" if repo_id is not None else ", ".join(sorted(push_kwargs))
        raise CosegValueError(f"{given} is given but push_to_hub is False; pass push_to_hub=True to upload the model")
    folder = write()
    if push_to_hub:
        _push(folder, repo_id, **push_kwargs)
    return folder
