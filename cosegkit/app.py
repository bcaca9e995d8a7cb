"""``cosegkit app``: co-segment a set of photos in the browser (Gradio, the ``app`` extra).

The page takes a set of photos, a model and a button. The model is a trained one (a
``cosegkit train`` run folder, a ``save_pretrained`` folder or a hub name) or zero-shot
co-segmentation with a frozen CLIP (:class:`~cosegkit.zeroshot.ZeroShotCoseg`, CLIP-ES's
method). It shows each photo with its mask overlaid, the class the set was found to share with
its score, and offers the masks as a zip of PNGs.

The work is done by :func:`segment_set`, which calls
:func:`~cosegkit.engine.segment.segment_files` (what ``cosegkit segment`` runs): the masks the
page offers are the files ``cosegkit segment --out`` writes for the same photos and model.
:func:`build_app` lays out the page around it, :func:`launch_app` serves it; neither needs
anything from the network (no analytics, no web fonts, no share link unless asked).

This module imports torch and Gradio only when a function needs them.
"""

# n images per set

from __future__ import annotations

import os
import tempfile
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosegkit.errors import CosegValueError

if TYPE_CHECKING:
    import gradio
    import torch

__all__ = [
    "APP_INSTALL_HINT",
    "ZERO_SHOT_LABEL",
    "ModelChoice",
    "SetClass",
    "SetResult",
    "build_app",
    "example_sets",
    "launch_app",
    "load_choice",
    "model_choices",
    "page_choice",
    "require_gradio",
    "segment_set",
    "set_class",
]

APP_INSTALL_HINT = 'pip install "cosegkit[app]"'
"""What installs the browser demo's extra (Gradio)."""

ZERO_SHOT_LABEL = "zero-shot: the CLIP set below"
"""The model list's entry for zero-shot co-segmentation with the CLIP named in the page's zero-shot settings."""

_SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
_SYSTEM_MONO = ("ui-monospace", "Consolas", "monospace")


def require_gradio() -> Any:
    """Import Gradio with its analytics off; without it, a :class:`ModuleNotFoundError` naming the extra.

    Example:
        >>> import sys
        >>> from unittest import mock
        >>> from cosegkit.app import require_gradio
        >>> with mock.patch.dict(sys.modules, {"gradio": None}):  # as if Gradio were not installed
        ...     require_gradio()
        Traceback (most recent call last):
            ...
        ModuleNotFoundError: the browser demo needs Gradio: pip install "cosegkit[app]"
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports sent anywhere
    try:
        import gradio
    except ImportError:
        raise ModuleNotFoundError(f"the browser demo needs Gradio: {APP_INSTALL_HINT}", name="gradio") from None
    return gradio


# ---------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model list: a trained model, or zero-shot with a CLIP.

    Attributes:
        label: what the list shows.
        model: a run folder, model folder or hub name (a trained model); ``None`` for zero-shot.
        clip_model: zero-shot: the open_clip architecture.
        clip_pretrained: zero-shot: an open_clip tag or weights file (``None``: random weights).
        classnames: zero-shot: the vocabulary (``None``: :data:`~cosegkit.clip.DEFAULT_VOCABULARY`).
        templates: zero-shot: prompt templates (``None``: CLIP-ES's).
        demo: zero-shot with ``cosegkit demo``'s synthetic CLIP, built as the demo builds it
            (:func:`~cosegkit.demo.demo_zero_shot`).

    Example:
        >>> from cosegkit.app import ModelChoice
        >>> ModelChoice("runs/cats", model="runs/cats").zero_shot, ModelChoice("zero-shot", clip_model="RN50").zero_shot
        (False, True)
    """

    label: str
    model: str | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None
    demo: bool = False

    @property
    def zero_shot(self) -> bool:
        """Whether this entry is zero-shot co-segmentation (no trained model)."""
        return self.model is None


def _run_clip(path: str) -> tuple[str, str] | None:
    """The CLIP (architecture, weights file) a run folder's config.json trained with, when its weights are a file here."""
    import json

    config = Path(path) / "config.json"
    if not (Path(path) / "model").is_dir() or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name, weights = data.get("clip_model"), data.get("clip_pretrained")
    if isinstance(name, str) and isinstance(weights, str) and Path(weights).is_file():
        return name, weights
    return None


def model_choices(
    models: Sequence[str] = (),
    *,
    clip_model: str | None = None,
    clip_pretrained: str | None = "openai",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> dict[str, ModelChoice]:
    """The page's model list, by label: each of ``models``, zero-shot with each run's CLIP, zero-shot with the CLIP given.

    A run folder whose CLIP weights are a file on this machine (a ``cosegkit demo`` run's
    synthetic CLIP, a run of ``cosegkit pretrain-clip``'s weights) adds
    ``"zero-shot: the CLIP of <run>"``. The last entry, :data:`ZERO_SHOT_LABEL`, is zero-shot
    with ``clip_model`` and ``clip_pretrained`` (default ViT-B-16 with OpenAI's weights), which
    the page lets the user change.

    Example:
        >>> from cosegkit.app import model_choices
        >>> list(model_choices(["runs/cats", "org/lcco-voc"]))
        ['runs/cats', 'org/lcco-voc', 'zero-shot: the CLIP set below']
        >>> model_choices([], clip_model="RN50")["zero-shot: the CLIP set below"].clip_model
        'RN50'
    """
    from cosegkit.engine.pretrain import SYNTHETIC_CLIP

    choices = {label: ModelChoice(label, model=label) for label in models}
    seen: set[tuple[str, str]] = set()
    for label in models:
        found = _run_clip(label)
        if found is not None and found not in seen:  # runs of one CLIP (the demo's) give one entry
            seen.add(found)
            name, weights = found
            entry = f"zero-shot: the CLIP of {label}"
            choices[entry] = ModelChoice(entry, clip_model=name, clip_pretrained=weights, demo=name == SYNTHETIC_CLIP)
    choices[ZERO_SHOT_LABEL] = ModelChoice(
        ZERO_SHOT_LABEL,
        clip_model=clip_model or "ViT-B-16",
        clip_pretrained=clip_pretrained,
        classnames=None if classnames is None else tuple(classnames),
        templates=None if templates is None else tuple(templates),
    )
    return choices


def load_choice(choice: ModelChoice, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model an entry of the list names: an LCCo or UFO (:func:`~cosegkit.load_model`), or a ZeroShotCoseg.

    Raises:
        WeightsUnavailableError: the model or the CLIP's weights cannot be found, or the folder
            holds no LCCo or UFO model.

    Example:
        Zero-shot with a tiny random CLIP (its classes mean nothing):

        >>> from cosegkit.app import ModelChoice, load_choice
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> zs = load_choice(ModelChoice("zs", clip_model="coseg-test-tiny", clip_pretrained=None,
        ...                              classnames=("cat", "dog")))
        >>> type(zs).__name__, zs.classnames
        ('ZeroShotCoseg', ('cat', 'dog'))
    """
    from cosegkit.clip import DEFAULT_VOCABULARY, FrozenClip
    from cosegkit.engine.pretrain import register_composite_clip, register_synthetic_clip
    from cosegkit.testing import register_tiny_clips
    from cosegkit.zeroshot import CLIP_ES_TEMPLATES, ZeroShotCoseg

    register_synthetic_clip()
    register_composite_clip()
    register_tiny_clips()
    if not choice.zero_shot:
        from cosegkit.models.loading import load_model

        return load_model(choice.model, map_location=device).eval()
    if choice.demo:
        from cosegkit.demo import demo_clip, demo_zero_shot

        clip = demo_clip("synthetic", choice.clip_pretrained)
        if choice.classnames is not None:
            clip = FrozenClip.from_name(
                choice.clip_model, choice.clip_pretrained, classnames=choice.classnames, templates=clip.templates
            )
        return demo_zero_shot(clip).to(device).eval()
    names = list(choice.classnames) if choice.classnames else list(DEFAULT_VOCABULARY)
    templates = list(choice.templates) if choice.templates else list(CLIP_ES_TEMPLATES)
    clip = FrozenClip.from_name(choice.clip_model, choice.clip_pretrained, classnames=names, device=device)
    return ZeroShotCoseg(clip, templates=templates).to(device).eval()


# ---------------------------------------------------------------------- segmenting
@dataclass(frozen=True)
class SetClass:
    """The class a set was found to share.

    Attributes:
        set: the set's number, from 1.
        images: how many images it holds.
        name: the class (``None``: the model names none, e.g. a Baseline without CLIP modules).
        score: the class's score: LCCo's class probability :math:`v` of eq. (7), or for
            zero-shot the mean over the set's images of the CLIP's cosine similarity.
        score_name: what ``score`` is.
        runners_up: the next best classes with their scores.

    Example:
        >>> from cosegkit.app import SetClass
        >>> found = SetClass(2, 5, "cat", 0.42, "mean cosine")
        >>> found.name, found.describe()
        ('cat', "set 2 (5 images): 'cat', mean cosine 0.420")
    """

    set: int
    images: int
    name: str | None
    score: float | None = None
    score_name: str = ""
    runners_up: tuple[tuple[str, float], ...] = ()

    def describe(self) -> str:
        """One line: the set, its class and score.

        Example:
            >>> from cosegkit.app import SetClass
            >>> SetClass(1, 4, "cat", 0.91, "class probability", (("dog", 0.05),)).describe()
            "set 1 (4 images): 'cat', class probability 0.910 (next: 'dog' 0.050)"
        """
        head = f"set {self.set} ({self.images} image{'' if self.images == 1 else 's'}): "
        if self.name is None:
            return head + "no class (the model has no CLIP regularization module to name one)"
        others = ", ".join(f"{name!r} {score:.3f}" for name, score in self.runners_up)
        return head + f"{self.name!r}, {self.score_name} {self.score:.3f}" + (f" (next: {others})" if others else "")


def set_class(model: torch.nn.Module, output: Any, images: int, *, runners_up: int = 2) -> SetClass:
    """The class the model found the set to share, from its output for one set (``cosegkit segment``'s reading).

    A :class:`~cosegkit.zeroshot.ZeroShotCoseg` scores each class by the mean over the set of
    the CLIP's cosine similarity (``class_scores / n``), as ``cosegkit segment --zero-shot``
    prints it; an :class:`~cosegkit.LCCo` by its class probability :math:`v` (eq. 7). The
    set number is left 0 for the caller to fill.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from cosegkit.app import set_class
        >>> lcco = SimpleNamespace(config={"classnames": ["cat", "dog", "car"]})
        >>> out = SimpleNamespace(common_class=torch.tensor([1]), class_probs=torch.tensor([[0.2, 0.7, 0.1]]))
        >>> set_class(lcco, out, 3).describe()
        "set 0 (3 images): 'dog', class probability 0.700 (next: 'cat' 0.200, 'car' 0.100)"
    """
    net = getattr(model, "module", model)
    chosen = getattr(output, "common_class", None)
    if chosen is None:
        return SetClass(0, images, None)
    chosen = int(chosen[0])
    if getattr(output, "class_scores", None) is not None:  # zero-shot: cosine summed over the set
        scores = output.class_scores[0].float().cpu() / max(1, images)
        names, what = list(net.classnames), "mean cosine"
    elif getattr(output, "class_probs", None) is not None:
        scores = output.class_probs[0].float().cpu()
        names, what = list(net.config["classnames"]), "class probability"
    else:
        return SetClass(0, images, None)
    order = [int(i) for i in scores.argsort(descending=True) if int(i) != chosen][:runners_up]
    return SetClass(
        0, images, names[chosen], float(scores[chosen]), what, tuple((names[i], float(scores[i])) for i in order)
    )


@dataclass
class SetResult:
    """What :func:`segment_set` made.

    Attributes:
        masks: one 0/255 mask PNG per readable photo, in input order, at its own size.
        overlays: each photo with its mask tinted (``<stem>_overlay.png``), in the same order.
        names: each photo's file name, in the same order.
        classes: per set, the class it was found to share.
        archive: a zip of the mask PNGs (named as ``cosegkit segment --out`` names them).
        skipped: ``(file name, reason)`` of the files that could not be read.

    Example:
        >>> from pathlib import Path
        >>> from cosegkit.app import SetClass, SetResult
        >>> result = SetResult([Path("out/masks/a.png")], [Path("out/masks/a_overlay.png")], ["a.jpg"],
        ...                    [SetClass(1, 1, None)], Path("out/masks.zip"), [("b.jpg", "cannot read image")])
        >>> print(result.summary())
        set 1 (1 image): no class (the model has no CLIP regularization module to name one)
        skipped b.jpg: cannot read image
    """

    masks: list[Path]
    overlays: list[Path]
    names: list[str]
    classes: list[SetClass]
    archive: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """The classes and skipped files, one line each.

        Example:
            >>> from pathlib import Path
            >>> from cosegkit.app import SetClass, SetResult
            >>> print(SetResult([], [], [], [SetClass(1, 2, "cat", 0.5, "mean cosine")], Path("m.zip")).summary())
            set 1 (2 images): 'cat', mean cosine 0.500
        """
        lines = [c.describe() for c in self.classes]
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def segment_set(
    images: Sequence[str | os.PathLike[str]],
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    set_size: int | None = None,
    image_size: int | None = None,
    preset: str = "ssnm",
    device: str | torch.device = "cpu",
) -> SetResult:
    """Co-segment photos as one set (or sets of ``set_size``) and return the masks, overlays, classes and a zip.

    :func:`~cosegkit.engine.segment.segment_files` does the work, with ``overlays=True``, the
    photos in input order whatever their folders (``by_folder=False``) and read in this process;
    the masks are the files ``cosegkit segment --out`` writes for the same photos, model,
    ``--set-size`` and ``--image-size`` (``--mix-folders``). Unreadable files are skipped and
    listed.

    Args:
        images: image files.
        model: an :class:`~cosegkit.LCCo` (any co-segmentation model) or a
            :class:`~cosegkit.zeroshot.ZeroShotCoseg`, e.g. from :func:`load_choice`.
        out_dir: where the masks, overlays and ``masks.zip`` go (its ``masks/`` must be new or
            hold masks of the same settings).
        set_size: images per set at most; ``None``: all of them in one set.
        image_size: the network's input side; ``None``: the model's own.
        preset: binarisation, ``"ssnm"``, ``"ufo"`` or ``"fixed"``.
        device: where to run.

    Shape:
        Each mask PNG is :math:`(H_i, W_i)`, the photo's own size, with values 0 and 255.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from cosegkit.app import segment_set
        >>> from cosegkit.testing import tiny_model
        >>> folder = Path(tempfile.mkdtemp())
        >>> photos = []
        >>> for k, size in enumerate([(40, 30), (32, 32), (24, 48)]):
        ...     photos.append(folder / f"photo{k}.png")
        ...     Image.new("RGB", size, (40 * k, 90, 200)).save(photos[-1])
        >>> result = segment_set(photos, tiny_model(), folder / "out", image_size=32)
        >>> [Image.open(p).size for p in result.masks], result.names
        ([(40, 30), (32, 32), (24, 48)], ['photo0.png', 'photo1.png', 'photo2.png'])
        >>> result.classes[0].set, result.classes[0].images, result.classes[0].name in ("cat", "dog", "car", "bird")
        (1, 3, True)
        >>> import zipfile
        >>> zipfile.ZipFile(result.archive).namelist()
        ['photo0.png', 'photo1.png', 'photo2.png']
    """
    from cosegkit.engine.segment import segment_files

    files = [Path(p) for p in images]
    if not files:
        raise CosegValueError("no photos given; drop in a set of two or more photos")
    out = Path(out_dir)
    classes: list[SetClass] = []

    def on_set(number: int, set_files: list[Path], output: Any) -> None:
        classes.append(replace(set_class(model, output, len(set_files)), set=number))

    written, skipped = segment_files(
        model,
        files,
        out / "masks",
        set_size="all" if set_size is None else set_size,
        image_size=image_size,
        by_folder=False,
        preset=preset,
        overlays=True,
        skip_bad=True,
        workers=0,
        device=device,
        on_set=on_set,
    )
    records = _manifest(out / "masks")
    masks, overlays, names = [], [], []
    for path in files:
        record = records.get(str(path))
        if record is None or not record.get("mask"):
            continue
        mask = out / "masks" / record["mask"]
        masks.append(mask)
        overlays.append(mask.with_name(mask.stem + "_overlay.png"))
        names.append(path.name)
    if len(masks) != len(written):
        raise CosegValueError(f"{out / 'masks'} holds masks of other photos; pass a new out_dir")
    archive = out / "masks.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for mask in masks:
            zipped.write(mask, mask.name)
    return SetResult(masks, overlays, names, classes, archive, [(Path(p).name, reason) for p, reason in skipped])


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    import json

    lines = (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["image"]: r for r in map(json.loads, lines)}


# ---------------------------------------------------------------------- examples
def example_sets(
    folder: str | os.PathLike[str], *, sets: int = 3, set_size: int = 4, seed: int = 0
) -> list[list[Path]]:
    """A few sets of the demo's synthetic world written as PNGs, for the page's clickable examples.

    Each set's images share one object among distractors (the world ``cosegkit demo``'s CLIP
    and models learn), 64 px; written once, reused when present.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from cosegkit.app import example_sets
        >>> found = example_sets(tempfile.mkdtemp(), sets=2, set_size=3)
        >>> [len(s) for s in found], Image.open(found[0][0]).size
        ([3, 3], (64, 64))
    """
    from PIL import Image

    from cosegkit.engine.pretrain import ClipPretrainConfig

    root = Path(folder)
    out = [[root / f"set{k + 1}" / f"set{k + 1}-{j + 1}.png" for j in range(set_size)] for k in range(sets)]
    if all(p.is_file() for s in out for p in s):
        return out
    world = ClipPretrainConfig().world()
    for k, paths in enumerate(out):
        item = world.sample_set(set_size, seed=(seed, k))
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for j, path in enumerate(paths):
            pixels = (item.images[j].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(path)
    return out


# ---------------------------------------------------------------------- the page
class _Models:
    """Models loaded on first use and kept, one at a time per entry (thread-safe)."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = device
        self.loaded: dict[ModelChoice, Any] = {}
        self.lock = threading.Lock()

    def get(self, choice: ModelChoice) -> Any:
        with self.lock:
            if choice not in self.loaded:
                self.loaded[choice] = load_choice(choice, self.device)
            return self.loaded[choice]


_RUNS_KEPT = 20


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest run folders in ``folder``."""
    import shutil

    runs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _names(text: str) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in text.replace("\n", ",").split(",") if n.strip())
    return names or None


def page_choice(
    choices: Mapping[str, ModelChoice],
    label: str,
    *,
    clip_model: str = "",
    clip_pretrained: str = "",
    vocabulary: str = "",
) -> ModelChoice:
    """The model the page runs: the entry picked (or a folder or hub name typed), with the zero-shot fields applied.

    For :data:`ZERO_SHOT_LABEL` the page's CLIP fields name the CLIP (empty: ViT-B-16; weights
    ``""``, ``"none"`` or ``"random"``: random weights); for every zero-shot entry a non-empty
    ``vocabulary`` (comma- or line-separated class names) replaces the entry's. Anything not in
    ``choices`` is a trained model's folder or hub name.

    Example:
        >>> from cosegkit.app import ZERO_SHOT_LABEL, model_choices, page_choice
        >>> choices = model_choices(["runs/cats"])
        >>> page_choice(choices, "runs/cats").model
        'runs/cats'
        >>> page_choice(choices, " org/lcco-voc ").model  # typed into the list
        'org/lcco-voc'
        >>> zs = page_choice(choices, ZERO_SHOT_LABEL, clip_model="RN50", clip_pretrained="none",
        ...                  vocabulary="cat, dog\\nhorse")
        >>> zs.zero_shot, zs.clip_model, zs.clip_pretrained, zs.classnames
        (True, 'RN50', None, ('cat', 'dog', 'horse'))
    """
    choice = choices.get(label)
    if choice is None:
        name = label.strip()
        if not name:
            raise CosegValueError("no model picked; pick one in the list, or type a run folder or hub name")
        return ModelChoice(name, model=name)
    if choice.label == ZERO_SHOT_LABEL:
        weights = clip_pretrained.strip()
        return replace(
            choice,
            clip_model=clip_model.strip() or "ViT-B-16",
            clip_pretrained=None if weights.lower() in ("", "none", "random") else weights,
            classnames=_names(vocabulary),
        )
    if choice.zero_shot and _names(vocabulary):
        return replace(choice, classnames=_names(vocabulary))
    return choice


def build_app(
    choices: Mapping[str, ModelChoice],
    *,
    examples: Sequence[Sequence[str | os.PathLike[str]]] = (),
    device: str | torch.device = "cpu",
    work_dir: str | os.PathLike[str] | None = None,
) -> gradio.Blocks:
    """The page: photos, a model list, zero-shot settings, a button; the overlays, the classes, the masks' zip.

    Args:
        choices: the model list, e.g. from :func:`model_choices`; the first is selected. The
            user may also type a run folder, model folder or hub name.
        examples: sets of image files offered as clickable examples.
        device: where the models run.
        work_dir: where the page keeps its runs' masks, in a ``cosegkit-app-*`` folder of its
            own holding the last 20 runs (Gradio serves copies of what it shows); default: the
            system's temporary folder.

    Example:
        >>> import pytest
        >>> _ = pytest.importorskip("gradio")
        >>> from cosegkit.app import build_app, model_choices
        >>> type(build_app(model_choices(["runs/cats"]))).__name__
        'Blocks'
    """
    gr = require_gradio()
    models = _Models(device)
    base = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="cosegkit-app-", dir=base))  # this page's runs, one folder each
    first = next(iter(choices))

    def run(
        files: list[Any] | None,
        label: str,
        set_size: float | None,
        clip_model: str,
        clip_weights: str,
        vocabulary: str,
        progress: Any = gr.Progress(),  # noqa: B008 (Gradio's way of asking for a progress bar)
    ) -> tuple[Any, str, Any]:
        paths = [getattr(f, "name", f) for f in files or []]
        if len(paths) < 1:
            raise gr.Error("drop in a set of photos first (two or more that share an object)")
        try:
            choice = page_choice(
                choices, label, clip_model=clip_model, clip_pretrained=clip_weights, vocabulary=vocabulary
            )
            progress(0.1, desc="loading the model")
            model = models.get(choice)
            progress(0.4, desc=f"segmenting {len(paths)} photos")
            out = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
            _prune(runs, keep=_RUNS_KEPT)
            size = int(set_size) if set_size else None
            result = segment_set(paths, model, out, set_size=size, device=device)
        except Exception as err:  # shown on the page, not as a server traceback
            raise gr.Error(f"{type(err).__name__}: {err}") from err
        gallery = [(str(o), n) for o, n in zip(result.overlays, result.names, strict=True)]
        return gallery, result.summary(), str(result.archive)

    with gr.Blocks(title="cosegkit: co-segment a set of photos") as page:
        gr.Markdown(
            "## cosegkit: co-segment a set of photos\n"
            "Drop in photos that share an object, pick a trained model (or zero-shot with a CLIP) and press "
            "**Segment**: each photo comes back with the object they share tinted, with the class the set "
            "was found to share, and the masks as a zip of PNGs (what `cosegkit segment --out` writes)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(
                    label="photos of one set", file_count="multiple", file_types=["image"], elem_id="photos"
                )
                model = gr.Dropdown(
                    list(choices),
                    value=first,
                    label="model (or type a run folder or hub name)",
                    allow_custom_value=True,
                    elem_id="model",
                )
                set_size = gr.Number(
                    value=0, precision=0, minimum=0, label="images per set (0: all in one set)", elem_id="set-size"
                )
                zero = choices.get(ZERO_SHOT_LABEL, ModelChoice(ZERO_SHOT_LABEL, clip_model="ViT-B-16"))
                with gr.Accordion("zero-shot settings", open=False):
                    clip_model = gr.Textbox(zero.clip_model or "ViT-B-16", label="CLIP model (open_clip name)")
                    clip_weights = gr.Textbox(zero.clip_pretrained or "none", label="CLIP weights (tag or file)")
                    vocabulary = gr.Textbox(
                        ", ".join(zero.classnames or ()),
                        lines=2,
                        elem_id="vocabulary",
                        label="class names, comma-separated (empty: the CLIP's own)",
                    )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="masks overlaid", columns=4, elem_id="overlays", format="png")
                classes = gr.Textbox(label="the set's class", lines=2, elem_id="classes", interactive=False)
                archive = gr.File(label="masks (zip of PNGs)", elem_id="archive", interactive=False)
        button.click(run, [files, model, set_size, clip_model, clip_weights, vocabulary], [gallery, classes, archive])
        if examples:
            gr.Examples([[[str(p) for p in s]] for s in examples], inputs=[files], label="example sets")
    return page


def launch_app(
    page: gradio.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    **kwargs: Any,
) -> Any:
    """Serve the page with nothing fetched from the network: system fonts, no analytics, no share link unless asked.

    Args:
        page: from :func:`build_app`.
        host: the address to listen on (``0.0.0.0``: every interface).
        port: the port (``None``: Gradio's first free one from 7860).
        share: ask Gradio for a public share link (reaches Gradio's servers).
        block: print the address and wait until interrupted; ``False`` returns once the server
            runs (tests).
        kwargs: more of Gradio's ``Blocks.launch`` arguments.

    Returns:
        What Gradio's ``Blocks.launch`` returns: ``(app, local URL, share URL)``.

    Example:
        >>> import contextlib, io
        >>> import pytest
        >>> _ = pytest.importorskip("gradio")
        >>> from cosegkit.app import build_app, launch_app, model_choices
        >>> page = build_app(model_choices([]))
        >>> app, url, share_url = launch_app(page, block=False)
        >>> url.startswith("http://127.0.0.1:"), share_url
        (True, None)
        >>> with contextlib.redirect_stdout(io.StringIO()):  # "Closing server running on port ..."
        ...     page.close()
    """
    gr = require_gradio()
    theme = gr.themes.Default(font=list(_SYSTEM_FONTS), font_mono=list(_SYSTEM_MONO))
    kwargs.setdefault("quiet", True)  # Gradio's own lines speak of launch(share=True), not of --share
    served = page.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        theme=theme,
        ssr_mode=False,
        footer_links=[],
        **kwargs,
    )
    if block:
        _, url, share_url = served
        print(f"cosegkit app: open {url}" + (f" or {share_url}" if share_url else "") + " (Ctrl+C stops it)")
        page.block_thread()
    return served
