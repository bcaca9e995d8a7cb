"""``cosegkit segment/evaluate --zero-shot --method segclip``: SegCLIP's groups, no trained co-segmenter.

A tiny random SegCLIP is written twice: as SegCLIP saves it (``segclip.bin``, SegCLIP's key
format, see :mod:`tests.clip.segclip_reference`) and as a cosegkit model folder. The masks mean
nothing; their number, sizes, values and the command's messages are what is checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cosegkit.cli import main
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.models import SegClip
from tests.clip.segclip_reference import segclip_state_dict

SIZES = [(40, 60), (50, 30), (33, 33)]
VOCAB = ["--vocabulary", "cat", "dog", "car", "bird"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("segclip") / "segclip.bin"
    torch.save(segclip_state_dict(seed=0), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, checkpoint):
    return SegClip.from_segclip_checkpoint(checkpoint).save_pretrained(tmp_path_factory.mktemp("segclip-folder") / "m")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def zs(weights) -> list[str]:
    return ["--zero-shot", "--method", "segclip", "--clip-pretrained", str(weights), "--device", "cpu"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("source", ["checkpoint", "folder"])
def test_segment_with_segclip_writes_a_mask_per_image(source, request, photos, tmp_path, capsys) -> None:
    weights = request.getfixturevalue(source)
    out = tmp_path / "masks"
    argv = ["segment", str(photos), "--out", str(out), "--image-size", "32", *zs(weights), *VOCAB, "--set-size", "3"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "zero-shot: SegCLIP (" in stdout and "groups per image, hard read-out, 4 class names" in stdout
    assert "wrote 3 masks" in stdout and "(found;" in stdout
    for i, (h, w) in enumerate(SIZES):
        mask = np.array(Image.open(out / f"p{i}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}


def test_segclip_options_reach_the_model(checkpoint, photos, tmp_path, capsys, monkeypatch) -> None:
    import cosegkit.zeroshot.segclip as module

    seen = {}
    original = module.SegClipCoseg.__init__

    def spy(self, model, classnames, **kwargs):
        seen.update(kwargs, classnames=list(classnames))
        original(self, model, classnames, **kwargs)

    monkeypatch.setattr(module.SegClipCoseg, "__init__", spy)
    argv = ["segment", str(photos), "--out", str(tmp_path / "m"), "--image-size", "32", *zs(checkpoint), *VOCAB,
            "--segclip-grouping", "set", "--segclip-readout", "soft", "--segclip-top-k", "2", "--class-name", "dog",
            "--templates", "a {}"]  # fmt: skip
    assert main(argv) == 0
    assert seen == {
        "classnames": ["cat", "dog", "car", "bird"],
        "templates": ["a {}"],
        "class_name": "dog",
        "grouping": "set",
        "readout": "soft",
        "top_k": 2,
    }
    assert "groups per set, soft read-out" in capsys.readouterr().out


def test_evaluate_with_segclip_prints_p_and_j(checkpoint, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    groups = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, seed=3), root, images_per_group=3)
    scores = tmp_path / "scores.json"
    argv = ["evaluate", *zs(checkpoint), "--data", f"folder={root}", "--classes", groups[0].name,
            "--image-size", "32", "--set-size", "3", "--json", str(scores)]  # fmt: skip
    assert main(argv) == 0
    assert "zero-shot: SegCLIP" in capsys.readouterr().out
    result = json.loads(scores.read_text())["folder"]
    assert result["images"] == 3 and 0 <= result["J"] <= 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--zero-shot", "--method", "segclip"], "--method segclip needs --clip-pretrained FILE|FOLDER"),
        (["--zero-shot", "--method", "segclip", "--clip-pretrained", "x.bin", "--no-caa", "--background", "sky"],
         "--background, --no-caa: not with --method segclip"),
        (["--zero-shot", "--method", "segclip", "--clip-pretrained", "x.bin", "--clip-model", "ViT-B-16"],
         "--clip-model: not with --method segclip"),
        (["--zero-shot", "--segclip-grouping", "set"], "--segclip-grouping: not with --method clip-es"),
        (["--zero-shot", "--method", "segclip", "--clip-pretrained", "missing.bin"],
         "--clip-pretrained 'missing.bin': could not read SegCLIP checkpoint"),
        (["--model", "runs/x", "--method", "segclip"], "--method: only with --zero-shot"),
    ],
)  # fmt: skip
def test_wrong_segclip_flags_give_one_line(flags, message, photos, tmp_path, capsys) -> None:
    assert main(["segment", str(photos), "--out", str(tmp_path / "m"), *flags]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "m").exists()


def test_a_model_folder_of_another_architecture_is_named(tmp_path, photos, capsys) -> None:
    (tmp_path / "lcco").mkdir()
    (tmp_path / "lcco" / "config.json").write_text(json.dumps({"architecture": "ufo", "model": {}}))
    assert main(["segment", str(photos), "--out", str(tmp_path / "m"), *zs(tmp_path / "lcco")]) == 2
    assert "holds a 'ufo' model, not SegCLIP" in one_line_error(capsys)


def test_a_segclip_folder_given_as_a_trained_model_names_the_zero_shot_flags(folder, photos, tmp_path, capsys) -> None:
    assert main(["segment", str(photos), "--out", str(tmp_path / "m"), "--model", str(folder)]) == 2
    assert (
        "holds a SegCLIP model, a zero-shot co-segmenter: use it with --zero-shot --method segclip"
        in one_line_error(capsys)
    )
