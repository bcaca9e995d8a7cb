"""Training checkpoints: written atomically, read without unpickling code.

A checkpoint is one ``step_XXXXXXXX.pt`` file holding plain tensors, numbers, strings, lists
and dicts: the model's and optimizer's state dicts, the scheduler's, the gradient scaler's
(``--amp fp16``; empty otherwise), the step, the RNG states and the run's resolved config. It is written to a temporary file in the same folder (mode
``0o666`` minus the umask, as for any file the run writes), flushed
to disk and renamed over its final name, so a crash at any moment leaves either the previous
checkpoints or the new one complete, never half a file under a checkpoint name. Reading uses
``torch.load(..., weights_only=True)``: a file that would need arbitrary code to unpickle is
refused, as are foreign files and truncated ones, each with a :class:`CheckpointError` that
names the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from cosegkit._files import temporary_file
from cosegkit.errors import CosegValueError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "find_checkpoints", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "cosegkit-train-checkpoint-v1"
"""The ``format`` entry of every training checkpoint; a file without it is refused."""

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(CosegValueError):
    """A checkpoint file is missing, truncated, foreign or unsafe to load; the message names it.

    It is a :class:`ValueError` (through :class:`~cosegkit.errors.CosegValueError`).

    Example:
        A checkpoint cut short (a copy that did not finish, a full disk) is refused by name:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from cosegkit.engine import CheckpointError, load_checkpoint, save_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> good = save_checkpoint({"model": {"w": torch.zeros(4, 8)}}, folder, step=1)
        >>> cut = folder / "cut.pt"
        >>> cut.write_bytes(good.read_bytes()[:100])
        100
        >>> load_checkpoint(cut)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.engine.checkpoint.CheckpointError: could not read checkpoint '.../cut.pt': it is truncated, ...

        Files of other programs are refused too; every case can be caught as a ``ValueError``:

        >>> torch.save({"state_dict": {"w": torch.zeros(4, 8)}}, folder / "foreign.pt")
        >>> for name in ("foreign.pt", "missing.pt"):
        ...     try:
        ...         load_checkpoint(folder / name)
        ...     except ValueError as err:
        ...         print(type(err).__name__, name in str(err))
        CheckpointError True
        CheckpointError True
    """


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

    Example:
        >>> import tempfile
        >>> import torch
        >>> from cosegkit.engine import find_checkpoints, save_checkpoint
        >>> folder = tempfile.mkdtemp()
        >>> for step in (10, 20, 30):
        ...     path = save_checkpoint({"model": {"w": torch.full((2, 3), float(step))}}, folder, step, keep=2)
        >>> path.name
        'step_00000030.pt'
        >>> [p.name for p in find_checkpoints(folder)]  # only the newest two are kept
        ['step_00000020.pt', 'step_00000030.pt']
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    payload = {"format": CHECKPOINT_FORMAT, "step": int(step), **state}
    fd, tmp = temporary_file(final)  # mode 0o666 minus the umask, like any file the run writes
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
    """The checkpoint files in ``directory``, oldest step first (temporary files excluded).

    A folder that does not exist holds no checkpoints.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from cosegkit.engine import find_checkpoints, save_checkpoint
        >>> folder = Path(tempfile.mkdtemp())
        >>> for step in (100, 5):
        ...     _ = save_checkpoint({"model": {"w": torch.zeros(3)}}, folder, step, keep=None)
        >>> _ = (folder / ".step_00000200.pt.x1y2.tmp").write_bytes(b"")  # a write still in progress
        >>> _ = (folder / "notes.txt").write_text("not a checkpoint")
        >>> [p.name for p in find_checkpoints(folder)]
        ['step_00000005.pt', 'step_00000100.pt']
        >>> find_checkpoints(folder / "missing")
        []
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: where to put its tensors.

    Returns:
        The saved state, with ``format`` and ``step`` added by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, needs code to unpickle
            (``weights_only`` refuses it), or is not a cosegkit training checkpoint.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from cosegkit.engine import load_checkpoint, save_checkpoint
        >>> state = {"model": {"weight": torch.ones(4, 3), "bias": torch.zeros(4)}, "note": "warm-up done"}
        >>> path = save_checkpoint(state, tempfile.mkdtemp(), step=7)
        >>> loaded = load_checkpoint(path)
        >>> sorted(loaded), loaded["step"], loaded["format"]
        (['format', 'model', 'note', 'step'], 7, 'cosegkit-train-checkpoint-v1')
        >>> w = loaded["model"]["weight"]
        >>> w.shape, w.dtype, w.device.type, torch.equal(w, state["model"]["weight"])
        (torch.Size([4, 3]), torch.float32, 'cpu', True)
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
