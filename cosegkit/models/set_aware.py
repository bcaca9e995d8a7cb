"""Make any per-image segmentation network set-aware with the layers of cosegkit.

Axis legend (einops):
    b   batch of sets        n   images per set      m   images that run (the valid ones)
    c   channels             h w spatial size        d   CLIP embedding width
    p   prompts (text bank)
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import torch
from einops import rearrange
from torch import nn

from cosegkit._validation import check_image_set, resolve_valid
from cosegkit.clip.frozen import FrozenClip
from cosegkit.errors import CosegValueError
from cosegkit.layers.correspondence import ImageSetCorrespondence
from cosegkit.layers.interaction import ClipInteraction, clip_similarity
from cosegkit.layers.regularization import ClipRegularization

__all__ = ["GradientReport", "InsertionPoint", "SetAwareNetwork", "SetAwareOutput", "default_modules"]

InsertionPoint = Union[int, str]
"""Where a module goes: an ``int`` indexes the features of an smp model's encoder (as
``encoder.out_channels`` does; negative counts from the deepest), a ``str`` names a submodule
(as ``net.named_modules()`` does) whose output the module refines."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MODULES = (ClipInteraction, ClipRegularization)


class SetAwareOutput(NamedTuple):
    """What :class:`SetAwareNetwork` returns.

    Attributes:
        output: the per-image network's output with the set axis restored: every tensor it
            returns with one row per image becomes ``(B, N, ...)`` (an smp model's masks:
            ``(B, N, classes, H, W)``); padded images' rows are 0.
        class_probs: the class probabilities of the last :class:`~cosegkit.ClipRegularization` to run,
            :math:`v` ``(B, P)``, for :func:`~cosegkit.losses.classification_loss`; ``None`` without one.
        module_outputs: each insertion point's module output (a tuple of them where the
            mapping gave several modules), e.g. the full :class:`~cosegkit.ClipInteractionOutput`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from cosegkit import ImageSetCorrespondence, SetAwareNetwork
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))  # per image
        >>> model = SetAwareNetwork(net, {"0": ImageSetCorrespondence(8, heads=2)})  # after the first conv
        >>> out = model(torch.rand(2, 3, 3, 16, 16))  # B = 2 sets of N = 3 images
        >>> out.output.shape, out.class_probs, out.module_outputs["0"].shape
        (torch.Size([2, 3, 2, 16, 16]), None, torch.Size([2, 3, 8, 16, 16]))
    """

    output: Any
    class_probs: torch.Tensor | None
    module_outputs: dict[InsertionPoint, Any]


class GradientReport(NamedTuple):
    """What :meth:`~cosegkit.SetAwareNetwork.check_gradients` measured in one backward pass.

    Attributes:
        modules: each inserted module (by its label, e.g. ``"ClipInteraction at encoder feature
            -2"``) and the norm of the gradient its parameters receive from the output.
        features: for an smp model, each encoder feature (negative index) and the norm of the
            gradient the output sends to it: 0 for a feature the decoder does not read.
        strides: each encoder feature's stride in the probe.
        submodules: for a module inserted after a named submodule, each of that submodule's
            siblings (by name) and the norm of the gradient the output sends to its output.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from cosegkit import ImageSetCorrespondence, SetAwareNetwork
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
        >>> report = SetAwareNetwork(net, {"0": ImageSetCorrespondence(8, heads=2)}).check_gradients(16)
        >>> [(label, norm > 0) for label, norm in report.modules.items()]
        [("ImageSetCorrespondence at the output of '0'", True)]
        >>> sorted(name for name, norm in report.submodules.items() if norm > 0)  # the siblings that reach
        ['0', '1', '2']
    """

    modules: dict[str, float]
    features: dict[int, float]
    strides: dict[int, int]
    submodules: dict[str, float]


def default_modules(
    net: nn.Module, clip: FrozenClip, *, heads: int = 8, clip_heads: int = 8, top_k: int = 5
) -> dict[InsertionPoint, nn.Module]:
    """LCCo's three modules at an smp model's encoder features of strides 32, 16 and 8.

    :class:`~cosegkit.ImageSetCorrespondence` on the deepest feature (index ``-1``),
    :class:`~cosegkit.ClipInteraction` on the next (``-2``), :class:`~cosegkit.ClipRegularization`
    on the next (``-3``), each sized from ``net.encoder.out_channels`` and the CLIP. The other
    settings are the layers' defaults.

    Args:
        net: an smp model (anything with ``encoder.out_channels``).
        clip: the frozen CLIP the interaction and regularization read.
        heads: attention heads of the correspondence module; must divide its channels.
        clip_heads: attention heads of the interaction module; must divide the CLIP width.
        top_k: distilled prompts of the interaction module, at most the vocabulary size.

    Returns:
        ``{-1: ImageSetCorrespondence, -2: ClipInteraction, -3: ClipRegularization}``.

    Example:
        >>> import segmentation_models_pytorch as smp
        >>> from cosegkit import FrozenClip
        >>> from cosegkit.models import default_modules
        >>> from cosegkit.testing import TINY_CLIP, register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car"])
        >>> fpn = smp.FPN("resnet18", encoder_weights=None, classes=1)
        >>> modules = default_modules(fpn, clip, top_k=2)
        >>> {point: (type(m).__name__, m.channels) for point, m in modules.items()}
        {-1: ('ImageSetCorrespondence', 512), -2: ('ClipInteraction', 256), -3: ('ClipRegularization', 128)}
    """
    channels = _encoder_channels(net)
    if channels is None:
        raise CosegValueError(
            f"default_modules sizes the modules from an smp model's encoder.out_channels, and "
            f"{type(net).__name__} has none; pass a mapping from insertion points to modules instead"
        )
    if len(channels) < 4:
        raise CosegValueError(
            f"default_modules puts three modules on the three deepest encoder features, and this "
            f"encoder has {len(channels) - 1} (out_channels={list(channels)}); pass a mapping instead"
        )
    return {
        -1: ImageSetCorrespondence(channels[-1], heads=heads),
        -2: ClipInteraction(channels[-2], clip.embed_dim, top_k=top_k, heads=clip_heads),
        -3: ClipRegularization(channels[-3], clip.embed_dim, clip.num_prompts),
    }


@dataclass
class _Call:
    """What the insertion hooks need during one call: the set layout and the CLIP's view of it."""

    b: int
    n: int
    valid: torch.Tensor  # (b, n) bool
    keep: torch.Tensor | None  # (m,) rows of the flat batch that run; None: all
    embeddings: torch.Tensor | None = None  # (b, n, d)
    text: torch.Tensor | None = None  # (p, d)
    similarity: torch.Tensor | None = None  # (b, n, p)
    probes: dict[Any, list[torch.Tensor]] | None = None  # during check_gradients only

    def to_sets(self, x: torch.Tensor) -> torch.Tensor:
        """``(m, ...)`` -> ``(b, n, ...)``, padded rows 0."""
        if self.keep is not None:
            full = x.new_zeros((self.b * self.n, *x.shape[1:]))
            x = full.index_copy(0, self.keep, x)
        return rearrange(x, "(b n) ... -> b n ...", b=self.b)

    def to_flat(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, ...)`` -> ``(m, ...)``."""
        flat = rearrange(x, "b n ... -> (b n) ...")
        return flat if self.keep is None else flat[self.keep]


class SetAwareNetwork(nn.Module):
    r"""A per-image network made set-aware by inserting set-aware modules into it.

    The per-image network (any smp model, or any :class:`~torch.nn.Module` that maps a batch
    of images to per-image outputs) runs on the images of all sets at once, ``(B*N, 3, H, W)``,
    unmodified. Each inserted module sits at an insertion point:

    - an ``int`` on an smp model: that encoder feature (indexed as ``encoder.out_channels``,
      negative from the deepest) is refined before the decoder reads it;
    - a ``str``: the output of the submodule of that name (``net.named_modules()``) is refined.

    Around each module the batch is unfolded into sets ``(B, N, C, h, w)`` and folded back, so
    ``N`` can change from call to call. The frozen CLIP runs once per call; its image
    embeddings, text bank and image-text similarity feed every
    :class:`~cosegkit.ClipInteraction` and :class:`~cosegkit.ClipRegularization`. Padded images
    (``valid`` False) do not run through the network at all, so they change neither the valid
    images' outputs nor, in training, its BatchNorm statistics.

    At construction one forward and one backward pass on random images check that every
    inserted module reaches the output: a module whose parameters get a gradient of exactly 0
    (an encoder feature the decoder does not read, a branch the forward does not use) is
    refused with a :class:`~cosegkit.errors.CosegValueError` that names it and the features the
    decoder does read (:meth:`check_gradients`). The check leaves the network as it was: it
    runs in eval mode and writes no ``.grad``.

    Args:
        net: the per-image network, ``(M, 3, H, W) -> (M, ...)``.
        modules: insertion point to module (or a sequence of modules, applied in order);
            default :func:`~cosegkit.models.default_modules` (an smp model and a ``clip`` needed).
        clip: the frozen CLIP of the CLIP modules.
        mean: per-channel mean the images are normalised with before ``net`` (ImageNet's, what
            smp encoders are trained with); ``None`` with ``std=None`` passes [0, 1] RGB.
        std: per-channel std, see ``mean``.
        check: run the gradient check at construction.
        probe_size: side of the random probe images of the check (smp's PAN needs 128).

    Shape:
        - images: :math:`(B, N, 3, H, W)` RGB in [0, 1]
        - valid: :math:`(B, N)` boolean, optional
        - output: :class:`SetAwareOutput`; an smp model's masks :math:`(B, N, \text{classes}, H, W)`

    Example:
        >>> import segmentation_models_pytorch as smp
        >>> import torch
        >>> from cosegkit import FrozenClip, SetAwareNetwork
        >>> from cosegkit.testing import TINY_CLIP, register_tiny_clips
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car", "bird", "cow"])
        >>> model = SetAwareNetwork(smp.FPN("resnet18", encoder_weights=None, classes=1), clip=clip)
        >>> out = model(torch.rand(2, 3, 3, 64, 64))  # B = 2 sets of N = 3 images
        >>> out.output.shape, out.class_probs.shape
        (torch.Size([2, 3, 1, 64, 64]), torch.Size([2, 5]))
        >>> model(torch.rand(1, 5, 3, 64, 64)).output.shape  # any N per call
        torch.Size([1, 5, 1, 64, 64])
    """

    def __init__(
        self,
        net: torch.nn.Module,
        modules: Mapping[InsertionPoint, torch.nn.Module | Sequence[torch.nn.Module]] | None = None,
        *,
        clip: FrozenClip | None = None,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        check: bool = True,
        probe_size: int = 128,
    ) -> None:
        super().__init__()
        if modules is None:
            if clip is None:
                raise CosegValueError(
                    "the default modules include ClipInteraction and ClipRegularization, which need a "
                    "CLIP: pass clip=FrozenClip.from_name(...), or a mapping of modules without them"
                )
            modules = default_modules(net, clip)
        if not modules:
            raise CosegValueError("no modules to insert; pass a mapping from insertion points to modules")
        if (mean is None) != (std is None):
            raise CosegValueError(f"pass both mean and std, or neither; got mean={mean}, std={std}")
        self.net = net
        self.clip = clip
        self.points: list[InsertionPoint] = []
        self._grouped: dict[InsertionPoint, bool] = {}
        inserted = []
        for point, value in modules.items():
            several = isinstance(value, nn.ModuleList) or (
                isinstance(value, Sequence) and not isinstance(value, (nn.Module, str))
            )
            group = list(value) if several else [value]
            self._grouped[point] = several
            for module in group:
                self._check_point(point, module)
                self.points.append(point)
                inserted.append(module)
        self.inserted = nn.ModuleList(inserted)
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        else:
            self.mean = self.std = None
        if check:
            self._refuse_unreached(self.check_gradients(probe_size))

    # ---------------------------------------------------------------- construction checks
    def _check_point(self, point: InsertionPoint, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise CosegValueError(f"the value at insertion point {point!r} must be an nn.Module, got {module!r}")
        if isinstance(module, _CLIP_MODULES) and self.clip is None:
            raise CosegValueError(
                f"{type(module).__name__} at {self._where(point)} reads the set's CLIP embeddings; "
                f"pass clip=FrozenClip.from_name(...) to SetAwareNetwork"
            )
        if isinstance(point, bool) or not isinstance(point, (int, str)):
            raise CosegValueError(
                f"insertion points are encoder feature indices (int) or submodule names (str), got {point!r}"
            )
        if isinstance(point, str):
            names = dict(self.net.named_modules())
            if point not in names or point == "":
                close = difflib.get_close_matches(point, [n for n in names if n], n=5)
                raise CosegValueError(
                    f"{type(self.net).__name__} has no submodule {point!r}"
                    + (f"; close names: {close}" if close else "")
                    + "; list them with [name for name, _ in net.named_modules()]"
                )
            return
        channels = _encoder_channels(self.net)
        if channels is None:
            raise CosegValueError(
                f"insertion point {point} indexes an smp model's encoder features, and "
                f"{type(self.net).__name__} has no encoder.out_channels; name a submodule instead, "
                f"e.g. {[n for n, _ in self.net.named_children()][:5]}"
            )
        if not -len(channels) <= point < len(channels):
            raise CosegValueError(
                f"encoder feature {point} does not exist: the encoder has {len(channels)} features "
                f"(out_channels={list(channels)}), so use -{len(channels)} to {len(channels) - 1}"
            )
        c = channels[point]
        if point % len(channels) == 0 and _has_image_feature(self.net):
            raise CosegValueError(
                f"encoder feature {point} is the input image itself, not a feature; use -1 (the deepest) to "
                f"-{len(channels) - 1}"
            )
        if c == 0:
            raise CosegValueError(f"encoder feature {point} is an empty (0-channel) placeholder; choose another")
        expected = getattr(module, "channels", None)
        if isinstance(expected, int) and expected != c:
            raise CosegValueError(
                f"{type(module).__name__} was built for {expected} channels, but encoder feature {point} has "
                f"{c}; build it with net.encoder.out_channels[{point}]"
            )

    def _where(self, point: InsertionPoint) -> str:
        return f"encoder feature {point}" if isinstance(point, int) else f"the output of {point!r}"

    def labels(self) -> list[str]:
        """One label per inserted module, e.g. ``"ClipInteraction at encoder feature -2"``.

        A second module of the same class at the same point gets `` (2)``, and so on.
        """
        labels: list[str] = []
        for point, module in zip(self.points, self.inserted, strict=True):
            label = f"{type(module).__name__} at {self._where(point)}"
            count = sum(existing == label or existing.startswith(label + " (") for existing in labels)
            labels.append(label if count == 0 else f"{label} ({count + 1})")
        return labels

    # ---------------------------------------------------------------- the call
    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> SetAwareOutput:
        """Run the per-image network on every valid image, set-aware at each insertion point.

        Args:
            images: ``(B, N, 3, H, W)``, RGB in [0, 1].
            valid: optional boolean ``(B, N)``; False marks padded images, which do not run.

        Returns:
            A :class:`SetAwareOutput`.
        """
        return self._run(images, valid)

    def _run(
        self, images: torch.Tensor, valid: torch.Tensor | None, probes: dict[Any, list[torch.Tensor]] | None = None
    ) -> SetAwareOutput:
        check_image_set(images)
        b, n = images.shape[:2]
        mask = resolve_valid(valid, b, n, images.device)
        keep = None if bool(mask.all()) else mask.flatten().nonzero().flatten()
        call = _Call(b, n, mask, keep, probes=probes)
        if self.clip is not None:
            call.embeddings = self.clip.encode_checked(images)  # one CLIP pass per call
            call.text = self.clip.text_bank
            call.similarity = clip_similarity(call.embeddings, call.text)
        x = call.to_flat(images)
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        outputs: dict[int, Any] = {}
        with self._hooks(call, outputs):
            result = self.net(x)
        m = b * n if keep is None else keep.numel()
        class_probs = None
        for out in outputs.values():  # in the order the modules ran
            if isinstance(out, tuple) and hasattr(out, "class_probs"):
                class_probs = out.class_probs
        module_outputs: dict[InsertionPoint, Any] = {}
        for i, point in enumerate(self.points):
            out = outputs.get(i)
            if self._grouped[point]:
                module_outputs[point] = (*module_outputs.get(point, ()), out)
            else:
                module_outputs[point] = out
        return SetAwareOutput(_restore_sets(result, m, call), class_probs, module_outputs)

    def _refine(self, i: int, features: torch.Tensor, call: _Call, outputs: dict[int, Any]) -> torch.Tensor:
        """Apply inserted module ``i`` to a flat ``(m, ...)`` batch; returns the same layout."""
        module = self.inserted[i]
        sets = call.to_sets(features)
        if isinstance(module, ClipInteraction):
            out = module(sets, call.embeddings, call.text, call.valid)
        elif isinstance(module, ClipRegularization):
            out = module(sets, call.similarity, call.text, call.valid)
        elif "valid" in inspect.signature(module.forward).parameters:
            out = module(sets, valid=call.valid)
        else:
            out = module(sets)
        outputs[i] = out
        refined = out if isinstance(out, torch.Tensor) else getattr(out, "features", None)
        if not isinstance(refined, torch.Tensor):
            raise CosegValueError(
                f"{self.labels()[i]} returned {type(out).__name__}; an inserted module must return a "
                f"(B, N, ...) tensor or an output with a .features tensor"
            )
        flat = call.to_flat(refined)
        if call.probes is not None:
            flat = _probe(flat, call.probes.setdefault(("module", i), []))
        return flat

    @contextlib.contextmanager
    def _hooks(self, call: _Call, outputs: dict[int, Any]) -> Iterator[None]:
        """Hooks that insert the modules, present for one call only: the network stays untouched."""
        handles = []
        by_encoder = [i for i, p in enumerate(self.points) if isinstance(p, int)]
        if by_encoder or (call.probes is not None and _encoder_channels(self.net) is not None):
            handles.append(self.net.encoder.register_forward_hook(self._encoder_hook(by_encoder, call, outputs)))
        names = dict(self.net.named_modules())
        for point in dict.fromkeys(p for p in self.points if isinstance(p, str)):
            indices = [i for i, p in enumerate(self.points) if p == point]
            handles.append(names[point].register_forward_hook(self._module_hook(point, indices, call, outputs)))
        if call.probes is not None:  # the siblings of each named point, to say which of them reach
            parents = dict.fromkeys(p.rpartition(".")[0] for p in self.points if isinstance(p, str))
            for parent in parents:
                for name, child in names[parent].named_children():
                    full = f"{parent}.{name}" if parent else name
                    handles.append(child.register_forward_hook(self._sibling_hook(full, call)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _encoder_hook(self, indices: list[int], call: _Call, outputs: dict[int, Any]) -> Any:
        def hook(module: nn.Module, args: Any, result: Any) -> Any:
            nested = isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], (list, tuple))
            features = list(result[0] if nested else result)  # smp's DPT: (features, prefix tokens)
            for i in indices:
                at = self.points[i] % len(features)
                features[at] = self._refine(i, features[at], call, outputs)
            if call.probes is not None:
                first = 1 if _has_image_feature(self.net) else 0  # features[0] is the input image itself
                for at, f in enumerate(features[first:], start=first):
                    if isinstance(f, torch.Tensor) and f.is_floating_point() and f.ndim == 4 and f.shape[1] > 0:
                        features[at] = _probe(f, call.probes.setdefault(("feature", at - len(features)), []))
            if nested:
                return (features, *result[1:])
            return tuple(features) if isinstance(result, tuple) else features

        return hook

    def _module_hook(self, point: str, indices: list[int], call: _Call, outputs: dict[int, Any]) -> Any:
        def hook(module: nn.Module, args: Any, result: Any) -> Any:
            if not isinstance(result, torch.Tensor):
                raise CosegValueError(
                    f"submodule {point!r} returns {type(result).__name__}, not a tensor; insert the "
                    f"module at a submodule that returns one (M, C, h, w) tensor per image"
                )
            for i in indices:
                result = self._refine(i, result, call, outputs)
            return result

        return hook

    def _sibling_hook(self, name: str, call: _Call) -> Any:
        def hook(module: nn.Module, args: Any, result: Any) -> Any:
            if isinstance(result, torch.Tensor) and result.is_floating_point() and call.probes is not None:
                return _probe(result, call.probes.setdefault(("submodule", name), []))
            return result

        return hook

    # ---------------------------------------------------------------- the gradient check
    def check_gradients(self, probe_size: int = 128) -> GradientReport:
        """Measure, with one forward and one backward pass, what reaches the output.

        Random images (one set of two, ``probe_size`` pixels square, a fixed seed) go through
        the network in eval mode; the output is reduced with random weights (so that no
        gradient cancels) and differentiated once with ``torch.autograd.grad``, for the
        inserted modules' parameters and for a zero probe added to every encoder feature.
        Nothing changes: no ``.grad`` is written, the train/eval modes and the global random
        state are restored.

        Args:
            probe_size: side of the probe images; a multiple of the encoder's output stride.

        Returns:
            A :class:`~cosegkit.models.GradientReport`.

        Example:
            >>> import segmentation_models_pytorch as smp
            >>> from cosegkit import FrozenClip, SetAwareNetwork
            >>> from cosegkit.testing import TINY_CLIP, register_tiny_clips
            >>> _ = register_tiny_clips()
            >>> clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog", "car", "bird", "cow"])
            >>> net = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=1)
            >>> report = SetAwareNetwork(net, clip=clip, check=False).check_gradients()
            >>> [name for name, norm in report.modules.items() if norm == 0]
            ['ClipInteraction at encoder feature -2', 'ClipRegularization at encoder feature -3']
            >>> [(f, report.strides[f]) for f, norm in report.features.items() if norm > 0]  # what the decoder reads
            [(-4, 4), (-1, 16)]
        """
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        device = param.device if param is not None else torch.device("cpu")
        generator = torch.Generator(device=device).manual_seed(0)
        images = torch.rand(1, 2, 3, probe_size, probe_size, generator=generator, device=device)
        images = images.to(param.dtype if param is not None else images.dtype)
        modes = {m: m.training for m in self.modules()}
        probes: dict[Any, list[torch.Tensor]] = {}
        self.eval()
        try:
            with torch.enable_grad():
                result = self._run(images, None, probes)
        except Exception as err:
            err.add_note(
                f"raised by SetAwareNetwork's gradient check, a forward pass on random images of "
                f"{probe_size} x {probe_size}: pass probe_size= a size the network takes, or check=False"
            )
            raise
        finally:
            for m, mode in modes.items():
                m.training = mode
        tensors = [t for t in _tensors(result.output) if t.requires_grad]
        if not tensors:
            raise CosegValueError(
                f"{type(self.net).__name__}'s output carries no gradient (is it under torch.no_grad, or "
                f"frozen?); the gradient check needs one, or pass check=False"
            )
        loss = sum(
            (t * torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)).sum() for t in tensors
        )
        params = [[p for p in m.parameters() if p.requires_grad] for m in self.inserted]
        flat_params = [p for group in params for p in group]
        keys = list(probes)
        leaves = [t for k in keys for t in probes[k]]
        grads = torch.autograd.grad(loss, flat_params + leaves, allow_unused=True)
        norms = [0.0 if g is None else float(g.float().norm()) for g in grads]
        param_norms, probe_norms = norms[: len(flat_params)], norms[len(flat_params) :]
        per_probe: dict[Any, float] = {}
        at = 0
        for k in keys:
            parts = probe_norms[at : at + len(probes[k])]
            per_probe[k] = float(torch.tensor(parts).square().sum().sqrt()) if parts else 0.0
            at += len(probes[k])
        modules: dict[str, float] = {}
        at = 0
        for i, (label, group) in enumerate(zip(self.labels(), params, strict=True)):
            if group:
                modules[label] = float(torch.tensor(param_norms[at : at + len(group)]).square().sum().sqrt())
            else:  # no trainable parameters: whether its output reaches
                modules[label] = per_probe.get(("module", i), 0.0)
            at += len(group)
        features = {k[1]: v for k, v in sorted(per_probe.items(), key=str) if k[0] == "feature"}
        shapes = {k[1]: probes[k][0].shape[-1] for k in keys if k[0] == "feature" and probes[k]}
        strides = {f: max(1, round(probe_size / w)) for f, w in shapes.items()}
        submodules = {k[1]: v for k, v in per_probe.items() if k[0] == "submodule"}
        return GradientReport(modules, dict(sorted(features.items())), dict(sorted(strides.items())), submodules)

    def _refuse_unreached(self, report: GradientReport) -> None:
        unreached = [i for i, label in enumerate(self.labels()) if report.modules[label] == 0.0]
        if not unreached:
            return
        name = type(self.net).__name__
        labels = self.labels()
        parts = []
        by_feature = [i for i in unreached if isinstance(self.points[i], int)]
        if by_feature:
            channels = _encoder_channels(self.net) or []
            read = [f for f, norm in report.features.items() if norm > 0]
            levels = " and ".join(f"{f} (stride {report.strides[f]}, {channels[f]} channels)" for f in read)
            parts.append(
                f"{_join([labels[i] for i in by_feature])} {'gets' if len(by_feature) == 1 else 'get'} a gradient "
                f"of 0 from the output: {name}'s decoder reads only encoder features {levels}. Insert "
                f"{'it' if len(by_feature) == 1 else 'them'} at those features (several modules can share "
                f"one, as a list: {{{read[-1] if read else -1}: [module_a, module_b]}}), or by name after a "
                f"decoder submodule that returns one feature map per image"
            )
        for i in unreached:
            point = self.points[i]
            if isinstance(point, str):
                parent = point.rpartition(".")[0]
                reach = [n for n, norm in report.submodules.items() if norm > 0 and n != point]
                reach = [n for n in reach if n.rpartition(".")[0] == parent]
                parts.append(
                    f"{labels[i]} gets a gradient of 0 from the output: {name}'s forward does not use the "
                    f"output of {point!r} (or never calls it). Of the submodules of "
                    f"{repr(parent) if parent else 'the network'}, these reach the output: {reach[:8]}; insert "
                    f"the module after one of them"
                )
        raise CosegValueError(
            "; ".join(parts) + ". Or pass check=False to build it anyway (SetAwareNetwork.check_gradients "
            "measures every module's gradient)"
        )

    def extra_repr(self) -> str:
        return f"points={self.points}, clip={'yes' if self.clip is not None else 'no'}"


def _probe(x: torch.Tensor, store: list[torch.Tensor]) -> torch.Tensor:
    """``x`` plus a zero leaf tensor whose gradient is ``x``'s, recorded in ``store``."""
    leaf = torch.zeros_like(x, requires_grad=True)
    store.append(leaf)
    return x + leaf


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _encoder_channels(net: nn.Module) -> list[int] | None:
    encoder = getattr(net, "encoder", None)
    channels = getattr(encoder, "out_channels", None)
    return list(channels) if isinstance(channels, (list, tuple)) else None


def _has_image_feature(net: nn.Module) -> bool:
    """Whether the encoder's first feature is the input image (smp's convention; not DPT's ViTs)."""
    channels = _encoder_channels(net)
    return channels is not None and channels[0] == 3


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _restore_sets(x: Any, m: int, call: _Call) -> Any:
    """Every per-image tensor ``(m, ...)`` in a network's output becomes ``(b, n, ...)``."""
    if isinstance(x, torch.Tensor):
        return call.to_sets(x) if x.ndim >= 1 and x.shape[0] == m else x
    if isinstance(x, Mapping):
        return type(x)({k: _restore_sets(v, m, call) for k, v in x.items()})
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_restore_sets(v, m, call) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_restore_sets(v, m, call) for v in x)
    return x
