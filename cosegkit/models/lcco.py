"""The assembled LCCo model.

Axis legend (einops):
    b   batch of sets    n   images per set    c   channels    h w spatial
    d   CLIP width       p   prompts           k   top-K
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit import __version__
from cosegkit._files import atomic_write
from cosegkit._validation import check_image_set, is_compiling, resolve_valid
from cosegkit.clip.frozen import FrozenClip, weights_follow
from cosegkit.clip.vocabulary import DEFAULT_TEMPLATES, DEFAULT_VOCABULARY
from cosegkit.errors import CosegShapeError, CosegValueError, WeightsUnavailableError
from cosegkit.layers.coarse_decoder import CoarseMaskDecoder
from cosegkit.layers.correspondence import ImageSetCorrespondence
from cosegkit.layers.grouping import SetGrouping
from cosegkit.layers.interaction import ClipInteraction, clip_similarity
from cosegkit.layers.regularization import ClipRegularization
from cosegkit.layers.variants import VARIANTS, get_variant, resolve_settings
from cosegkit.losses.classification import masked_images, targets_from_embeddings
from cosegkit.models.decoder import ConvBNReLU, DecoderBlock, feature_levels
from cosegkit.models.output import LCCoOutput

__all__ = ["VARIANTS", "LCCo", "get_variant", "refuse_class_oracle"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CLIP_WEIGHTS_NAME = "clip.safetensors"
CLIP_CONFIG_DIR = "open_clip_config"


LEGACY_SETTINGS: dict[str, Any] = {
    "variant": "paper",
    "correspondence_residual": False,
    "unit_scale": False,
    "class_pool": "max",
    "class_prior": 0.0,
}
"""What a config or checkpoint written before the variants existed was built with (its
``residual`` is stored): the printed equations with the open choices at their most literal."""


def _load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling code."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path!r} does not hold a state dict (got {type(state).__name__})")
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or foreign file raises WeightsUnavailableError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:
        raise WeightsUnavailableError(
            f"could not read {str(path)!r}: not a complete safetensors file ({type(err).__name__}: {err})"
        ) from err


def build_encoder(name: str, weights: str | os.PathLike[str] | None, depth: int) -> nn.Module:
    """An smp encoder by name, with weights by smp tag, local file, or ``None``.

    Raises:
        KeyError: unknown encoder name (the message lists where to find the valid ones).
        WeightsUnavailableError: the tag could not be downloaded, or the file not read.
    """
    import segmentation_models_pytorch as smp

    weights = None if weights is None else os.fspath(weights)
    local = weights is not None and (
        os.path.exists(weights) or os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors"))
    )
    if not name.startswith("tu-") and name not in smp.encoders.get_encoder_names():
        raise KeyError(
            f"unknown encoder {name!r}; valid names are smp.encoders.get_encoder_names() "
            f"(e.g. 'resnet50', 'efficientnet-b0', 'mit_b0') or any timm model as 'tu-<name>'"
        )
    try:
        encoder = smp.encoders.get_encoder(name, in_channels=3, depth=depth, weights=None if local else weights)
    except KeyError:
        raise
    except ValueError as err:  # e.g. a depth the encoder does not have
        raise CosegValueError(f"encoder {name!r} with encoder_depth={depth} (--encoder-depth): {err}") from err
    except Exception as err:
        raise WeightsUnavailableError(
            f"could not fetch {weights!r} weights for encoder {name!r} ({type(err).__name__}: {err}). "
            f"Offline, download the weights elsewhere and pass the file as "
            f"encoder_weights='/path/to/encoder.safetensors', or pass encoder_weights=None for a "
            f"randomly initialised encoder (cosegkit train: --encoder-weights FILE, or --encoder-weights none)"
        ) from err
    if local:
        if not os.path.isfile(weights):  # type: ignore[arg-type]
            raise CosegValueError(
                f"encoder weights file {weights!r} does not exist; pass an existing file, a tag such as "
                f"'imagenet', or None for a random encoder (cosegkit train: --encoder-weights)"
            )
        try:
            state = _load_weights_file(weights)  # type: ignore[arg-type]
            encoder.load_state_dict(state)
        except Exception as err:
            raise WeightsUnavailableError(
                f"could not load encoder weights from {weights!r} into {name!r} (--encoder-weights): {err}"
            ) from err
    return encoder


def _positive_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CosegValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _check_heads(heads: int, clip_heads: int, clip_dim: int, widths: dict[str, int | None], clip_used: bool) -> None:
    """Refuse head counts that do not divide the channels they split, naming the CLI flag."""
    for module, channels in widths.items():
        if channels is not None and heads >= 1 and channels % heads:
            choices = [h for h in range(1, min(channels, 16) + 1) if channels % h == 0]
            raise CosegValueError(
                f"heads={heads} must divide the {channels} decoder channels of {module}; choose heads from "
                f"{choices} (cosegkit train: --heads; or other --decoder-channels)"
            )
    if clip_used and clip_heads >= 1 and clip_dim % clip_heads:
        choices = [h for h in range(1, min(clip_dim, 16) + 1) if clip_dim % h == 0]
        raise CosegValueError(
            f"clip_heads={clip_heads} must divide the CLIP's embedding dim {clip_dim}; choose from {choices} "
            f"(cosegkit train: --heads sets both)"
        )


def _encoder_stats(name: str) -> tuple[Sequence[float], Sequence[float]]:
    if name.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(name[3:])
        if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
            return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def read_checkpoint_file(path: str | os.PathLike[str], what: str, remedy: str) -> Any:
    """A peer's ``torch.save``-d checkpoint, read with ``weights_only=True`` (no code is unpickled).

    Raises:
        WeightsUnavailableError: the file cannot be read; the message names ``what`` it should
            be and the ``remedy``.
    """
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(
            f"could not read {what} checkpoint {os.fspath(path)!r} ({type(err).__name__}: {err}); {remedy}"
        ) from err


def write_model_folder(
    directory: str | os.PathLike[str], architecture: str, settings: dict[str, Any], module: nn.Module
) -> Path:
    """Write a model folder of another architecture than LCCo's: ``config.json`` (the cosegkit
    version, ``architecture`` and the constructor's ``settings`` under ``"model"``) and the
    module's weights as ``model.safetensors``, each atomically; returns the folder."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config = {"cosegkit_version": __version__, "architecture": architecture, "model": settings}
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return path


def model_folder(path: str | os.PathLike[str]) -> Path:
    """The model folder that ``path`` names: ``path/model`` for a run folder of ``cosegkit train``, else ``path``.

    A folder holding ``model/config.json`` is a run folder (its own ``config.json`` is the
    run's settings, not a model's). The command line and :meth:`LCCo.from_pretrained
    <cosegkit.LCCo.from_pretrained>` follow this one rule.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models.lcco import model_folder
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "model").mkdir()
        >>> _ = (run / "model" / "config.json").write_text("{}")
        >>> model_folder(run) == run / "model", model_folder(run / "model") == run / "model"
        (True, True)
    """
    folder = Path(path)
    if (folder / "model" / CONFIG_NAME).is_file():
        return folder / "model"
    return folder


def _run_settings(folder: Path, encoder_name: Any) -> dict[str, int]:
    """``image_size`` and ``set_size`` from the config.json of the run folder around a model folder.

    Only a training run's config (it names the same encoder as the model) counts; anything
    else gives ``{}``.
    """
    run_config = folder.resolve().parent / CONFIG_NAME
    try:
        data = json.loads(run_config.read_text())
    except (OSError, ValueError):
        return {}
    # a model's own config.json holds its settings under "model" (a dict); a run's names its network there
    if not isinstance(data, dict) or isinstance(data.get("model"), dict) or data.get("encoder") != encoder_name:
        return {}
    found = {}
    for key in ("image_size", "set_size"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            found[key] = value
    return found


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The constructor arguments stored in a model folder's ``config.json``, as :meth:`LCCo.from_pretrained
    <cosegkit.LCCo.from_pretrained>` reads them.

    A config written before the variants existed gets the settings it was built with; one written
    before ``image_size`` and ``set_size`` were stored takes them from the run folder around
    it (``cosegkit train``'s ``config.json``), or has ``None`` for them. Reading it loads no
    weights, so a command can check its settings before the model is loaded.

    Raises:
        WeightsUnavailableError: no readable LCCo ``config.json`` in the folder.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from cosegkit.models.lcco import read_config
        >>> run = Path(tempfile.mkdtemp())  # a run folder written before the image size was stored
        >>> _ = (run / "config.json").write_text(json.dumps({"encoder": "resnet18", "image_size": 64, "set_size": 4}))
        >>> (run / "model").mkdir()
        >>> _ = (run / "model" / "config.json").write_text(json.dumps({"model": {"encoder_name": "resnet18"}}))
        >>> config = read_config(run / "model")
        >>> config["image_size"], config["set_size"], config["variant"]
        (64, 4, 'paper')
    """
    config_file = Path(path) / CONFIG_NAME
    try:
        data = json.loads(config_file.read_text())
        if isinstance(data, dict) and data.get("architecture", "lcco") != "lcco":
            raise WeightsUnavailableError(
                f"{str(Path(path))!r} holds a {data['architecture']!r} model, not an LCCo; load it with "
                f"cosegkit.load_model (or its class's from_pretrained)"
            )
        kwargs = dict(data["model"])
    except FileNotFoundError as err:
        raise WeightsUnavailableError(f"{str(Path(path))!r} is not an LCCo checkpoint: no {CONFIG_NAME} in it") from err
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise WeightsUnavailableError(f"{str(config_file)!r} is not a valid LCCo config: {err}") from err
    if "variant" not in kwargs:  # written before the variants existed
        kwargs = {**LEGACY_SETTINGS, **kwargs}
    if kwargs.get("image_size") is None or kwargs.get("set_size") is None:  # e.g. written before they were stored
        found = _run_settings(Path(path), kwargs.get("encoder_name"))
        for key in ("image_size", "set_size"):
            if kwargs.get(key) is None:
                kwargs[key] = found.get(key)
    return kwargs


def refuse_class_oracle(model: nn.Module, action: str) -> None:
    """Refuse to ``action`` with a class-oracle model (:attr:`LCCo.class_oracle <cosegkit.LCCo.class_oracle>`).

    New images come without their class, and a class oracle needs it; ``cosegkit segment``,
    ``cosegkit export``, :func:`~cosegkit.engine.segment.segment_files` and the export functions
    call this first. Any model that is not a class oracle passes.

    Raises:
        CosegValueError: the model is a class oracle.

    Example:
        >>> from cosegkit.models.lcco import refuse_class_oracle
        >>> from cosegkit.testing import tiny_model
        >>> refuse_class_oracle(tiny_model(), "segment new images")  # chooses its class itself: passes
        >>> refuse_class_oracle(tiny_model(class_oracle=True), "segment new images")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: this LCCo is a class oracle ...: it cannot segment new images, ...
    """
    if getattr(model, "class_oracle", False):
        raise CosegValueError(
            f"this LCCo is a class oracle (trained told each set's true class, --class-oracle): it cannot {action}, "
            f"which come without their class; use a model trained without --class-oracle (or set "
            f"model.class_oracle = False to let this one choose the class itself)"
        )


class LCCo(nn.Module):
    r"""LCCo: a segmentation backbone refined by image-set correspondence and CLIP.

    Every image of a set goes through an smp encoder; a U-Net style top-down decoder then
    refines its features coarse to fine with the three set-aware modules of the paper:

    - :class:`~cosegkit.ImageSetCorrespondence` on the deepest features :math:`\mathcal F^1`
      (stride 32), eq. (1)-(2);
    - :class:`~cosegkit.ClipInteraction` on the next level :math:`\mathcal F^2` (stride 16),
      eq. (3)-(5), with :class:`~cosegkit.layers.CoarseMaskDecoder` for eq. (11);
    - :class:`~cosegkit.ClipRegularization` on the next :math:`\mathcal F^3` (stride 8),
      eq. (6)-(8);

    then further decoder blocks and a segmentation head at input resolution. With the three
    switches off it is the paper's single-image *Baseline*; every row of the paper's Table 2
    is one constructor call.

    Images are RGB in [0, 1]; the model normalises them itself, once with the encoder's
    statistics and once with CLIP's. Any ``H`` and ``W`` work: the input is padded to the
    encoder's stride and the masks cropped back.

    Args:
        encoder_name: any smp encoder (``"resnet50"``, ``"efficientnet-b0"``, ``"mit_b0"``,
            ``"tu-<timm name>"``...).
        encoder_weights: an smp weights tag (``"imagenet"``), a local weights file, or ``None``.
        encoder_depth: encoder stages; at least 3 feature levels are needed.
        decoder_channels: channels of the decoder levels, deepest first (one per feature
            level; default ``(256, 128, 64, 32, 16)``, cut to the number of levels).
        clip: a ready :class:`~cosegkit.clip.FrozenClip`; built from ``clip_model`` and
            ``clip_pretrained`` when omitted and a CLIP module is on.
        clip_model: open_clip architecture name (the paper's ViT-B/16 by default).
        clip_pretrained: open_clip weights tag, local weights file, or ``None`` (random).
        classnames: the prompt vocabulary (default
            :data:`~cosegkit.clip.DEFAULT_VOCABULARY`); ignored when ``clip`` is given.
        templates: prompt templates; ignored when ``clip`` is given.
        top_k: ``K`` distilled text embeddings (eq. 3-5; the paper's 5).
        heads: attention heads of the correspondence module.
        clip_heads: attention heads of the interaction module's eq. (4).
        use_correspondence: switch for the image-set feature correspondence module.
        use_interaction: switch for the CLIP interaction module.
        use_regularization: switch for the CLIP regularization module.
        coarse_decoder: build the coarse decoder of eq. (11) (needs the interaction module
            and a CLIP that gives dense patch tokens).
        use_grouping: switch for the set-level grouping layer
            (:class:`~cosegkit.SetGrouping`, an extension after SegCLIP; off in the paper's
            model). Its output is the ``grouping`` field of
            :class:`~cosegkit.models.output.LCCoOutput`.
        grouping_level: the decoder level the grouping layer refines, after that level's
            module: 1 (:math:`\mathcal F^1`, with ISFC; the default), 2 or 3.
        num_groups: the grouping layer's centres ``G``.
        grouping_layers: the grouping layer's cross-attention blocks.
        grouping_activation: the grouping layer's ``activation``, ``"gelu"`` or
            ``"quick_gelu"`` (SegCLIP's); stored in the config, and a config written before
            the setting existed loads as ``"gelu"``.
        micro_batch: in eval mode, run the per-image stages (encoder, CLIP pass) on at most
            this many images at a time. Large batches are slower per image on CPUs (a
            ResNet-50 forward on 32 images takes about 1.5x the time of four forwards on 8), and
            the set-aware modules still see whole sets. ``None`` runs everything at once.
            Training mode always runs the encoder on the whole batch, so batch norm keeps
            its batch statistics.
        variant: ``"default"`` (what trains best) or ``"paper"`` (eq. 2, 5, 7 and 8 as
            printed); see :data:`~cosegkit.layers.variants.VARIANTS`, the same table the layers
            read. The five settings below default to the variant's and override it one by one.
        residual: add each CLIP module's input features to its output (eq. 5 and 8 become
            :math:`F + \hat F`).
        correspondence_residual: add ISFC's input features to its output (eq. 2 becomes
            :math:`F_i + \hat F_i`).
        unit_scale: scale :math:`z_i` (eq. 5) and :math:`h^{txt}_{i^*}` (eq. 8) to a root
            mean square of 1 before they modulate the features.
        class_pool: how eq. (7) pools the per-image class scores over the set, ``"max"``
            (the paper) or ``"mean"``.
        class_prior: weight :math:`\tau` of CLIP's own ranking in eq. (7),
            :math:`\mathrm{MLP}_3(s_i) + \tau\,\mathrm{LN}(s_i)`; 0 in the paper.
        image_size: the square image side ``S`` the model was trained at (``cosegkit train``
            records its ``--image-size``), or ``None`` when unknown. It changes nothing in
            the forward pass, which takes any size; it is saved with the model, and
            ``cosegkit evaluate``, ``segment`` and ``export`` (and
            :func:`~cosegkit.export.export_onnx`) resize to it unless told another size.
        set_size: the images per set ``N`` the model was trained with, or ``None`` when
            unknown; saved with the model like ``image_size``.
        class_oracle: the model is a *class oracle*: it is told each set's true class, which
            replaces the regularization module's own choice :math:`i^*` (eq. 6-8), so
            :meth:`forward` and :meth:`predict` need ``common_class``
            (:attr:`class_oracle`). Needs the regularization module; saved with the model.

    Example:
        >>> import torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()  # a tiny random CLIP, "coseg-test-tiny", for offline examples
        >>> from cosegkit import LCCo
        >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
        ...              clip_model="coseg-test-tiny", clip_pretrained=None,
        ...              decoder_channels=(32, 32, 16, 16), heads=4, clip_heads=4, top_k=3)
        >>> out = model(torch.rand(2, 4, 3, 64, 80))
        >>> out.masks.shape, out.class_probs.shape, out.topk_indices.shape
        (torch.Size([2, 4, 1, 64, 80]), torch.Size([2, 92]), torch.Size([2, 3]))
    """

    def __init__(
        self,
        *,
        encoder_name: str = "resnet50",
        encoder_weights: str | os.PathLike[str] | None = "imagenet",
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] | None = None,
        clip: FrozenClip | None = None,
        clip_model: str = "ViT-B-16",
        clip_pretrained: str | os.PathLike[str] | None = "openai",
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        top_k: int = 5,
        heads: int = 8,
        clip_heads: int = 8,
        use_correspondence: bool = True,
        use_interaction: bool = True,
        use_regularization: bool = True,
        coarse_decoder: bool = True,
        use_grouping: bool = False,
        grouping_level: int = 1,
        num_groups: int = 8,
        grouping_layers: int = 2,
        grouping_activation: str = "gelu",
        variant: str = "default",
        residual: bool | None = None,
        correspondence_residual: bool | None = None,
        unit_scale: bool | None = None,
        class_pool: str | None = None,
        class_prior: float | None = None,
        micro_batch: int | None = 8,
        image_size: int | None = None,
        set_size: int | None = None,
        class_oracle: bool = False,
    ) -> None:
        super().__init__()
        settings = resolve_settings(
            variant,
            residual=residual,
            correspondence_residual=correspondence_residual,
            unit_scale=unit_scale,
            class_pool=class_pool,
            class_prior=class_prior,
        )
        self.encoder = build_encoder(encoder_name, encoder_weights, encoder_depth)
        enc_channels = list(self.encoder.out_channels)
        self.levels = feature_levels(enc_channels)
        if len(self.levels) < 3:
            raise CosegValueError(
                f"LCCo refines three decoder levels, but encoder {encoder_name!r} at depth "
                f"{encoder_depth} gives {len(self.levels)} feature levels; use encoder_depth >= 3 (--encoder-depth)"
            )
        n_levels = len(self.levels)
        if decoder_channels is None:
            base = list(DEFAULT_DECODER_CHANNELS)
            decoder_channels = (base + [base[-1]] * n_levels)[:n_levels]
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) != n_levels:
            raise CosegValueError(
                f"decoder_channels needs one entry per feature level of {encoder_name!r} "
                f"({n_levels}, deepest first), got {len(decoder_channels)}: {decoder_channels} (--decoder-channels)"
            )
        self.output_stride = int(getattr(self.encoder, "output_stride", 2**encoder_depth))
        mean, std = _encoder_stats(encoder_name)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(3, 1, 1), persistent=False)

        # top-down decoder: center at the deepest level, then one block per shallower level
        skips = [enc_channels[i] for i in reversed(self.levels[:-1])]
        self.center = ConvBNReLU(enc_channels[self.levels[-1]], decoder_channels[0])
        self.blocks = nn.ModuleList(
            DecoderBlock(decoder_channels[k], skips[k], decoder_channels[k + 1]) for k in range(n_levels - 1)
        )
        self.head = nn.Conv2d(decoder_channels[-1], 1, kernel_size=3, padding=1)

        self.use_correspondence = use_correspondence
        self.use_interaction = use_interaction
        self.use_regularization = use_regularization
        needs_clip = use_interaction or use_regularization
        if needs_clip and clip is None:
            clip = FrozenClip.from_name(
                clip_model,
                pretrained=clip_pretrained,
                classnames=DEFAULT_VOCABULARY if classnames is None else classnames,
                templates=DEFAULT_TEMPLATES if templates is None else templates,
            )
        self.clip: FrozenClip | None = clip if needs_clip else None
        d = self.clip.embed_dim if self.clip is not None else 0
        p = self.clip.num_prompts if self.clip is not None else 0
        if use_interaction and top_k > p:
            raise CosegValueError(
                f"top_k={top_k} is larger than the vocabulary of {p} prompts; lower top_k (--top-k) or add "
                f"class names (cosegkit train: --top-k; the synthetic world's vocabulary grows with --world-classes)"
            )

        _check_heads(
            heads,
            clip_heads,
            d,
            {
                "the correspondence (ISFC)": decoder_channels[0] if use_correspondence else None,
                "the grouping layer": decoder_channels[grouping_level - 1]
                if use_grouping and grouping_level in (1, 2, 3)
                else None,
            },
            clip_used=use_interaction,
        )
        self.correspondence: nn.Module = (
            ImageSetCorrespondence(decoder_channels[0], heads=heads, residual=settings["correspondence_residual"])
            if use_correspondence
            else nn.Identity()
        )
        self.interaction: nn.Module = (
            ClipInteraction(
                decoder_channels[1],
                d,
                top_k=top_k,
                heads=clip_heads,
                residual=settings["residual"],
                unit_scale=settings["unit_scale"],
            )
            if use_interaction
            else nn.Identity()
        )
        self.coarse: nn.Module = CoarseMaskDecoder(d) if use_interaction and coarse_decoder else nn.Identity()
        self.regularization: nn.Module = (
            ClipRegularization(
                decoder_channels[2],
                d,
                p,
                residual=settings["residual"],
                unit_scale=settings["unit_scale"],
                class_pool=settings["class_pool"],
                class_prior=settings["class_prior"],
            )
            if use_regularization
            else nn.Identity()
        )
        self.has_coarse = use_interaction and coarse_decoder
        if grouping_level not in (1, 2, 3):
            raise CosegValueError(
                f"grouping_level must be 1, 2 or 3 (the decoder level of F^1, F^2 or F^3), got {grouping_level!r}"
            )
        self.use_grouping = use_grouping
        self.grouping_level = grouping_level
        self.grouping: nn.Module = (
            SetGrouping(
                decoder_channels[grouping_level - 1],
                num_groups=num_groups,
                heads=heads,
                layers=grouping_layers,
                activation=grouping_activation,
            )
            if use_grouping
            else nn.Identity()
        )
        if micro_batch is not None and micro_batch < 1:
            raise CosegValueError(f"micro_batch must be a positive integer or None, got {micro_batch}")
        self.micro_batch = micro_batch
        if self.clip is not None:
            self.clip.micro_batch = micro_batch
        self.config: dict[str, Any] = {
            "encoder_name": encoder_name,
            "encoder_depth": encoder_depth,
            "decoder_channels": decoder_channels,
            "clip_model": (self.clip.source.get("model_name") if self.clip is not None else clip_model),
            "classnames": list(self.clip.classnames) if self.clip is not None else None,
            "templates": list(self.clip.templates) if self.clip is not None else None,
            "top_k": top_k,
            "heads": heads,
            "clip_heads": clip_heads,
            "use_correspondence": use_correspondence,
            "use_interaction": use_interaction,
            "use_regularization": use_regularization,
            "coarse_decoder": coarse_decoder,
            "use_grouping": use_grouping,
            "grouping_level": grouping_level,
            "num_groups": num_groups,
            "grouping_layers": grouping_layers,
            "grouping_activation": grouping_activation,
            "variant": variant,
            **settings,
            "micro_batch": micro_batch,
        }
        self.image_size = image_size
        self.set_size = set_size
        self.class_oracle = class_oracle

    # ------------------------------------------------------------------ how it was trained
    @property
    def image_size(self) -> int | None:
        """The square image side the model was trained at, or ``None`` when unknown.

        :meth:`save_pretrained` stores it in ``config.json``; ``cosegkit evaluate``, ``segment``
        and ``export`` resize to it unless given ``--image-size``. A model saved before the
        size was stored reads it from the ``config.json`` of the run folder around it, when
        there is one (:meth:`from_pretrained`), and is ``None`` otherwise.

        Example:
            >>> from cosegkit import LCCo
            >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, decoder_channels=(16, 16, 8, 8),
            ...              use_correspondence=False, use_interaction=False, use_regularization=False)
            >>> print(model.image_size)
            None
            >>> model.image_size = 64  # e.g. after training it yourself at 64 x 64
            >>> model.image_size, model.config["image_size"]
            (64, 64)
        """
        return self.config.get("image_size")

    @image_size.setter
    def image_size(self, value: int | None) -> None:
        self.config["image_size"] = _positive_or_none(value, "image_size")

    @property
    def set_size(self) -> int | None:
        """The images per set the model was trained with, or ``None`` when unknown (stored like :attr:`image_size`)."""
        return self.config.get("set_size")

    @set_size.setter
    def set_size(self, value: int | None) -> None:
        self.config["set_size"] = _positive_or_none(value, "set_size")

    @property
    def class_oracle(self) -> bool:
        """Whether the model is told each set's class, and so needs ``common_class`` at every forward pass.

        A model trained as a class oracle (``cosegkit train --class-oracle``) regularised its
        features with each set's true class instead of its own choice :math:`i^*`; it is
        scored the same way (``evaluate(..., class_oracle=True)``), and new images, which come
        without a class, cannot be segmented by it (``cosegkit segment`` and ``export``
        refuse it). Stored in ``config.json``. Setting it to False lets the model choose the
        class itself again: its :math:`\\mathrm{MLP}_3` was trained all the same.

        Example:
            >>> import torch
            >>> from cosegkit.testing import register_tiny_clips
            >>> _ = register_tiny_clips()
            >>> from cosegkit import LCCo
            >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, decoder_channels=(16, 16, 8, 8),
            ...              clip_model="coseg-test-tiny", clip_pretrained=None, classnames=["cat", "dog", "car"],
            ...              use_correspondence=False, use_interaction=False, class_oracle=True)
            >>> model.class_oracle, model.config["class_oracle"]
            (True, True)
            >>> out = model(torch.rand(2, 3, 3, 32, 32), common_class=torch.tensor([2, 0]))  # car, cat
            >>> out.common_class.tolist()
            [2, 0]
        """
        return bool(self.config.get("class_oracle", False))

    @class_oracle.setter
    def class_oracle(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise CosegValueError(f"class_oracle must be True or False, got {value!r}")
        if value and not self.use_regularization:
            raise CosegValueError(
                "class_oracle=True gives the CLIP regularization module (eq. 6-8) each set's class, and this "
                "model has none; build it with use_regularization=True (cosegkit train: without --no-regularization)"
            )
        self.config["class_oracle"] = value

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        valid: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        class_targets: torch.Tensor | None = None,
        common_class: torch.Tensor | None = None,
    ) -> LCCoOutput:
        """Co-segment batches of image sets.

        Args:
            images: ``(B, N, 3, H, W)`` RGB in [0, 1]: ``B`` sets of ``N >= 1`` images, of any
                floating dtype (converted to the model's: a float64 or float16 batch runs on a
                float32 model).
            valid: optional boolean ``(B, N)``; False marks padding in sets shorter than ``N``.
                Padded images neither send nor receive messages and do not count in set
                statistics; their masks are meaningless.
            masks: optional ground-truth masks ``(B, N, 1, H, W)`` (training). With the
                regularization module on, the masked images go through CLIP in the same call
                as the images and ``class_targets`` is filled in for the loss.
            class_targets: optional ``(B,)`` long: eq. (12)'s target class of each set, computed
                elsewhere (:class:`~cosegkit.engine.class_targets.ClassTargetCache` takes it from
                cached embeddings of the masked images). It is passed through to the output's
                ``class_targets``, and the masked images do not go through CLIP (``masks`` is
                then ignored).
            common_class: optional ``(B,)`` integer: each set's true class as an index into
                the vocabulary (``model.clip.classnames``), the *class oracle*. It replaces the
                regularization module's choice :math:`i^*` in eq. (8); the class probabilities
                are computed as before (the classification loss still trains them), and the
                output's ``common_class`` is the given class. Needs the regularization module;
                required when :attr:`class_oracle` is True.

        Returns:
            An :class:`~cosegkit.models.output.LCCoOutput`.

        Raises:
            CosegValueError: ``common_class`` without the regularization module, or missing on
                a class-oracle model.
        """
        check_image_set(images)
        self._check_oracle_input(common_class)
        if images.dtype != self.head.weight.dtype:  # float64 / float16 data: the model's own precision
            images = images.to(self.head.weight.dtype)
        b, n, _, h, w = images.shape
        valid = resolve_valid(valid, b, n, images.device)
        if masks is not None and not is_compiling() and tuple(masks.shape) != (b, n, 1, h, w):
            raise CosegShapeError(
                f"expected ground-truth masks of shape {(b, n, 1, h, w)} to match the images, got {tuple(masks.shape)}"
            )
        if class_targets is not None and not is_compiling() and tuple(class_targets.shape) != (b,):
            raise CosegShapeError(
                f"expected class_targets of shape {(b,)}, one class index per set, got {tuple(class_targets.shape)}"
            )
        out = LCCoOutput(masks=images.new_empty(0), valid=valid)
        if class_targets is not None and self.use_regularization:
            out.class_targets = class_targets.long()

        # one CLIP pass for everything CLIP has to see in this forward
        emb = tokens = text = None
        if self.clip is not None:
            clip_in = images
            with_targets = masks is not None and class_targets is None and self.use_regularization
            if with_targets:
                clip_in = torch.cat([images, masked_images(images, masks)], dim=1)
            if self.has_coarse:
                emb, tokens = self.clip.encode_checked(clip_in, dense=True)
                tokens = tokens[:, :n]
            else:
                emb = self.clip.encode_checked(clip_in)
            # CLIP may run in another precision than the trainable part (e.g. a half CLIP)
            dtype = self.head.weight.dtype
            emb, text = emb.to(dtype), self.clip.text_bank.to(dtype)
            tokens = tokens.to(dtype) if tokens is not None else None
            if with_targets:
                out.class_targets = targets_from_embeddings(emb[:, n:], text, valid)
            emb = emb[:, :n]

        # encoder, on images padded to the encoder's stride
        x = rearrange(images, "b n c h w -> (b n) c h w")
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        ph, pw = (-h) % self.output_stride, (-w) % self.output_stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        if self.training or self.micro_batch is None or x.shape[0] <= self.micro_batch:
            feats = self.encoder(x)
        else:  # the same per-image maths in eval mode, on cache-friendly chunks
            chunks = [self.encoder(part) for part in x.split(self.micro_batch)]
            feats = [torch.cat(level) for level in zip(*chunks, strict=True)]
        skips = [feats[i] for i in reversed(self.levels[:-1])]

        def as_set(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "(b n) c h w -> b n c h w", b=b)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return rearrange(t, "b n c h w -> (b n) c h w")

        def group(level: int, f: torch.Tensor) -> torch.Tensor:
            if not (self.use_grouping and level == self.grouping_level):
                return f
            out.grouping = self.grouping(as_set(f), valid)
            return flat(out.grouping.features)

        f = self.center(feats[self.levels[-1]])  # F^1
        if self.use_correspondence:
            f = flat(self.correspondence(as_set(f), valid))
        f = group(1, f)
        f = self.blocks[0](f, skips[0])  # F^2
        similarity = None
        if self.use_interaction:
            inter = self.interaction(as_set(f), emb, text, valid)
            f = flat(inter.features)
            similarity, out.topk_indices = inter.similarity, inter.topk_indices
            if self.has_coarse:
                out.coarse_masks = self.coarse(inter.set_embeddings, tokens)
        f = group(2, f)
        f = self.blocks[1](f, skips[1])  # F^3
        if self.use_regularization:
            if similarity is None:
                similarity = clip_similarity(emb, text)
            reg = self.regularization(as_set(f), similarity, text, valid, common_class=common_class)
            f = flat(reg.features)
            out.class_probs, out.common_class = reg.class_probs, reg.common_class
        f = group(3, f)
        for block, skip in zip(self.blocks[2:], skips[2:], strict=True):
            f = block(f, skip)
        logits = F.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear", align_corners=False)
        out.masks = as_set(logits[..., :h, :w])
        out.similarity = similarity
        return out

    def _check_oracle_input(self, common_class: torch.Tensor | None) -> None:
        """Refuse ``common_class`` without the regularization module, and its absence on a class oracle."""
        if common_class is not None and not self.use_regularization:
            raise CosegValueError(
                "common_class replaces the class chosen by the CLIP regularization module (eq. 6-8), and this "
                "model has none (use_regularization=False); call it without common_class"
            )
        if common_class is None and self.class_oracle:
            raise CosegValueError(
                "this LCCo is a class oracle (class_oracle=True, trained told each set's true class): pass "
                "common_class, a (B,) tensor of each set's index in model.clip.classnames (evaluate(..., "
                "class_oracle=True) passes the sets' groups); to let it choose the class itself, set "
                "model.class_oracle = False"
            )

    @torch.inference_mode()
    def predict(
        self, images: torch.Tensor, valid: torch.Tensor | None = None, common_class: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask probabilities ``(B, N, 1, H, W)``; switches the model to eval mode.

        ``common_class`` is :meth:`forward`'s: each set's class, for a class oracle.

        Example:
            >>> import torch
            >>> from cosegkit import LCCo
            >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None,
            ...              use_correspondence=False, use_interaction=False, use_regularization=False,
            ...              decoder_channels=(32, 32, 16, 16))
            >>> probs = model.predict(torch.rand(1, 3, 3, 48, 48))
            >>> probs.shape, bool(((probs >= 0) & (probs <= 1)).all())
            (torch.Size([1, 3, 1, 48, 48]), True)
        """
        if self.training:
            self.eval()
        return self(images, valid, common_class=common_class).masks.sigmoid()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train (the frozen CLIP is never among :meth:`~torch.nn.Module.parameters` anyway)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_kwargs: Any,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and, with a CLIP, ``clip.safetensors``.

        The directory is self-contained: :meth:`from_pretrained` rebuilds the model from it
        without downloading anything, and loading never unpickles code. ``config.json`` holds
        the constructor's settings, :attr:`image_size` and :attr:`set_size` included. Each
        file is written atomically, with the usual mode (``0o666`` minus the umask).

        With ``push_to_hub=True`` the folder then goes to the Hugging Face hub as ``repo_id``
        (``"ORG/NAME"``), with a generated model card (:func:`cosegkit.hub.push_to_hub`, which
        takes ``push_kwargs``: ``private``, ``token``, ``revision``, ``commit_message``,
        ``figures``, ``license``); ``LCCo.from_pretrained("ORG/NAME")`` loads it back.

        Returns:
            The directory.

        Raises:
            CosegValueError: ``push_to_hub`` without a valid ``repo_id``.
            HubError: the push failed (no token, refused, unreachable).

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from cosegkit.testing import tiny_model
            >>> folder = tiny_model().save_pretrained(Path(tempfile.mkdtemp()) / "model")
            >>> sorted(p.name for p in folder.iterdir())
            ['clip.safetensors', 'config.json', 'model.safetensors', 'open_clip_config']
        """
        from cosegkit.hub import save_then_push

        return save_then_push(
            lambda: self._write_folder(directory), push_to_hub=push_to_hub, repo_id=repo_id, **push_kwargs
        )

    def _write_folder(self, directory: str | os.PathLike[str]) -> Path:
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {"cosegkit_version": __version__, "model": dict(self.config)}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        if self.clip is not None:
            name = self.clip.source.get("model_name")
            if not name:
                raise CosegValueError(
                    "this LCCo's CLIP has no open_clip architecture name, so a checkpoint could not "
                    "rebuild it; build it with FrozenClip.from_name(...) or FrozenClip(model, "
                    "tokenizer, model_name='ViT-B-16')"
                )
            import open_clip

            clip_cfg = open_clip.get_model_config(name)
            if clip_cfg is not None:
                (path / CLIP_CONFIG_DIR).mkdir(exist_ok=True)
                text = json.dumps(clip_cfg, indent=2)
                atomic_write(path / CLIP_CONFIG_DIR / f"{name}.json", lambda tmp: Path(tmp).write_text(text))
            clip_state = {k: v.detach().contiguous().cpu() for k, v in self.clip.clip_state_dict().items()}
            atomic_write(path / CLIP_WEIGHTS_NAME, lambda tmp: save_file(clip_state, tmp, metadata={"format": "pt"}))
        atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
        return path

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> LCCo:
        """Load a model written by :meth:`save_pretrained`: a folder, a run folder, or a Hugging Face hub id.

        A run folder of ``cosegkit train`` (one holding ``model/``) loads its ``model/``, as the
        command line does. Any other name that is not a local folder is a hub repository,
        ``"ORG/NAME"``, as ``cosegkit push`` or ``save_pretrained(push_to_hub=True)`` uploads it:
        its ``.json`` and ``.safetensors`` files are downloaded into the Hugging Face cache
        (``HF_HUB_CACHE``) once and read from there after, also offline (``HF_HUB_OFFLINE=1``).
        A private repository needs a token (``hf auth login`` or ``HF_TOKEN``). A model saved before :attr:`image_size` and :attr:`set_size` were
        stored takes them from the run folder's ``config.json`` around it, when there is one.

        Raises:
            WeightsUnavailableError: a hub id that cannot be fetched (e.g. offline), missing
                files, or a truncated or foreign weights file.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from cosegkit import LCCo
            >>> model = LCCo(encoder_name="tu-test_convnext", encoder_weights=None, decoder_channels=(16, 16, 8, 8),
            ...              use_correspondence=False, use_interaction=False, use_regularization=False,
            ...              image_size=64, set_size=4)
            >>> run = Path(tempfile.mkdtemp())
            >>> _ = model.save_pretrained(run / "model")
            >>> loaded = LCCo.from_pretrained(run)  # the run folder: its model/ is loaded
            >>> loaded.image_size, loaded.set_size
            (64, 4)

            From the hub, by name (downloaded once, then cached)::

                model = LCCo.from_pretrained("my-lab/lcco-pascal")
        """
        path = Path(name_or_path)
        if path.is_dir():
            path = model_folder(path)
        else:
            path = cls._download(str(name_or_path))
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            unfinished = (
                "; it looks like a run folder whose run has not finished (no model/ yet): resume it with "
                f"cosegkit train --out {path} --resume"
                if (path / "checkpoints").is_dir()
                else ""
            )
            raise WeightsUnavailableError(
                f"{str(path)!r} is not an LCCo checkpoint: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it{unfinished}"
            )
        kwargs = read_config(path)
        clip = None
        if kwargs["use_interaction"] or kwargs["use_regularization"]:
            import open_clip

            name = kwargs["clip_model"]
            cfg_file = path / CLIP_CONFIG_DIR / f"{name}.json"
            if name not in open_clip.list_models() and cfg_file.is_file():
                open_clip.add_model_config(cfg_file)
            with weights_follow():  # random init, then the checkpoint's weights: no "randomly" notice
                clip = FrozenClip.from_name(
                    name, pretrained=None, classnames=kwargs["classnames"], templates=kwargs["templates"]
                )
            if not (path / CLIP_WEIGHTS_NAME).is_file():
                raise WeightsUnavailableError(f"{str(path)!r} lacks {CLIP_WEIGHTS_NAME}")
            clip.model.load_state_dict(_read_safetensors(path / CLIP_WEIGHTS_NAME))
            clip.set_vocabulary(kwargs["classnames"], kwargs["templates"])  # text bank from loaded weights
        for key in ("clip_model", "classnames", "templates"):
            kwargs.pop(key)
        model = cls(clip=clip, encoder_weights=None, clip_pretrained=None, **kwargs)
        model.load_state_dict(_read_safetensors(path / WEIGHTS_NAME))
        return model.to(map_location)

    @staticmethod
    def _download(repo_id: str) -> Path:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as err:
            raise WeightsUnavailableError(
                f"{repo_id!r} is neither a local folder nor a reachable hub repository "
                f"({type(err).__name__}: {err}); pass the folder written by save_pretrained"
            ) from err
