"""Moved to :mod:`cosegkit.engine.pretrain` (pre-training is training); this alias warns and forwards."""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    from cosegkit.engine import pretrain

    if name.startswith("__"):
        raise AttributeError(name)
    warnings.warn(
        "cosegkit.clip.pretrain moved to cosegkit.engine.pretrain; import from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(pretrain, name)
