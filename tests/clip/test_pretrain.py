"""The small CLIP pre-trained on the synthetic world: caching, loading, registration."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from cosegkit.clip import FrozenClip
from cosegkit.clip.pretrain import (
    SYNTHETIC_CLIP,
    SYNTHETIC_TEMPLATES,
    ClipPretrainConfig,
    pretrain_synthetic_clip,
    register_synthetic_clip,
    zero_shot_accuracy,
)
from cosegkit.errors import CosegValueError


def test_pretraining_is_cached_by_its_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    config = ClipPretrainConfig(num_classes=5, steps=2, batch_size=8)
    calls = []
    path = pretrain_synthetic_clip(config, progress=lambda s, n, loss: calls.append((s, n)))
    assert calls == [(1, 2), (2, 2)] and path.is_file() and path.with_suffix(".json").is_file()
    stamp = path.stat().st_mtime_ns
    assert pretrain_synthetic_clip(config, progress=lambda *a: calls.append(a)) == path  # reused, not retrained
    assert len(calls) == 2 and path.stat().st_mtime_ns == stamp
    other = pretrain_synthetic_clip(ClipPretrainConfig(num_classes=5, steps=3, batch_size=8))
    assert other != path  # other settings, other file

    register_synthetic_clip()
    world = config.world()
    clip = FrozenClip.from_name(
        SYNTHETIC_CLIP, pretrained=str(path), classnames=world.class_names, templates=SYNTHETIC_TEMPLATES
    )
    scores = zero_shot_accuracy(clip, world, sets=3, set_size=2)
    assert 0 <= scores["set_top1"] <= scores["set_top5"] <= 1 and scores["chance"] == pytest.approx(1 / 5)
    clip.set_vocabulary(list(reversed(world.class_names)))
    with pytest.raises(CosegValueError, match="vocabulary"):
        zero_shot_accuracy(clip, world)
    with pytest.raises(CosegValueError):
        pretrain_synthetic_clip(ClipPretrainConfig(steps=0))


def test_registering_from_many_processes_at_once(tmp_path) -> None:
    """Processes that start together (torchrun, a process pool) never read a half-written config."""
    code = "from cosegkit.clip.pretrain import register_synthetic_clip as r; r()"
    env = dict(os.environ, COSEGKIT_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(6)]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert [p.name for p in (tmp_path / "open_clip_configs").iterdir()] == [f"{SYNTHETIC_CLIP}.json"]


def test_cached_files_get_the_usual_mode(tmp_path) -> None:
    """0o666 minus the umask, as open() gives (tempfile.mkstemp and safetensors' save_file give 0o600)."""
    code = (
        "import os; os.umask(0o027)\n"
        "from cosegkit.clip.pretrain import ClipPretrainConfig, pretrain_synthetic_clip, register_synthetic_clip\n"
        "register_synthetic_clip(); pretrain_synthetic_clip(ClipPretrainConfig(num_classes=5, steps=1, batch_size=2))"
    )
    env = dict(os.environ, COSEGKIT_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    names = sorted(p.suffix for p in files)
    assert names == [".json", ".json", ".safetensors"], files  # the architecture, the weights and their notes
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in files} == dict.fromkeys(files, 0o640)
