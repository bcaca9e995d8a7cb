"""The browser demo's pure parts: segment_set, the model list, the class read-out, and ``cosegkit app``'s checks."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from cosegkit.app import (
    ZERO_SHOT_LABEL,
    ModelChoice,
    SetClass,
    example_sets,
    load_choice,
    model_choices,
    segment_set,
    set_class,
)
from cosegkit.cli import main
from cosegkit.engine.segment import segment_files
from cosegkit.testing import register_tiny_clips, tiny_model


def _photos(folder: Path, sizes=((40, 30), (32, 32), (24, 48), (36, 20))) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (w, h) in enumerate(sizes):
        paths.append(folder / f"photo{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    model = tiny_model(seed=3)
    model.image_size, model.set_size = 32, 2
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_segment_set_gives_the_masks_of_segment_files(tmp_path, saved_model) -> None:
    photos = _photos(tmp_path / "in")
    model = load_choice(ModelChoice("tiny", model=str(saved_model)))
    result = segment_set(photos, model, tmp_path / "app")
    # what `cosegkit segment --model tiny photos --mix-folders --set-size all` writes
    written, _ = segment_files(model, photos, tmp_path / "cli", set_size="all", by_folder=False, workers=0)
    assert result.names == [p.name for p in photos]
    assert [p.name for p in result.masks] == [p.name for p in written]
    for ours, theirs, photo in zip(result.masks, written, photos, strict=True):
        assert np.array_equal(_read(ours), _read(theirs))
        assert _read(ours).shape == _read(photo).shape[:2]
    with zipfile.ZipFile(result.archive) as zipped:
        assert zipped.namelist() == [p.name for p in written]
        for mask in written:
            unpacked = np.asarray(Image.open(zipped.open(mask.name)))
            assert np.array_equal(unpacked, _read(mask))
    for overlay, photo in zip(result.overlays, photos, strict=True):
        assert Image.open(overlay).size == Image.open(photo).size


def test_segment_set_reports_the_class_the_model_found(tmp_path, saved_model) -> None:
    photos = _photos(tmp_path / "in")
    model = load_choice(ModelChoice("tiny", model=str(saved_model)))
    result = segment_set(photos, model, tmp_path / "app")
    with torch.no_grad():
        from cosegkit.engine.segment import read_for_network

        batch = torch.stack([read_for_network(p, 32)[0] for p in photos])[None]
        out = model(batch)
    names = model.config["classnames"]
    (found,) = result.classes
    assert (found.set, found.images) == (1, 4)
    assert found.name == names[int(out.common_class[0])]
    assert found.score == pytest.approx(float(out.class_probs[0, out.common_class[0]]), abs=1e-6)
    assert found.score_name == "class probability"
    assert [n for n, _ in found.runners_up] == [
        names[i] for i in out.class_probs[0].argsort(descending=True).tolist() if i != int(out.common_class[0])
    ][:2]


def test_segment_set_cuts_sets_and_skips_unreadable_files(tmp_path, saved_model) -> None:
    photos = _photos(tmp_path / "in")
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not an image")
    model = load_choice(ModelChoice("tiny", model=str(saved_model)))
    result = segment_set([*photos, broken], model, tmp_path / "app", set_size=2)
    assert [(c.set, c.images) for c in result.classes] == [(1, 2), (2, 2)]
    assert result.names == [p.name for p in photos]
    assert [name for name, _ in result.skipped] == ["broken.png"]
    assert "skipped broken.png" in result.summary()


def test_segment_set_zero_shot_reports_the_mean_cosine(tmp_path) -> None:
    register_tiny_clips()
    photos = _photos(tmp_path / "in")
    choice = ModelChoice("zs", clip_model="coseg-test-tiny", clip_pretrained=None, classnames=("cat", "dog", "car"))
    model = load_choice(choice)
    result = segment_set(photos, model, tmp_path / "app", image_size=32)
    seen = []
    segment_files(
        model,
        photos,
        tmp_path / "cli",
        set_size="all",
        image_size=32,
        by_folder=False,
        workers=0,
        on_set=lambda k, files, out: seen.append(out),
    )
    (found,) = result.classes
    chosen = int(seen[0].common_class[0])
    assert found.name == ("cat", "dog", "car")[chosen] and found.score_name == "mean cosine"
    assert found.score == pytest.approx(float(seen[0].class_scores[0, chosen]) / 4, abs=1e-6)


def test_segment_set_refuses_no_photos(tmp_path) -> None:
    with pytest.raises(ValueError, match="no photos given"):
        segment_set([], tiny_model(), tmp_path)


def test_a_model_without_clip_modules_names_no_class() -> None:
    net = torch.nn.Identity()
    found = set_class(net, mock.Mock(common_class=None), 3)
    assert found == SetClass(0, 3, None)
    assert "no class" in found.describe()


def test_model_choices_add_zero_shot_with_a_run_folders_clip(tmp_path) -> None:
    from cosegkit.engine.pretrain import SYNTHETIC_CLIP

    run = tmp_path / "lcco"
    (run / "model").mkdir(parents=True)
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"clip_model": SYNTHETIC_CLIP, "clip_pretrained": str(weights)}))
    other = tmp_path / "other"
    (other / "model").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"clip_model": "ViT-B-16", "clip_pretrained": "openai"}))
    twin = tmp_path / "baseline"  # another run of the same CLIP: no second entry
    (twin / "model").mkdir(parents=True)
    (twin / "config.json").write_text((run / "config.json").read_text())
    choices = model_choices([str(run), str(other), str(twin)])
    assert list(choices) == [str(run), str(other), str(twin), f"zero-shot: the CLIP of {run}", ZERO_SHOT_LABEL]
    demo = choices[f"zero-shot: the CLIP of {run}"]
    assert demo.zero_shot and demo.demo and demo.clip_pretrained == str(weights)
    assert not choices[str(run)].zero_shot


def test_the_demo_clip_entry_builds_the_demos_zero_shot_model(tmp_path, monkeypatch) -> None:
    from cosegkit.demo import ZERO_SHOT_SIZE, demo_clip
    from cosegkit.engine.pretrain import SYNTHETIC_CLIP

    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path))
    weights = tmp_path / "clip.safetensors"
    from safetensors.torch import save_file

    save_file(demo_clip("synthetic", None).model.state_dict(), weights)
    zs = load_choice(ModelChoice("z", clip_model=SYNTHETIC_CLIP, clip_pretrained=str(weights), demo=True))
    assert zs.image_size == ZERO_SHOT_SIZE and zs.templates == ("a {}",) and len(zs.classnames) == 16


def test_example_sets_are_the_synthetic_worlds(tmp_path) -> None:
    sets = example_sets(tmp_path, sets=2, set_size=3)
    assert [len(s) for s in sets] == [3, 3]
    first = [_read(p).copy() for p in sets[0]]
    assert example_sets(tmp_path, sets=2, set_size=3) == sets  # reused
    assert all(a.shape == (64, 64, 3) for a in first)
    assert not np.array_equal(first[0], _read(sets[1][0]))


# ---------------------------------------------------------------------- the command
def test_app_without_gradio_refuses_in_one_line(capsys, saved_model) -> None:
    with mock.patch.dict(sys.modules, {"gradio": None}):
        assert main(["app", "--model", str(saved_model)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'cosegkit app: error: the browser demo needs Gradio: pip install "cosegkit[app]"'


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("/no/such/folder", "no such folder, and not a hub name ORG/NAME"),
        ("not-a-hub-name", "no such folder, and not a hub name ORG/NAME"),
        ("{empty}", "(no config.json); pass --model"),
    ],
)
def test_app_refuses_a_bad_model_in_one_line(given, message, tmp_path, capsys) -> None:
    pytest.importorskip("gradio")
    given = given.replace("{empty}", str(tmp_path))
    with mock.patch("cosegkit.app.launch_app") as launch:
        assert main(["app", "--model", given]) == 2
    launch.assert_not_called()
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_app_serves_the_models_given(saved_model, capsys) -> None:
    pytest.importorskip("gradio")
    with mock.patch("cosegkit.app.launch_app") as launch:
        assert (
            main(["app", "--model", str(saved_model), "--model", "org/lcco", "--port", "7999", "--host", "0.0.0.0"])
            == 0
        )
    (page,), options = launch.call_args
    assert options == {"host": "0.0.0.0", "port": 7999, "share": False}
    assert type(page).__name__ == "Blocks"
    out = capsys.readouterr().out
    assert f"3 entries in the model list: {saved_model}; org/lcco; {ZERO_SHOT_LABEL}" in out
    assert "--model org/lcco: no such folder here, taken as a hub name" in out


def test_app_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--share" in out and 'pip install "cosegkit[app]"' in out


def test_page_choice_applies_the_zero_shot_fields_and_refuses_no_model(tmp_path) -> None:
    from cosegkit.app import page_choice

    demo = ModelChoice("zero-shot: the CLIP of run", clip_model="coseg-synthetic-clip", clip_pretrained="w", demo=True)
    choices = {demo.label: demo, **model_choices(["run"], clip_model="RN50", clip_pretrained="openai")}
    assert page_choice(choices, demo.label) == demo  # no vocabulary typed: the entry as it is
    picked = page_choice(choices, demo.label, clip_model="ignored", vocabulary="cat,\ndog")
    assert picked.classnames == ("cat", "dog") and picked.demo and picked.clip_model == "coseg-synthetic-clip"
    below = page_choice(choices, ZERO_SHOT_LABEL, clip_model="", clip_pretrained="/w/clip.pt")
    assert (below.clip_model, below.clip_pretrained, below.classnames) == ("ViT-B-16", "/w/clip.pt", None)
    assert page_choice(choices, "run") == choices["run"]
    with pytest.raises(ValueError, match="no model picked"):
        page_choice(choices, "  ")


def test_app_passes_the_zero_shot_flags_to_the_model_list(tmp_path) -> None:
    pytest.importorskip("gradio")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    argv = ["app", "--clip-model", "RN50", "--clip-pretrained", "none", "--vocabulary", str(names), "horse"]
    with mock.patch("cosegkit.app.launch_app"), mock.patch("cosegkit.app.build_app") as build:
        assert main([*argv, "--templates", "a photo of a {}."]) == 0
    choices = build.call_args.args[0]
    assert list(choices) == [ZERO_SHOT_LABEL]
    zero = choices[ZERO_SHOT_LABEL]
    assert (zero.clip_model, zero.clip_pretrained) == ("RN50", None)
    assert zero.classnames == ("cat", "dog", "horse") and zero.templates == ("a photo of a {}.",)
    assert build.call_args.kwargs["examples"] == []  # the synthetic world's sets only beside the demo's models


def test_app_refuses_a_template_without_a_slot(capsys) -> None:
    pytest.importorskip("gradio")
    with mock.patch("cosegkit.app.launch_app") as launch:
        assert main(["app", "--templates", "a photo"]) == 2
    launch.assert_not_called()
    assert "--templates 'a photo': each template needs exactly one '{}'" in capsys.readouterr().err


def test_launch_app_prints_the_address_and_blocks(capsys) -> None:
    pytest.importorskip("gradio")
    from cosegkit.app import launch_app

    page = mock.Mock()
    page.launch.return_value = (None, "http://127.0.0.1:7861/", None)
    assert launch_app(page, port=7861) == (None, "http://127.0.0.1:7861/", None)
    page.block_thread.assert_called_once()
    options = page.launch.call_args.kwargs
    assert options["share"] is False and options["quiet"] is True and options["ssr_mode"] is False
    assert options["theme"].font.startswith("ui-sans-serif")  # system fonts: no font files for the page
    assert capsys.readouterr().out == "cosegkit app: open http://127.0.0.1:7861/ (Ctrl+C stops it)\n"


def test_the_page_keeps_its_last_runs_only(tmp_path) -> None:
    import os

    from cosegkit.app import _prune

    for k in range(5):
        (tmp_path / f"run-{k}").mkdir()
        os.utime(tmp_path / f"run-{k}", (k, k))  # run-4 the newest
    _prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-3", "run-4"]
