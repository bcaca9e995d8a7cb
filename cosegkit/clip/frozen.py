"""A frozen open_clip model that encodes image sets and owns the prompt vocabulary.

Axis legend (einops):
    b   batch of sets    n   images per set    d   CLIP embedding width
    p   prompts          t   templates         h w patch grid
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cosegkit._validation import check_image_set
from cosegkit.clip.activation import trained_architecture
from cosegkit.clip.vocabulary import DEFAULT_TEMPLATES, DEFAULT_VOCABULARY
from cosegkit.errors import CosegValueError, WeightsUnavailableError

__all__ = ["FrozenClip"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
log = logging.getLogger(__name__)


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.endswith(_WEIGHT_SUFFIXES) or os.path.exists(s)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _drop_root_messages(prefix: str) -> Iterator[None]:
    """Drop the root logger's records that start with ``prefix`` (where open_clip logs) while inside."""
    root = logging.getLogger()
    drop = _DropMessage(prefix)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a CLIP state dict read by cosegkit as open_clip's ``load_checkpoint`` loads a file's.

    The logit scale's shape follows the model's; position embeddings are resized to the model's
    grid and context length; every other key must match.
    """
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = dict(state)
    scale = getattr(model, "logit_scale", None)
    if "logit_scale" in state and scale is not None and state["logit_scale"].ndim != scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def weights_follow() -> contextlib.AbstractContextManager[None]:
    """Silence open_clip's "No pretrained weights loaded ... initialized randomly" notice.

    For code that builds a CLIP with ``pretrained=None`` only to load trained weights into it
    right after (:meth:`LCCo.from_pretrained <cosegkit.LCCo.from_pretrained>`): there the notice
    says the opposite of what happens. open_clip logs it on the root logger; every other
    record passes.

    Example:
        >>> import logging
        >>> from cosegkit.clip.frozen import weights_follow
        >>> with weights_follow():
        ...     logging.getLogger().filters[-1].filter(logging.makeLogRecord({"msg": "No pretrained weights loaded for x"}))
        False
    """
    return _drop_root_messages("No pretrained weights loaded")


class FrozenClip(nn.Module):
    """A frozen CLIP: text bank, image-set embeddings and dense patch tokens.

    Wraps an `open_clip <https://github.com/mlfoundations/open_clip>`_ model. The CLIP is
    frozen in every sense: always in eval mode, no gradients, and held *outside* the module
    tree, so its weights are neither in ``parameters()`` (an optimizer built from the
    assembled model never sees them) nor in ``state_dict()`` (checkpoints do not carry a
    second copy). ``.to()``, ``.cuda()``, ``.half()`` and friends still move it.

    The text bank :math:`\\mathcal H^{txt}` (one L2-normalised embedding per class name,
    averaged over the prompt templates) is computed once, on first use, and cached until the
    vocabulary changes.

    Build it by name with :meth:`from_name`, or around an already-built open_clip model and
    tokenizer with the constructor.

    Args:
        model: an open_clip ``CLIP`` model (anything with ``encode_image``, ``encode_text`` and
            a ``visual`` tower).
        tokenizer: the matching open_clip tokenizer (a callable from a list of strings to
            token ids).
        classnames: the vocabulary, one name per prompt (default:
            :data:`~cosegkit.clip.DEFAULT_VOCABULARY`).
        templates: prompt templates with one ``{}`` for the class name (default:
            ``("a photo of a {}.",)``).
        image_size: CLIP input size; read from the model when omitted.
        mean: per-channel normalisation mean; read from the model when omitted.
        std: per-channel normalisation std; read from the model when omitted.
        model_name: the open_clip architecture name of ``model``, recorded so that
            :meth:`LCCo.save_pretrained <cosegkit.LCCo.save_pretrained>` can rebuild it.

    Example:
        >>> import open_clip, torch
        >>> from cosegkit.testing import register_tiny_clips
        >>> _ = register_tiny_clips()  # a tiny random CLIP, "coseg-test-tiny", for offline examples
        >>> from cosegkit.clip import FrozenClip
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> clip.text_bank.shape
        torch.Size([2, 32])
        >>> clip.encode_images(torch.rand(1, 3, 3, 40, 50)).shape
        torch.Size([1, 3, 32])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        *,
        classnames: Sequence[str] = DEFAULT_VOCABULARY,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        image_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        model_name: str | None = None,
    ) -> None:
        super().__init__()
        model.eval()
        model.requires_grad_(False)
        # held outside the module tree: not a parameter, not in the state dict, never in train mode
        object.__setattr__(self, "_clip", model)
        self.tokenizer = tokenizer
        cfg = self._preprocess_cfg(model)
        size = image_size if image_size is not None else cfg.get("size", 224)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean = cfg.get("mean", OPENAI_MEAN) if mean is None else mean
        std = cfg.get("std", OPENAI_STD) if std is None else std
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("_text_bank", None, persistent=False)
        self.text_bank_computations = 0
        self.micro_batch: int | None = None  # images per CLIP call; None: all at once
        self.classnames: tuple[str, ...] = ()
        self.templates: tuple[str, ...] = ()
        self.set_vocabulary(classnames, templates)
        self.source: dict[str, Any] = {"model_name": model_name, "pretrained": None}

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_name(
        cls,
        model_name: str = "ViT-B-16",
        pretrained: str | os.PathLike[str] | None = "openai",
        *,
        classnames: Sequence[str] = DEFAULT_VOCABULARY,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        cache_dir: str | None = None,
        device: str | torch.device = "cpu",
    ) -> FrozenClip:
        """Build an open_clip model by name and freeze it, in the activation its weights were trained with.

        open_clip's ``"ViT-B-16"``, ``"RN50"``, ... use GELU; OpenAI trained its weights with
        QuickGELU (open_clip's ``"ViT-B-16-quickgelu"``, ...). Where the weights say QuickGELU
        and ``model_name`` is a GELU architecture, the QuickGELU architecture is built instead,
        with one logged warning that says so (see :func:`~cosegkit.clip.activation.trained_architecture`):

        - a weights tag whose open_clip pretrained config says ``quick_gelu`` (``"openai"``,
          and e.g. ``"metaclip_400m"``, ``"dfn2b"``);
        - a local file in OpenAI's formats: the TorchScript archive OpenAI distributes
          (``ViT-B-16.pt``), or a state dict with OpenAI's ``input_resolution``,
          ``context_length`` and ``vocab_size`` entries (dropped on loading, as open_clip's
          own OpenAI loader drops them);
        - a local file inside the Hugging Face cache folder of such a tag's weights.

        Weights in open_clip's format carry no sign of their activation: for OpenAI's weights
        saved that way, pass the ``"-quickgelu"`` name. ``source`` records the architecture
        built (``"model_name"``) and the one asked for (``"requested_model_name"``).

        Args:
            model_name: an open_clip architecture name (``open_clip.list_models()``), e.g.
                ``"ViT-B-16"`` (the paper's) or ``"RN50"``.
            pretrained: an open_clip weights tag such as ``"openai"`` (downloaded on first
                use), a path to a local weights file (``.pt``, ``.bin``, ``.safetensors``, or
                OpenAI's TorchScript ``.pt``), or ``None`` for random weights (tests, offline
                smoke runs).
            classnames: the vocabulary.
            templates: the prompt templates.
            cache_dir: where open_clip caches downloaded weights.
            device: where to build the model.

        Raises:
            CosegValueError: unknown model name, a weights path that does not exist, or OpenAI
                weights under an architecture that has no QuickGELU setting.
            WeightsUnavailableError: the weights tag could not be downloaded or read.

        Example:
            >>> import torch
            >>> from cosegkit.clip import FrozenClip
            >>> from cosegkit.testing import register_tiny_clips
            >>> _ = register_tiny_clips()
            >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat"])
            >>> clip.source["model_name"], type(clip.model.visual.transformer.resblocks[0].mlp.gelu).__name__
            ('coseg-test-tiny', 'GELU')
        """
        import open_clip
        from open_clip.pretrained import get_pretrained_cfg

        if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
            raise CosegValueError(
                f"unknown open_clip model {model_name!r}; open_clip.list_models() lists the "
                f"{len(open_clip.list_models())} known names (e.g. 'ViT-B-16', 'ViT-B-32', 'RN50'), "
                f"and open_clip.add_model_config(path) registers your own (on the command line: --clip-model)"
            )
        weights = None if pretrained is None else os.fspath(pretrained)
        if weights is not None and _looks_like_path(weights) and not os.path.isfile(weights):
            raise CosegValueError(
                f"CLIP weights file {weights!r} does not exist; pass an existing file, an open_clip "
                f"tag such as 'openai', or None for random weights (on the command line: --clip-pretrained "
                f"FILE, TAG or none)"
            )
        requested = model_name
        try:
            choice = trained_architecture(model_name, weights)
        except CosegValueError:
            raise
        except Exception as err:  # a TorchScript archive torch.jit.load cannot read
            raise WeightsUnavailableError(
                f"could not read CLIP weights {weights!r} ({type(err).__name__}: {err}); pass a state dict "
                f"(.pt, .bin) or a .safetensors file, or None for random weights (on the command line: "
                f"--clip-pretrained FILE or none)"
            ) from err
        if choice.note is not None:
            log.warning(choice.note)
        model_name = choice.name
        try:
            with _drop_root_messages("Failed to download weights"):  # the error raised below says it, and more
                if choice.state_dict is not None:  # read here already: OpenAI's formats, TorchScript
                    with weights_follow():
                        model = open_clip.create_model(model_name, pretrained=None, device=device)
                    _load_state_dict(model, choice.state_dict)
                elif model_name != requested and get_pretrained_cfg(requested, weights or ""):
                    # a QuickGELU tag of a GELU name: the twin when open_clip lists the tag under
                    # it (all of open_clip's own), else the GELU name with open_clip's QuickGELU switch
                    tagged = model_name if get_pretrained_cfg(model_name, weights) else requested
                    model = open_clip.create_model(
                        tagged,
                        pretrained=weights,
                        cache_dir=cache_dir,
                        device=device,
                        weights_only=True,
                        force_quick_gelu=True,
                    )
                else:
                    model = open_clip.create_model(
                        model_name, pretrained=weights, cache_dir=cache_dir, device=device, weights_only=True
                    )
        except Exception as err:  # network, hub and file errors all land here
            if weights is None:
                raise
            raise WeightsUnavailableError(
                f"could not load CLIP weights {weights!r} for {model_name!r} ({type(err).__name__}: "
                f"{err}). On a machine without internet access, download the weights elsewhere and "
                f"pass the file: FrozenClip.from_name({model_name!r}, pretrained='/path/to/"
                f"open_clip_model.safetensors') or LCCo(clip_pretrained='/path/...'); pass "
                f"pretrained=None for random weights (on the command line: --clip-pretrained FILE or none)"
            ) from err
        clip = cls(
            model,
            open_clip.get_tokenizer(model_name),
            classnames=classnames,
            templates=templates,
            model_name=model_name,
        )
        clip.source["pretrained"] = weights
        clip.source["requested_model_name"] = requested
        return clip

    @staticmethod
    def _preprocess_cfg(model: nn.Module) -> dict[str, Any]:
        visual = getattr(model, "visual", model)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        if "size" not in cfg and hasattr(visual, "image_size"):
            cfg["size"] = visual.image_size
        return cfg

    # ---------------------------------------------------------------- properties
    @property
    def model(self) -> nn.Module:
        """The wrapped open_clip model (frozen, eval mode)."""
        return self._clip

    @property
    def embed_dim(self) -> int:
        """Width ``D`` of the joint image-text embedding space."""
        return int(self.text_bank.shape[1])

    @property
    def num_prompts(self) -> int:
        """Vocabulary size ``P``."""
        return len(self.classnames)

    def train(self, mode: bool = True) -> FrozenClip:
        super().train(mode)
        self._clip.eval()  # frozen: always in eval mode
        return self

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FrozenClip:
        super()._apply(fn, *args, **kwargs)
        self._clip._apply(fn, *args, **kwargs)
        return self

    def _param(self) -> torch.Tensor:
        return next(self._clip.parameters())

    # ---------------------------------------------------------------- text
    def set_vocabulary(self, classnames: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """Replace the vocabulary (and the templates, when given); the text bank is recomputed on next use.

        A built :class:`~cosegkit.LCCo` sizes its regularization module to the vocabulary, so
        changing the number of class names there needs a new model.

        Raises:
            CosegValueError: an empty list, a non-string or empty name, a duplicate name, or a
                template without exactly one ``{}``.
        """
        if isinstance(classnames, str) or isinstance(templates, str):
            raise CosegValueError("classnames and templates must be lists of strings, not a single string")
        if templates is None:
            templates = self.templates or DEFAULT_TEMPLATES
        classnames, templates = tuple(classnames), tuple(templates)
        if not classnames:
            raise CosegValueError("the prompt vocabulary is empty; give at least one class name")
        if not templates:
            raise CosegValueError("the template list is empty; give at least one, e.g. 'a photo of a {}.'")
        bad = [c for c in classnames if not isinstance(c, str) or not c.strip()]
        if bad:
            raise CosegValueError(f"class names must be non-empty strings, got {bad[:5]}")
        seen: set[str] = set()
        dup = sorted({c for c in classnames if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
        if dup:
            raise CosegValueError(f"duplicate class names in the vocabulary: {dup[:10]}")
        for t in templates:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise CosegValueError(f"each template needs exactly one '{{}}' for the class name, got {t!r}")
        self.classnames, self.templates = classnames, templates
        self._text_bank = None

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised CLIP embeddings of free texts, ``(len(texts), D)``."""
        device = self._param().device
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(device)
            out.append(F.normalize(self._clip.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    @property
    def text_bank(self) -> torch.Tensor:
        """The text bank :math:`\\mathcal H^{txt}`, ``(P, D)``, L2-normalised; computed once."""
        if self._text_bank is None:
            # a normal tensor even on first use inside inference_mode (e.g. in predict), so the
            # cached bank stays usable when training resumes
            with torch.inference_mode(False), torch.no_grad():
                prompts = [t.format(c) for c in self.classnames for t in self.templates]
                emb = rearrange(self.encode_text(prompts), "(p t) d -> p t d", t=len(self.templates))
                self._text_bank = F.normalize(emb.mean(dim=1), dim=-1).to(self._param().dtype)
            self.text_bank_computations += 1
        return self._text_bank

    # ---------------------------------------------------------------- images
    def preprocess(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """CLIP's resize and normalisation of a set batch ``(B, N, 3, H, W)`` in [0, 1].

        Every image is resized whole (bicubic, antialiased) to CLIP's input size (or ``size``),
        without the centre crop of CLIP's PIL pipeline, so that the patch grid covers the whole
        image and lines up with the segmentation masks.

        Returns:
            ``(B * N, 3, S, S)`` normalised pixels in the CLIP's dtype.
        """
        size = self.image_size if size is None else tuple(size)
        x = rearrange(images, "b n c h w -> (b n) c h w")
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x.to(self._param().dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, *, dense: bool = False) -> Any:
        """Encode image sets with one pass through the CLIP image tower.

        Args:
            images: ``(B, N, 3, H, W)``, RGB in [0, 1], any ``H`` and ``W``.
            dense: also return the patch tokens, projected into the joint embedding space.

        Returns:
            L2-normalised embeddings ``(B, N, D)``; with ``dense=True`` a pair
            ``(embeddings, patch_tokens)`` with ``patch_tokens`` of shape ``(B, N, D, h, w)``.

        Raises:
            NotImplementedError: ``dense=True`` for a CLIP tower other than open_clip's
                VisionTransformer and ModifiedResNet.
        """
        check_image_set(images)
        return self.encode_checked(images, dense=dense)

    @torch.no_grad()
    def encode_checked(self, images: torch.Tensor, *, dense: bool = False) -> Any:
        """:meth:`encode_images` without the input check, for callers that already ran it."""
        b = images.shape[0]
        x = self.preprocess(images)
        dtype = self._param().dtype  # the text bank's dtype too
        step = self.micro_batch or x.shape[0]
        if dense:
            parts = [self._dense_forward(part) for part in x.split(step)]
            pooled, tokens = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
            tokens = rearrange(tokens.to(dtype), "(b n) d h w -> b n d h w", b=b)
        else:
            pooled = torch.cat([self._clip.encode_image(part) for part in x.split(step)])
        emb = rearrange(F.normalize(pooled.float(), dim=-1).to(dtype), "(b n) d -> b n d", b=b)
        return (emb, tokens) if dense else emb

    def _dense_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = self._clip.visual
        if isinstance(visual, VisionTransformer) and visual.attn_pool is None:
            previous = visual.output_tokens
            visual.output_tokens = True
            try:
                pooled, tokens = visual(x)
            finally:
                visual.output_tokens = previous
            if visual.proj is not None:
                tokens = tokens @ visual.proj
            gh, gw = x.shape[-2] // visual.patch_size[0], x.shape[-1] // visual.patch_size[1]
            return pooled, rearrange(tokens, "bn (h w) d -> bn d h w", h=gh, w=gw)
        if isinstance(visual, ModifiedResNet):
            y = visual.stem(x)
            y = visual.layer4(visual.layer3(visual.layer2(visual.layer1(y))))
            pooled = visual.attnpool(y)
            # MaskCLIP: the value and output projections of the attention pool, per position
            pool = visual.attnpool
            tokens = pool.c_proj(pool.v_proj(rearrange(y, "bn c h w -> bn h w c")))
            return pooled, rearrange(tokens, "bn h w d -> bn d h w")
        raise NotImplementedError(
            f"dense patch tokens are implemented for open_clip's VisionTransformer (without "
            f"attentional pooling) and ModifiedResNet towers, not {type(visual).__name__}; "
            f"build LCCo with coarse_decoder=False to do without them"
        )

    def extra_repr(self) -> str:
        name = self.source.get("model_name") or type(self._clip).__name__
        return (
            f"model={name}, prompts={self.num_prompts}, templates={len(self.templates)}, image_size={self.image_size}"
        )

    def clip_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped CLIP's weights (they are not part of :meth:`~torch.nn.Module.state_dict`)."""
        return self._clip.state_dict()

    def weights_sha256(self) -> str:
        """SHA-256 of the wrapped CLIP's weights (names, shapes, dtypes and bytes), for cache keys.

        Example:
            >>> from cosegkit.clip import FrozenClip
            >>> from cosegkit.testing import register_tiny_clips, TINY_CLIP
            >>> _ = register_tiny_clips()
            >>> a = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat"])
            >>> len(a.weights_sha256()), a.weights_sha256() == a.weights_sha256()
            (64, True)
            >>> b = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat"])  # other random weights
            >>> a.weights_sha256() == b.weights_sha256()
            False
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self._clip.state_dict().items()):
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
