"""``segment_files`` and ``cosegkit segment`` on a photo collection: sets, streaming, manifest, resuming, torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import cosegkit.engine.segment as segment
from cosegkit.cli import main
from cosegkit.data.io import load_image
from cosegkit.data.types import DataError
from cosegkit.engine.segment import (
    balanced_sets,
    collect_images,
    plan_sets,
    read_for_network,
    segment_files,
    stored_setting,
)
from cosegkit.errors import CosegValueError
from cosegkit.testing import tiny_model
from tests.engine.test_trainer import cli_env

# (h, w) of the photos of two folders: 5 cats and 4 dogs
CATS = [(40, 60), (50, 30), (33, 33), (48, 64), (30, 45)]
DOGS = [(36, 36), (60, 40), (44, 52), (32, 48)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for folder, sizes in (("cats", CATS), ("dogs", DOGS)):
        (root / folder).mkdir()
        for i, (h, w) in enumerate(sizes):
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / folder / f"{folder[:-1]}{i}.png")
    return root


def files_of(photos: Path) -> list[Path]:
    return collect_images([photos / "cats", photos / "dogs"])


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


# ---------------------------------------------------------------------- the set policy
@given(st.integers(1, 200), st.integers(1, 40))
def test_balanced_sets_cover_in_order_differ_by_one_and_leave_no_image_alone(length, n) -> None:
    sets = balanced_sets(length, n)
    assert [i for s in sets for i in s] == list(range(length))
    sizes = [len(s) for s in sets]
    assert max(sizes) - min(sizes) <= 1
    if length >= 2 and n >= 2:
        assert min(sizes) >= 2  # no image alone
    if n >= 3 or length % 2 == 0 or n == 1:
        assert max(sizes) <= n and len(sets) == math.ceil(length / n)
    else:  # n == 2 and an odd count: one set of three
        assert sorted(sizes)[-1] == 3 and len(sets) == length // 2


def test_ten_images_in_sets_of_three_leave_none_alone() -> None:
    assert [len(s) for s in balanced_sets(10, 3)] == [3, 3, 2, 2]
    assert balanced_sets(3, None) == [[0, 1, 2]]
    with pytest.raises(CosegValueError, match="set_size"):
        balanced_sets(3, 0)


def test_sets_never_mix_folders_unless_asked(photos) -> None:
    files = files_of(photos)
    sets = plan_sets(files, 2)
    assert [[files[i].parent.name for i in s] for s in sets] == [["cats"] * 3, ["cats"] * 2, ["dogs"] * 2, ["dogs"] * 2]
    mixed = plan_sets(files, 3, by_folder=False)
    assert [len(s) for s in mixed] == [3, 3, 3] and {files[i].parent.name for i in mixed[1]} == {"cats", "dogs"}


def test_default_set_size_is_the_models_stored_one_else_five(photos, tmp_path) -> None:
    model = tiny_model()
    files = files_of(photos)[:5]
    sizes = []
    segment_files(model, files, tmp_path / "a", image_size=32, workers=0, on_set=lambda k, f, o: sizes.append(len(f)))
    assert sizes == [5]
    model.config["set_size"] = 2
    assert stored_setting(model, "set_size") == 2
    sizes.clear()
    segment_files(model, files, tmp_path / "b", image_size=32, workers=0, on_set=lambda k, f, o: sizes.append(len(f)))
    assert sizes == [3, 2]


# ---------------------------------------------------------------------- streaming
def test_images_are_read_set_by_set_not_all_before_the_first_forward(photos, tmp_path, monkeypatch) -> None:
    reads, seen_at_forward = [], []
    real_read = segment.read_for_network

    def counting_read(path, side):
        reads.append(Path(path).name)
        return real_read(path, side)

    monkeypatch.setattr(segment, "read_for_network", counting_read)
    model = tiny_model()
    model.register_forward_pre_hook(lambda module, args: seen_at_forward.append(len(reads)))
    files = files_of(photos)
    segment_files(model, files, tmp_path / "masks", set_size=2, image_size=32, workers=0)
    # before the k-th forward, exactly the images of the first k sets have been read
    assert seen_at_forward == [3, 5, 7, 9]


def test_read_for_network_matches_load_image_sizes_and_decodes_jpegs_small(tmp_path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    rotated = Image.fromarray(pixels)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    rotated.save(tmp_path / "phone.jpg", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    image, size = read_for_network(tmp_path / "phone.jpg", 64)
    assert image.shape == (3, 64, 64) and size == tuple(load_image(tmp_path / "phone.jpg").shape[-2:]) == (400, 300)
    # a PNG is decoded fully: the same pixels as load_image, resized
    image, size = read_for_network(tmp_path / "plain.png", 48)
    expected = torch.nn.functional.interpolate(
        load_image(tmp_path / "plain.png")[None], size=(48, 48), mode="bilinear", antialias=True
    )[0]
    assert size == (300, 400) and torch.allclose(image, expected.clamp(0, 1))


def test_workers_give_the_same_masks_as_reading_in_process(photos, tmp_path) -> None:
    model = tiny_model()
    files = files_of(photos)
    segment_files(model, files, tmp_path / "inline", set_size=3, image_size=32, workers=0)
    segment_files(model, files, tmp_path / "workers", set_size=3, image_size=32, workers=2)
    a, b = masks_of(tmp_path / "inline"), masks_of(tmp_path / "workers")
    assert a.keys() == b.keys() and len(a) == 9 and all(np.array_equal(a[k], b[k]) for k in a)


MALLOC_PROBE = """
import ctypes, sys
import cosegkit.engine.segment as segment

class Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
held = segment._fixed_mmap_threshold() if sys.argv[1] == "held" else None
libc.free(libc.malloc(8 << 20))  # a decoded photo, mmapped, then freed
before = libc.mallinfo2().hblkhd
block = libc.malloc(1 << 20)  # the next one
print(held, libc.mallinfo2().hblkhd - before >= 1 << 20)
"""


def test_workers_hold_the_mmap_threshold(tmp_path, monkeypatch) -> None:
    """A freed 8 MB block lifts glibc's threshold: the next 1 MB would come from the (forked) heap."""
    import ctypes

    if sys.platform != "linux":
        pytest.skip("glibc's malloc is Linux's")
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2") or not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")

    def probe(arm: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
        done = subprocess.run(
            [sys.executable, "-c", MALLOC_PROBE, arm], capture_output=True, text=True, check=True, env=env
        )
        return done.stdout.strip()

    assert probe("default") == "None False"  # glibc's own rule: the 1 MB block lands in the heap
    assert probe("held") == "True True"  # held at 128 KiB: it is mmapped, and unmapped when freed

    loaders = []

    class Recording(segment.DataLoader):
        def __init__(self, *args, **kwargs) -> None:
            loaders.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(segment, "DataLoader", Recording)
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in files:
        Image.new("RGB", (20, 10)).save(path)
    segment_files(tiny_model(), files, tmp_path / "masks", image_size=16, workers=1)
    assert loaders[0]["worker_init_fn"] is segment._fixed_mmap_threshold
    assert len(list((tmp_path / "masks").glob("*.png"))) == 2


# ---------------------------------------------------------------------- manifest and resuming
class Interrupted(Exception):
    pass


def test_an_interrupted_run_continues_and_equals_an_uninterrupted_one(photos, tmp_path) -> None:
    model = tiny_model()
    files = files_of(photos)
    settings = dict(set_size=2, image_size=32, overlays=True)
    whole = tmp_path / "whole"
    segment_files(model, files, whole, workers=0, **settings)

    broken = tmp_path / "broken"

    def stop_after_the_first_set(number, set_files, output):
        raise Interrupted

    with pytest.raises(Interrupted):
        segment_files(model, files, broken, workers=0, on_set=stop_after_the_first_set, **settings)
    # the first set is on disk and listed (in the part file until a run ends); nothing else
    assert not (broken / "manifest.jsonl").exists()
    listed = [json.loads(line) for line in (broken / "manifest.part0.jsonl").read_text().splitlines()]
    assert [(r["mask"], r["set"]) for r in listed] == [("cat0.png", 1), ("cat1.png", 1), ("cat2.png", 1)]
    assert sorted(p.name for p in broken.glob("*.png")) == sorted(
        ["cat0.png", "cat1.png", "cat2.png", "cat0_overlay.png", "cat1_overlay.png", "cat2_overlay.png"]
    )

    again, notes = [], []
    written, skipped = segment_files(
        model, files, broken, workers=1, on_set=lambda k, f, o: again.append(k), log=notes.append, **settings
    )
    assert again == [2, 3, 4] and "1 sets already written" in notes[0]
    assert [p.name for p in written] == [f"cat{i}.png" for i in range(5)] + [f"dog{i}.png" for i in range(4)]
    assert skipped == [] and not list(broken.glob("manifest.part*"))
    a, b = masks_of(whole), masks_of(broken)
    assert a.keys() == b.keys() and len(a) == 18 and all(np.array_equal(a[k], b[k]) for k in a)
    assert (whole / "manifest.jsonl").read_text() == (broken / "manifest.jsonl").read_text()
    manifest = [json.loads(line) for line in (whole / "manifest.jsonl").read_text().splitlines()]
    assert [(Path(r["image"]).name, r["mask"], r["set"]) for r in manifest] == [
        ("cat0.png", "cat0.png", 1), ("cat1.png", "cat1.png", 1), ("cat2.png", "cat2.png", 1),
        ("cat3.png", "cat3.png", 2), ("cat4.png", "cat4.png", 2), ("dog0.png", "dog0.png", 3),
        ("dog1.png", "dog1.png", 3), ("dog2.png", "dog2.png", 4), ("dog3.png", "dog3.png", 4),
    ]  # fmt: skip

    # all done: nothing runs; a deleted mask sends its set (only) through again
    again.clear()
    segment_files(model, files, broken, workers=0, on_set=lambda k, f, o: again.append(k), **settings)
    assert again == []
    (broken / "dog3.png").unlink()
    segment_files(model, files, broken, workers=0, on_set=lambda k, f, o: again.append(k), **settings)
    assert again == [4] and np.array_equal(masks_of(broken)["dog3.png"], a["dog3.png"])


def test_other_settings_in_the_same_folder_are_refused_naming_the_flag(photos, tmp_path) -> None:
    model = tiny_model()
    files = files_of(photos)[:3]
    segment_files(model, files, tmp_path / "masks", image_size=32, workers=0)
    with pytest.raises(CosegValueError, match=r"--image-size 32 there, 48 now.*another --out"):
        segment_files(model, files, tmp_path / "masks", image_size=48, workers=0)
    with pytest.raises(CosegValueError, match="--workers"):
        segment_files(model, files, tmp_path / "other", workers=-1)


def test_a_file_that_fails_to_decode_mid_run_names_skip_bad_or_is_listed(photos, tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in files_of(photos)[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    data = (folder / "cat1.png").read_bytes()
    (folder / "cat1.png").write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not
    files = collect_images([folder])
    model = tiny_model()
    with pytest.raises(DataError, match=r"cat1\.png.*--skip-bad"):
        segment_files(model, files, tmp_path / "strict", image_size=32, workers=0)
    written, skipped = segment_files(model, files, tmp_path / "lenient", image_size=32, workers=0, skip_bad=True)
    assert [p.name for p in written] == ["cat0.png", "cat2.png"] and [p.name for p, _ in skipped] == ["cat1.png"]
    manifest = [json.loads(line) for line in (tmp_path / "lenient" / "manifest.jsonl").read_text().splitlines()]
    assert [(Path(r["image"]).name, r["mask"], "error" in r) for r in manifest] == [
        ("cat0.png", "cat0.png", False), ("cat1.png", None, True), ("cat2.png", "cat2.png", False)
    ]  # fmt: skip


# ---------------------------------------------------------------------- the image size
def test_image_size_defaults_to_the_models_stored_size(photos, tmp_path) -> None:
    model = tiny_model()
    sides = []
    model.register_forward_pre_hook(lambda module, args: sides.append(tuple(args[0].shape[-2:])))
    files = files_of(photos)[:2]
    model.config["image_size"] = 40
    segment_files(model, files, tmp_path / "stored", workers=0)
    segment_files(model, files, tmp_path / "given", image_size=32, workers=0)
    del model.config["image_size"]
    segment_files(model, files, tmp_path / "none", workers=0)
    assert sides == [(40, 40), (32, 32), (224, 224)]


def test_cli_notes_a_model_without_a_stored_size_once(photos, tmp_path, capsys, monkeypatch) -> None:
    folder = tiny_model().save_pretrained(tmp_path / "model")
    argv = ["segment", "--model", str(folder), str(photos / "dogs"), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out
    notice = (
        f"{folder / 'config.json'} stores no image size (saved by an older cosegkit): segmenting at 224; "
        f"pass --image-size to choose"
    )
    assert notice in out and "network side 224" in out
    assert main([*argv, "--out", str(tmp_path / "given"), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "stores no image size" not in out and "network side 32" in out

    import cosegkit.cli as cli

    real_load = cli._load_model

    def load_with_a_stored_size(path, device):
        model, found = real_load(path, device)
        model.config["image_size"] = 48
        return model, found

    monkeypatch.setattr(cli, "_load_model", load_with_a_stored_size)
    assert main([*argv, "--out", str(tmp_path / "stored")]) == 0
    out = capsys.readouterr().out
    assert "stores no image size" not in out and "network side 48" in out


def test_cli_zero_shot_segments_at_224_without_a_notice(photos, tmp_path, capsys) -> None:
    from cosegkit.testing import TINY_CLIP

    argv = ["segment", "--zero-shot", "--clip-model", TINY_CLIP, "--clip-pretrained", "none", "--device", "cpu",
            str(photos / "dogs"), "--out", str(tmp_path / "zs"), "--workers", "0",
            "--vocabulary", "cat", "dog"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "network side 224" in out and "stores no image size" not in out and "wrote 4 masks" in out


def test_cli_errors_name_their_flag(photos, tmp_path, capsys) -> None:
    folder = tiny_model().save_pretrained(tmp_path / "model")
    argv = ["segment", "--model", str(folder), str(photos / "dogs"), "--device", "cpu",
            "--out", str(tmp_path / "masks")]  # fmt: skip
    assert main([*argv, "--image-size", "32", "--workers", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--workers" in err and len(err.splitlines()) == 1
    assert main([*argv, "--image-size", "32", "--workers", "0"]) == 0
    capsys.readouterr()
    assert main([*argv, "--image-size", "40", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--image-size 32 there, 40 now" in err and "--out" in err and len(err.splitlines()) == 1
    (tmp_path / "afile").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("")
    flags = ["--model", str(folder), "--image-size", "32", "--workers", "0", "--device", "cpu"]
    for inputs, out, message in (
        (photos / "dogs", tmp_path / "afile" / "masks", "writing to --out"),  # below a file: mkdir fails
        (tmp_path / "nothing*.jpg", tmp_path / "x", "pass image files, folders or glob patterns before --out"),
        (tmp_path / "notes", tmp_path / "x", "no image files found"),
    ):
        assert main(["segment", str(inputs), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_two_gloo_processes_write_the_masks_of_one(photos, tmp_path) -> None:
    folder = tiny_model().save_pretrained(tmp_path / "model")
    args = ["segment", "--model", str(folder), str(photos / "cats"), str(photos / "dogs"), "--set-size", "2",
            "--image-size", "32", "--device", "cpu", "--workers", "1"]  # fmt: skip
    one = subprocess.run(
        [sys.executable, "-m", "cosegkit", *args, "--out", str(tmp_path / "one")],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "cosegkit", *args, "--out", str(tmp_path / "two")],
        env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 0 of 2 takes 2 sets" in two.stdout and "process 1 of 2 takes 2 sets" in two.stdout
    a, b = masks_of(tmp_path / "one"), masks_of(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == 9 and all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "one" / "manifest.jsonl").read_text() == (tmp_path / "two" / "manifest.jsonl").read_text()
    assert not list((tmp_path / "two").glob("manifest.part*"))


def test_set_size_all_makes_one_set_per_folder(photos, tmp_path) -> None:
    sizes = []
    segment_files(
        tiny_model(), files_of(photos), tmp_path / "masks", set_size="all", image_size=32, workers=0,
        on_set=lambda k, f, o: sizes.append((k, len(f))),
    )  # fmt: skip
    assert sizes == [(1, 5), (2, 4)]
    with pytest.raises(CosegValueError, match="--set-size"):
        segment_files(tiny_model(), files_of(photos), tmp_path / "other", set_size=0, workers=0)


def test_an_interrupted_command_says_how_to_continue(photos, tmp_path, capsys, monkeypatch) -> None:
    import cosegkit.engine.segment as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "segment_files", interrupted)
    folder = tiny_model().save_pretrained(tmp_path / "model")
    argv = ["segment", "--model", str(folder), str(photos / "dogs"), "--out", str(tmp_path / "masks")]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert "interrupted" in err and "run the same command again to continue" in err and len(err.splitlines()) == 1
