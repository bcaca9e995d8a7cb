"""Exceptions raised by cosegkit.

Every error about bad input subclasses :class:`ValueError`, so ``except ValueError`` catches
them all; the subclasses let callers tell shape problems from value problems. Messages say
what was received and what to do about it.
"""

from __future__ import annotations

__all__ = ["CosegError", "CosegShapeError", "CosegValueError", "HubError", "WeightsUnavailableError"]


class CosegError(ValueError):
    """Root of cosegkit's input errors (a :class:`ValueError`).

    Example:
        >>> from cosegkit.errors import CosegError, CosegShapeError, CosegValueError
        >>> from cosegkit.layers import ClipInteraction
        >>> issubclass(CosegShapeError, CosegError), issubclass(CosegValueError, CosegError)
        (True, True)
        >>> try:
        ...     ClipInteraction(32, clip_dim=16, heads=5)
        ... except CosegError as err:
        ...     print(f"{type(err).__name__} (a ValueError: {isinstance(err, ValueError)}): {err}")
        CosegValueError (a ValueError: True): heads=5 must divide clip_dim=16
    """


class CosegShapeError(CosegError):
    """A tensor has the wrong rank, size or layout.

    Example:
        >>> import torch
        >>> from cosegkit.losses import iou_loss
        >>> pred, target = torch.zeros(1, 2, 1, 8, 8), torch.zeros(1, 2, 8, 8)  # target lacks the channel axis
        >>> iou_loss(pred, target)  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegShapeError: ground-truth masks of shape (1, 2, 8, 8) do not match the predicted masks
        (1, 2, 1, 8, 8); add the channel axis with target.unsqueeze(2)
        >>> try:
        ...     iou_loss(pred, target)
        ... except ValueError as err:  # every CosegShapeError is a ValueError
        ...     print(type(err).__name__)
        CosegShapeError
        >>> iou_loss(pred, target.unsqueeze(2)).shape
        torch.Size([])
    """


class CosegValueError(CosegError):
    """An argument or a tensor's values are out of range (NaN, empty vocabulary, bad ``top_k``...).

    Example:
        >>> import torch
        >>> from cosegkit.layers import distill_text
        >>> similarity = torch.zeros(1, 2, 3)  # (B, N, P): a vocabulary of 3 prompts
        >>> distill_text(similarity, top_k=5)  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        cosegkit.errors.CosegValueError: top_k=5 is larger than the vocabulary of 3 prompts;
        lower top_k or add class names to the vocabulary
        >>> try:
        ...     distill_text(similarity, top_k=5)
        ... except ValueError as err:  # every CosegValueError is a ValueError
        ...     print(type(err).__name__)
        CosegValueError
        >>> distill_text(similarity, top_k=2).shape
        torch.Size([1, 2])
    """


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched or read.

    Raised instead of the underlying network or file error, with a message that says how to
    pass a local weights file or ``None`` (random initialisation) instead.

    It is a :class:`RuntimeError`, not a :class:`ValueError`: ``except ValueError`` does not
    catch it; catch it by name.

    Example:
        >>> import tempfile
        >>> from cosegkit import LCCo
        >>> from cosegkit.errors import WeightsUnavailableError
        >>> issubclass(WeightsUnavailableError, RuntimeError), issubclass(WeightsUnavailableError, ValueError)
        (True, False)
        >>> with tempfile.TemporaryDirectory() as folder:  # an empty folder is no checkpoint
        ...     LCCo.from_pretrained(folder)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        cosegkit.errors.WeightsUnavailableError: '...' is not an LCCo checkpoint:
        expected config.json and model.safetensors in it
    """


class HubError(RuntimeError):
    """The Hugging Face hub refused or could not take an upload (:func:`cosegkit.hub.push_to_hub`).

    Raised instead of ``huggingface_hub``'s own errors, with a one-line message that says what
    to do: log in (``hf auth login``) or pass a token, check the repository name, or reach the
    network. Like :class:`WeightsUnavailableError` it is a :class:`RuntimeError`, not a
    :class:`ValueError`.

    Example:
        >>> from cosegkit.errors import HubError
        >>> issubclass(HubError, RuntimeError), issubclass(HubError, ValueError)
        (True, False)
    """
