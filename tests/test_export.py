"""Export: the torch.export program and the ONNX file give eager PyTorch's masks; the command and its errors."""

from __future__ import annotations

import builtins
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from cosegkit.errors import CosegValueError
from cosegkit.export import InferenceGraph, export_program, onnx_session, run_onnx
from cosegkit.testing import TINY_CLIP_RN, tiny_model
from tests.engine.test_trainer import cli_env


def fresh_images(n: int, size: int, seed: int = 5) -> torch.Tensor:
    """Images other than the export's own example input."""
    return torch.rand(1, n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_the_graph_is_predict_for_full_sets() -> None:
    model = tiny_model()
    images = fresh_images(3, 32)
    assert torch.equal(InferenceGraph(model)(images), model.predict(images))
    assert not InferenceGraph(model).training


@pytest.mark.parametrize("clip_model", ["coseg-test-tiny", TINY_CLIP_RN])
def test_the_torch_export_program_equals_eager_on_new_images(clip_model) -> None:
    model = spread(tiny_model(clip_model=clip_model))
    size = 64 if clip_model == TINY_CLIP_RN else 32
    program = export_program(model, set_size=3, image_size=size)
    for seed in (1, 2):
        images = fresh_images(3, size, seed)
        assert torch.allclose(program.module()(images), model.predict(images), atol=1e-5)


def spread(model):
    """The tiny model with its head scaled so that probabilities spread over (0, 1), not all near 0.5."""
    with torch.no_grad():
        model.head.weight.mul_(40.0)
        model.head.bias.zero_()
    return model


def test_the_cli_writes_an_onnx_file_whose_masks_equal_eager_within_1e4(tmp_path) -> None:
    model = spread(tiny_model())
    assert float(model.predict(fresh_images(4, 32)).std()) > 0.1
    model.save_pretrained(tmp_path / "run" / "model")
    out = tmp_path / "deploy" / "lcco.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "cosegkit", "export", "--model", str(tmp_path / "run"), "--out", str(out),
         "--set-size", "4", "--image-size", "32"],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"onnxruntime vs eager PyTorch: max \|difference\| (\S+)", done.stdout)
    assert printed and float(printed.group(1)) < 1e-4 and out.is_file()
    assert "initialized randomly" not in done.stderr
    session = onnx_session(out)
    assert [i.name for i in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == ["masks"]
    for seed in (3, 4):
        images = fresh_images(4, 32, seed)
        got = run_onnx(session, images)
        expected = model.predict(images).numpy()
        assert got.shape == (1, 4, 1, 32, 32)
        assert np.abs(got - expected).max() < 1e-4
    with torch.no_grad():  # the comparison sees a small change of one weight
        next(model.blocks.parameters()).add_(0.05)
    assert np.abs(run_onnx(session, images) - model.predict(images).numpy()).max() > 1e-4
    with pytest.raises(CosegValueError, match=r"exported for images of shape \(1, 4, 3, 32, 32\).*--set-size"):
        run_onnx(session, fresh_images(5, 32))


def test_the_command_refuses_a_file_that_differs_from_eager(tmp_path, capsys, monkeypatch) -> None:
    from cosegkit import export
    from cosegkit.cli import main

    tiny_model().save_pretrained(tmp_path / "model")
    real = export.export_onnx

    def drifted(*args, **kwargs):
        report = real(*args, **kwargs)
        report.max_abs_diff = 0.3
        return report

    monkeypatch.setattr(export, "export_onnx", drifted)
    argv = ["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx"), "--set-size", "2",
            "--image-size", "32"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "differ from eager PyTorch's by up to 3.00e-01 (more than 1e-4): do not deploy" in err


def test_a_pt2_file_loads_back_and_segments(tmp_path) -> None:
    from cosegkit.cli import main

    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.pt2"),
                 "--set-size", "2", "--image-size", "32"]) == 0  # fmt: skip
    program = torch.export.load(str(tmp_path / "m.pt2"))
    images = fresh_images(2, 32)
    assert torch.allclose(program.module()(images), model.predict(images), atol=1e-5)


def test_export_errors_say_what_to_do(tmp_path, capsys, monkeypatch) -> None:
    from cosegkit.cli import main

    tiny_model().save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.zip")]) == 2
    assert "name a .onnx file (ONNX) or a .pt2 file" in capsys.readouterr().err
    (tmp_path / "d.onnx").mkdir()
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "d.onnx")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.pt2")]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    real_import = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("no onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    assert main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'needs onnxruntime: pip install "cosegkit[export]"' in capsys.readouterr().err
    with pytest.raises(CosegValueError, match="set_size must be a positive integer"):
        export_program(tiny_model(), set_size=0)


def test_export_uses_the_size_the_model_was_trained_at(tmp_path, capsys) -> None:
    import json

    from cosegkit.cli import main

    model = tiny_model(image_size=48, set_size=2)
    assert tuple(export_program(model).example_inputs[0][0].shape) == (1, 2, 3, 48, 48)  # the Python API too
    folder = model.save_pretrained(tmp_path / "model")

    def exported(*flags: str) -> tuple[int, ...]:
        out = tmp_path / "m.pt2"
        assert main(["export", "--model", str(folder), "--out", str(out), *flags]) == 0
        shape = tuple(torch.export.load(str(out)).example_inputs[0][0].shape)
        assert f"input {shape}" in capsys.readouterr().out
        return shape

    assert exported() == (1, 2, 3, 48, 48)
    assert exported("--image-size", "32", "--set-size", "3") == (1, 3, 3, 32, 32)  # told otherwise
    config = json.loads((folder / "config.json").read_text())
    del config["model"]["image_size"], config["model"]["set_size"]  # as saved before the sizes were stored
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["export", "--model", str(folder), "--out", str(tmp_path / "old.pt2")]) == 0
    captured = capsys.readouterr()
    assert "input (1, 5, 3, 224, 224)" in captured.out
    assert captured.err.strip() == (
        f"{folder / 'config.json'} stores no image size (saved by an older cosegkit): using 224; "
        f"pass --image-size to choose"
    )
