"""Exceptions raised by cosegkit.

Every error about bad input subclasses :class:`ValueError`, so ``except ValueError`` catches
them all; the subclasses let callers tell shape problems from value problems. Messages say
what was received and what to do about it.
"""

from __future__ import annotations

__all__ = ["CosegError", "CosegShapeError", "CosegValueError", "WeightsUnavailableError"]


class CosegError(ValueError):
    """Root of cosegkit's input errors (a :class:`ValueError`)."""


class CosegShapeError(CosegError):
    """A tensor has the wrong rank, size or layout."""


class CosegValueError(CosegError):
    """An argument or a tensor's values are out of range (NaN, empty vocabulary, bad ``top_k``...)."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched or read.

    Raised instead of the underlying network or file error, with a message that says how to
    pass a local weights file or ``None`` (random initialisation) instead.
    """
