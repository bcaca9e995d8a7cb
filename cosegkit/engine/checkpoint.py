"""Training checkpoints: written atomically, read without unpickling code.

A checkpoint is one ``step_XXXXXXXX.pt`` file holding plain tensors, numbers, strings, lists
and dicts: the model's and optimizer's state dicts, the scheduler's, the step, the RNG states
and the run's resolved config. It is written to a temporary file in the same folder, flushed
to disk and renamed over its final name, so a crash at any moment leaves either the previous
checkpoints or the new one complete, never half a file under a checkpoint name. Reading uses
``torch.load(..., weights_only=True)``: a file that would need arbitrary code to unpickle is
refused, as are foreign files and truncated ones, each with a :class:`CheckpointError` that
names the file.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from cosegkit.errors import CosegValueError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "find_checkpoints", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "cosegkit-train-checkpoint-v1"
"""The ``format`` entry of every training checkpoint; a file without it is refused."""

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(CosegValueError):
    """A checkpoint file is missing, truncated, foreign or unsafe to load; the message names it."""


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint after ``step`` optimizer steps."""
    return f"step_{step:08d}.pt"


def save_checkpoint(
    state: dict[str, Any], directory: str | os.PathLike[str], step: int, *, keep: int | None = 3
) -> Path:
    """Write ``state`` as the checkpoint of ``step`` in ``directory``, atomically.

    Args:
        state: plain data (tensors, numbers, strings, lists, dicts); ``format`` and ``step``
            are added.
        directory: the run's checkpoint folder (created if needed).
        step: optimizer steps done.
        keep: how many of the newest checkpoints to keep (older ones are deleted after the
            new one is in place); ``None`` keeps all.

    Returns:
        The checkpoint's path.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    payload = {"format": CHECKPOINT_FORMAT, "step": int(step), **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable where the platform allows it
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    if keep is not None:
        for old in find_checkpoints(folder)[:-keep]:
            old.unlink(missing_ok=True)
    return final


def find_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint files in ``directory``, oldest step first (temporary files excluded)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, needs code to unpickle
            (``weights_only`` refuses it), or is not a cosegkit training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"could not read checkpoint {str(path)!r}: it is truncated, corrupt, or holds objects that "
            f"need code to unpickle, which is refused ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a cosegkit training checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            f"for a model folder written by save_pretrained use LCCo.from_pretrained"
        )
    return state
