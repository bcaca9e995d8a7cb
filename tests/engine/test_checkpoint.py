"""Checkpoints: atomic writes, pruning, and refusal of truncated, foreign and unsafe files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cosegkit.engine.checkpoint import CheckpointError, find_checkpoints, load_checkpoint, save_checkpoint


class Arbitrary:
    """An object whose unpickling would need this module's code."""


def test_round_trip_and_pruning(tmp_path) -> None:
    for step in (2, 4, 6, 8):
        save_checkpoint({"model": {"w": torch.full((3,), float(step))}, "note": "x"}, tmp_path, step, keep=2)
    files = find_checkpoints(tmp_path)
    assert [p.name for p in files] == ["step_00000006.pt", "step_00000008.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary files left
    state = load_checkpoint(files[-1])
    assert state["step"] == 8 and torch.equal(state["model"]["w"], torch.full((3,), 8.0)) and state["note"] == "x"


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path) -> None:
    save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path, 1)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": Unsaveable()}, tmp_path, 2)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]
    assert load_checkpoint(tmp_path / "step_00000001.pt")["step"] == 1


def test_refuses_truncated_foreign_unsafe_and_missing_files(tmp_path) -> None:
    good = save_checkpoint({"model": {"w": torch.randn(100)}}, tmp_path, 1)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a cosegkit training checkpoint"):
        load_checkpoint(foreign)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "cosegkit-train-checkpoint-v1", "payload": Arbitrary()}, unsafe)
    with pytest.raises(CheckpointError, match="unpickle"):
        load_checkpoint(unsafe)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_and_cache_files_get_the_usual_mode(tmp_path, umask: int) -> None:
    """0o666 minus the umask, as config.json and every file open() creates get (mkstemp and safetensors give 0o600)."""
    import os
    import stat

    from safetensors.torch import save_file

    from cosegkit.engine._files import atomic_write

    old = os.umask(umask)
    try:
        written = [save_checkpoint({"model": {"w": torch.zeros(3)}}, tmp_path, step=1)]
        atomic_write(tmp_path / "maps.safetensors", lambda tmp: save_file({"m": torch.zeros(2)}, tmp))
        atomic_write(tmp_path / "key.json", lambda tmp: Path(tmp).write_text("{}"))
        written += [tmp_path / "maps.safetensors", tmp_path / "key.json"]
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o666 & ~umask}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json", "maps.safetensors", "step_00000001.pt"]
