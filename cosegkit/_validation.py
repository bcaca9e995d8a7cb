"""Checks at the public boundary: run once per call, skipped while compiling.

Each check raises a :class:`~cosegkit.errors.CosegError` subclass whose message says what was
received and what to do.
"""

from __future__ import annotations

import torch

from cosegkit.errors import CosegShapeError, CosegValueError


def is_compiling() -> bool:
    """Whether the caller is being traced by ``torch.compile`` (checks are skipped then)."""
    return bool(torch.compiler.is_compiling())


def shape_str(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def check_image_set(images: torch.Tensor, *, name: str = "images") -> None:
    """Check a batch of image sets: floating-point ``(B, N, 3, H, W)`` with finite values in [0, 1].

    Any floating dtype passes (float16, bfloat16, float32, float64): the model converts the
    images to its own dtype. Integer images are refused (their range is not [0, 1]).

    Example:
        >>> import torch
        >>> from cosegkit._validation import check_image_set
        >>> check_image_set(torch.rand(1, 2, 3, 8, 8, dtype=torch.float64))  # passes silently
        >>> check_image_set(torch.rand(1, 2, 4, 8, 8))
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegShapeError: expected 3 RGB channels at dim 2 of images (B, N, 3, H, W), got 4 in (1, 2, 4, 8, 8); RGBA images: drop the alpha channel with images[:, :, :3]
    """
    if is_compiling():
        return
    if not isinstance(images, torch.Tensor):
        raise CosegValueError(f"expected {name} to be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 5:
        hint = ""
        if images.ndim == 4:
            hint = (
                "; a 4-D batch has no set axis: pass one set of N images as images.unsqueeze(0), "
                "or B single-image sets as images.unsqueeze(1)"
            )
        elif images.ndim == 3:
            hint = "; a single image needs a batch and a set axis: images[None, None]"
        raise CosegShapeError(f"expected {name} of shape (B, N, 3, H, W), got {shape_str(images)}{hint}")
    b, n, c, h, w = images.shape
    if b == 0 or n == 0:
        raise CosegShapeError(
            f"expected at least one set (B >= 1) of at least one image (N >= 1), "
            f"got {name} of shape {shape_str(images)}"
        )
    if c != 3:
        if w == 3:
            hint = f"channels-last data needs {name}.permute(0, 1, 4, 2, 3)"
        elif c == 1:
            hint = f"repeat grayscale images to RGB with {name}.expand(-1, -1, 3, -1, -1)"
        elif c == 4:
            hint = f"RGBA images: drop the alpha channel with {name}[:, :, :3]"
        else:
            hint = "pass RGB images"
        raise CosegShapeError(
            f"expected 3 RGB channels at dim 2 of {name} (B, N, 3, H, W), got {c} in {shape_str(images)}; {hint}"
        )
    if h == 0 or w == 0:
        raise CosegShapeError(f"expected non-empty images, got {name} of shape {shape_str(images)}")
    if not images.is_floating_point():
        raise CosegValueError(
            f"expected floating-point {name} in [0, 1], got dtype {images.dtype}; "
            f"convert 8-bit images with images.float() / 255"
        )
    if not bool(torch.isfinite(images).all()):
        raise CosegValueError(f"{name} contain NaN or Inf values; clean the input before the model")
    lo, hi = torch.aminmax(images.detach())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise CosegValueError(
            f"expected {name} in [0, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]; the model "
            f"normalises internally, so pass raw RGB scaled to [0, 1] (8-bit images: / 255), "
            f"not mean/std-normalised tensors"
        )


def check_feature_set(features: torch.Tensor, channels: int, *, name: str = "features") -> None:
    """Check a feature set ``(B, N, C, h, w)`` with ``C == channels``."""
    if is_compiling():
        return
    if features.ndim != 5:
        raise CosegShapeError(
            f"expected {name} of shape (B, N, C, h, w), got {shape_str(features)}; "
            f"a (B*N, C, h, w) batch from a per-image network becomes a set batch with "
            f"einops.rearrange(x, '(b n) c h w -> b n c h w', n=N)"
        )
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise CosegShapeError(f"expected B >= 1 and N >= 1, got {name} of shape {shape_str(features)}")
    if features.shape[2] != channels:
        raise CosegShapeError(
            f"expected {name} with {channels} channels at dim 2, got {shape_str(features)}; "
            f"build the module with channels={features.shape[2]} or project the features first"
        )


def check_set_vectors(x: torch.Tensor, b: int, n: int, d: int | None, *, name: str) -> None:
    """Check per-image vectors ``(B, N, D)`` against the feature set's ``B`` and ``N``."""
    if is_compiling():
        return
    expected = f"({b}, {n}, {'D' if d is None else d})"
    if x.ndim != 3 or x.shape[0] != b or x.shape[1] != n or (d is not None and x.shape[2] != d):
        raise CosegShapeError(
            f"expected {name} of shape {expected} (one vector per image of each set), got {shape_str(x)}"
        )


def check_text_bank(text: torch.Tensor, d: int, *, name: str = "text_embeddings") -> None:
    """Check a CLIP text bank ``(P, D)``."""
    if is_compiling():
        return
    if text.ndim != 2 or text.shape[1] != d:
        raise CosegShapeError(f"expected {name} of shape (P, {d}), got {shape_str(text)}")
    if text.shape[0] == 0:
        raise CosegValueError(f"{name} is empty (P = 0); give the CLIP at least one prompt")


def check_top_k(top_k: int, num_prompts: int) -> None:
    if is_compiling():
        return
    if top_k > num_prompts:
        raise CosegValueError(
            f"top_k={top_k} is larger than the vocabulary of {num_prompts} prompts; "
            f"lower top_k or add class names to the vocabulary"
        )


def resolve_valid(valid: torch.Tensor | None, b: int, n: int, device: torch.device) -> torch.Tensor:
    """Return a boolean ``(B, N)`` mask of real (non-padded) images, checking a given one.

    ``None`` means every image is real.
    """
    if valid is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    if is_compiling():
        return valid.to(device=device, dtype=torch.bool)
    if not isinstance(valid, torch.Tensor):
        raise CosegValueError(
            f"expected valid to be a boolean torch.Tensor of shape ({b}, {n}), got {type(valid).__name__}"
        )
    if tuple(valid.shape) != (b, n):
        raise CosegShapeError(
            f"expected valid of shape (B, N) = ({b}, {n}), one flag per image, got {shape_str(valid)}"
        )
    if valid.dtype != torch.bool:
        if valid.is_floating_point() or not bool(((valid == 0) | (valid == 1)).all()):
            raise CosegValueError(f"expected a boolean valid mask, got dtype {valid.dtype}; use valid.bool()")
        valid = valid.bool()
    empty = ~valid.any(dim=1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise CosegValueError(
            f"valid marks no image as real in set(s) {rows}; every set needs at least one valid "
            f"image (drop empty sets from the batch)"
        )
    return valid.to(device)
