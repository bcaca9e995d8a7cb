"""Atomic file writes for the run folder's caches and checkpoints (:mod:`cosegkit._files`, re-exported here)."""

from __future__ import annotations

from cosegkit._files import atomic_write, temporary_file

__all__ = ["atomic_write", "temporary_file"]
