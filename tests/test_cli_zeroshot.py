"""``cosegkit segment --zero-shot`` and ``cosegkit evaluate --zero-shot``: a frozen CLIP, no trained model.

Everything runs in-process through :func:`cosegkit.cli.main` on the tiny random CLIPs of
:func:`cosegkit.testing.register_tiny_clips` (the CLI registers them itself), so the masks mean
nothing; their number, sizes, values and the command's messages are what is checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cosegkit.cli import _zero_shot_settings, build_parser, main
from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset
from cosegkit.testing import TINY_CLIP, TINY_CLIP_RN
from cosegkit.zeroshot import BACKGROUND_WORDS, CLIP_ES_TEMPLATES, DEFAULT_SYNONYMS

ZS = ["--zero-shot", "--clip-model", TINY_CLIP, "--clip-pretrained", "none", "--device", "cpu"]
VOCAB = ["--vocabulary", "cat", "dog", "car", "bird"]
SIZES = [(40, 60), (50, 30), (33, 33)]  # (h, w) of the photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder-data")
    groups = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, seed=3), root, images_per_group=3)
    return root, [g.name for g in groups]


def segment(photos, out, *flags: str) -> int:
    return main(["segment", str(photos), "--out", str(out), "--image-size", "32", *flags])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", ["segment", "evaluate"])
def test_help_shows_zero_shot_examples(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"cosegkit {command} --zero-shot --clip-model ViT-B-16 --clip-pretrained openai" in out
    for flag in ("--class-name", "--vocabulary", "--templates", "--background-file", "--synonyms", "--no-caa",
                 "--attention-blocks", "--box-threshold", "--box-precision", "--cam-scaling",
                 "--pos-interpolation"):  # fmt: skip
        assert flag in out


def test_zero_shot_segment_writes_a_mask_per_image_at_its_size(photos, tmp_path, capsys) -> None:
    out = tmp_path / "masks"
    assert segment(photos, out, *ZS, *VOCAB, "--overlay", "--set-size", "2") == 0
    stdout = capsys.readouterr().out
    assert "zero-shot: coseg-test-tiny (random weights), vit tower, 4 class names" in stdout
    # 3 images in sets of at most 2: one set of 3, no image left alone
    assert "3 images in 1 sets of 3" in stdout and "set 1 (3 images, p0.png .. p2.png): " in stdout
    assert "set 2" not in stdout and "(found;" in stdout and "wrote 3 masks" in stdout
    for i, (h, w) in enumerate(SIZES):
        mask = np.array(Image.open(out / f"p{i}.png"))
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert Image.open(out / f"p{i}_overlay.png").size == (w, h)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("p")) == ["manifest.jsonl", "segment.json"]
    assert len(list(out.iterdir())) == 8


def test_known_class_name_is_segmented_in_every_set(photos, tmp_path, capsys) -> None:
    assert segment(photos, tmp_path / "masks", *ZS, *VOCAB, "--class-name", "dog", "--set-size", "1") == 0
    stdout = capsys.readouterr().out
    assert stdout.count("'dog' (--class-name;") == 3 and ", class 'dog'" in stdout
    assert len(list((tmp_path / "masks").glob("*.png"))) == 3


def test_unknown_class_name_fails_with_near_matches(photos, tmp_path, capsys) -> None:
    assert segment(photos, tmp_path / "masks", *ZS, "--class-name", "catt") == 2
    err = one_line_error(capsys)
    assert "unknown --class-name 'catt'" in err and "near matches: 'cat'" in err
    assert not (tmp_path / "masks").exists()  # refused before anything is loaded or written
    assert segment(photos, tmp_path / "masks", *ZS, *VOCAB, "--class-name", "horse") == 2
    assert "among the 4 names" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "give --model MODEL_FOLDER, or --zero-shot"),
        (["--model", "runs/x", *ZS], "either --model or --zero-shot, not both"),
        (["--model", "runs/x", "--class-name", "cat", "--no-caa"], "--class-name, --no-caa: only with --zero-shot"),
        (["--model", "runs/x", "--box-threshold", "0"], "--box-threshold: only with --zero-shot"),
        (["--model", "runs/x", "--cam-scaling", "once"], "--cam-scaling: only with --zero-shot"),
        (["--model", "runs/x", "--pos-interpolation", "bicubic", "--box-precision", "float"],
         "--box-precision, --pos-interpolation: only with --zero-shot"),
    ],
)
@pytest.mark.parametrize("command", ["segment", "evaluate"])
def test_model_or_zero_shot_exactly_one(command, flags, message, photos, tmp_path, capsys) -> None:
    if command == "segment":
        argv = ["segment", str(photos), "--out", str(tmp_path / "masks"), *flags]
    else:
        argv = ["evaluate", "--data", f"folder={tmp_path}", *flags]
    assert main(argv) == 2
    assert message in one_line_error(capsys)


def test_zero_shot_evaluate_prints_p_and_j_and_writes_json(dataset, tmp_path, capsys) -> None:
    root, names = dataset
    scores = tmp_path / "scores.json"
    argv = ["evaluate", *ZS, "--data", f"folder={root}", "--classes", *names[:2], "--image-size", "32",
            "--set-size", "3", "--preset", "ufo", "--per-group", "--json", str(scores)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("folder"))
    assert "images     6" in line and " P " in line and " J " in line and "(ufo)" in line
    assert names[0] in out and names[1] in out
    result = json.loads(scores.read_text())["folder"]
    assert result["images"] == 6 and result["preset"] == "ufo" and set(result["per_group"]) == set(names[:2])
    assert 0 <= result["P"] <= 1 and 0 <= result["J"] <= 1


def test_zero_shot_evaluate_refuses_the_synthetic_world(capsys) -> None:
    assert main(["evaluate", *ZS, "--data", "synthetic"]) == 2
    assert "--zero-shot takes reader=PATH datasets" in one_line_error(capsys)


def test_resnet_tower_runs_gradcam_without_caa(photos, tmp_path, capsys) -> None:
    zs = [*ZS[:2], TINY_CLIP_RN, *ZS[3:]]
    assert segment(photos, tmp_path / "masks", *zs, *VOCAB) == 0
    out = capsys.readouterr().out
    assert "resnet tower" in out and "no CAA (ResNet tower)" in out
    for i, (h, w) in enumerate(SIZES):
        assert np.array(Image.open(tmp_path / "masks" / f"p{i}.png")).shape == (h, w)


def test_prompt_files_and_caa_options_run(photos, tmp_path, capsys) -> None:
    vocabulary = tmp_path / "names.txt"
    vocabulary.write_text("# my classes\ncat\n\ndog\n")
    background = tmp_path / "background.txt"
    background.write_text("grass\nsky\n")
    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps({"cat": ["cat", "kitten"], "person": []}))
    flags = ["--vocabulary", str(vocabulary), "fox", "--background-file", str(background),
             "--synonyms", str(synonyms), "--templates", "a photo of a {}.", "a {} in the scene.",
             "--attention-blocks", "1", "--box-threshold", "0.2"]  # fmt: skip
    assert segment(photos, tmp_path / "masks", *ZS, *flags) == 0
    out = capsys.readouterr().out
    assert "3 class names, 2 background words, 2 templates, CAA" in out
    assert segment(photos, tmp_path / "plain", *ZS, *VOCAB, "--no-caa") == 0
    assert ", no CAA" in capsys.readouterr().out
    assert len(list((tmp_path / "plain").glob("*.png"))) == 3


def test_settings_reach_the_model_with_defaults_and_overrides(tmp_path) -> None:
    def settings(*flags: str) -> dict:
        return _zero_shot_settings(build_parser().parse_args(["segment", "x", "--out", "y", "--zero-shot", *flags]))

    default = settings()
    assert default["templates"] == list(CLIP_ES_TEMPLATES) and default["background"] == list(BACKGROUND_WORDS)
    assert default["synonyms"] == DEFAULT_SYNONYMS and default["class_name"] is None
    assert (default["attention_blocks"], default["box_threshold"], default["refine"]) == (8, 0.4, True)
    assert "cat" in default["classnames"] and len(default["classnames"]) > 80

    synonyms = tmp_path / "s.json"
    synonyms.write_text(json.dumps({"cat": "kitty", "person": []}))
    custom = settings("--vocabulary", "cat", "person", "--class-name", "cat", "--background", "sky", "road",
                      "--synonyms", str(synonyms), "--no-caa", "--attention-blocks", "3",
                      "--box-threshold", "0")  # fmt: skip
    assert custom["classnames"] == ["cat", "person"] and custom["background"] == ["sky", "road"]
    assert custom["synonyms"]["cat"] == ["kitty"] and custom["synonyms"]["person"] == []  # [] switches a default off
    assert custom["synonyms"]["bird"] == DEFAULT_SYNONYMS["bird"]  # the other defaults stay
    assert (custom["class_name"], custom["attention_blocks"], custom["box_threshold"], custom["refine"]) == (
        "cat",
        3,
        0.0,
        False,
    )


@pytest.mark.parametrize("command", ["segment", "evaluate"])
def test_clip_es_numerics_flags_reach_the_zero_shot_model(command, dataset, tmp_path, capsys) -> None:
    """--box-precision, --cam-scaling and --pos-interpolation: CLIP-ES's by default, the other readings on request."""
    from cosegkit.cli import _load_zero_shot

    root, _ = dataset
    head = ["segment", "x", "--out", "y"] if command == "segment" else ["evaluate", "--data", f"folder={root}"]

    def model(*flags: str):
        zs = _load_zero_shot(build_parser().parse_args([*head, *ZS, *VOCAB, *flags]), "cpu")
        capsys.readouterr()
        return zs.box_precision, zs.cam_scaling, zs.pos_interpolation

    assert model() == ("uint8", "twice", "bilinear")
    assert model("--box-precision", "float", "--cam-scaling", "once", "--pos-interpolation", "bicubic") == (
        "float",
        "once",
        "bicubic",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args([*head, *ZS, "--cam-scaling", "thrice"])
    capsys.readouterr()


def test_zero_shot_evaluate_runs_with_the_other_readings(dataset, tmp_path, capsys) -> None:
    root, _ = dataset
    flags = ["--box-precision", "float", "--cam-scaling", "once", "--pos-interpolation", "bicubic"]
    argv = ["evaluate", "--data", f"folder={root}", "--image-size", "48", *ZS, *VOCAB, *flags]
    assert main(argv) == 0
    assert "P " in capsys.readouterr().out


def test_train_pseudo_mask_flags_reach_the_settings_and_the_cache_key(tmp_path, capsys) -> None:
    """--pseudo-box-precision, --pseudo-cam-scaling, --pseudo-pos-interpolation: extra["zero_shot"], model, key."""
    from cosegkit.cli import _config_from_args
    from cosegkit.clip import FrozenClip
    from cosegkit.engine.pseudo import build_zero_shot, cache_key
    from cosegkit.testing import register_tiny_clips

    def config(*flags: str):
        base = ["train", "--dataset", "folder", "--root", "photos", "--pseudo-masks", "zero-shot",
                "--image-size", "32", "--clip-model", TINY_CLIP, "--clip-pretrained", "none",
                "--pseudo-background", "grass", "sky"]  # fmt: skip
        return _config_from_args(build_parser().parse_args([*base, *flags]))

    register_tiny_clips()
    clip = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=["cat", "dog"])
    plain = config()
    assert "zero_shot" not in plain.extra
    default = build_zero_shot(plain, clip)
    assert (default.box_precision, default.cam_scaling, default.pos_interpolation) == ("uint8", "twice", "bilinear")
    base_key, description = cache_key(plain, default)
    assert description["zero_shot"]["box_precision"] == "uint8"
    keys = {base_key}
    for flag, value, name in (
        ("--pseudo-box-precision", "float", "box_precision"),
        ("--pseudo-cam-scaling", "once", "cam_scaling"),
        ("--pseudo-pos-interpolation", "bicubic", "pos_interpolation"),
    ):
        changed = config(flag, value)
        assert changed.extra["zero_shot"] == {name: value}
        zs = build_zero_shot(changed, clip)
        assert getattr(zs, name) == value
        key, description = cache_key(changed, zs)
        assert description["zero_shot"][name] == value
        keys.add(key)
    assert len(keys) == 4  # each setting its own pseudo masks
    assert main(["train", "--pseudo-cam-scaling", "once", "--out", str(tmp_path / "run")]) == 2
    assert "--pseudo-cam-scaling: only with --pseudo-masks zero-shot" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--templates", "a photo"], "--templates 'a photo': each template needs exactly one '{}'"),
        (["--templates", "a {} and a {}"], "exactly one '{}'"),
        (["--templates", "a {} {"], "exactly one '{}'"),
        (["--background-file", "EMPTY"], "is empty"),
        (["--background", "sky", "--background-file", "EMPTY"], "--background or --background-file, not both"),
        (["--background", "cat", "dog", *VOCAB], "every background word is also a class name"),
        (["--vocabulary", "missing.txt"], "--vocabulary 'missing.txt': no such file"),
        (["--vocabulary", "cat", "dog", "cat"], "more than once: ['cat']"),
        (["--vocabulary", "EMPTY"], "is empty"),
        (["--synonyms", "BADJSON"], "is not valid JSON"),
        (["--synonyms", "LISTJSON"], "must hold a JSON object"),
        (["--synonyms", "NUMJSON"], "'cat' must map to a list of non-empty strings"),
        (["--synonyms", "missing.json"], "cannot read it"),
        (["--clip-model", "no-such-clip"], "unknown open_clip model 'no-such-clip'"),
    ],
)
def test_bad_prompt_options_give_one_line(flags, message, photos, tmp_path, capsys) -> None:
    files = {"EMPTY": "\n# nothing\n  \n", "BADJSON": "{cat: 1", "LISTJSON": "[1, 2]", "NUMJSON": '{"cat": 3}'}
    argv = []
    for flag in flags:
        if flag in files:
            (tmp_path / flag).write_text(files[flag])
            flag = str(tmp_path / flag)
        argv.append(flag)
    assert segment(photos, tmp_path / "masks", *ZS, *argv) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "masks").exists()
