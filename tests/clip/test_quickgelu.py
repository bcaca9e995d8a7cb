"""Every CLIP is built in the activation its weights were trained with: QuickGELU for OpenAI's.

The weights are a tiny QuickGELU CLIP's, written by the tests in OpenAI's formats (a state dict
with ``input_resolution``, ``context_length`` and ``vocab_size``, a TorchScript archive, a
safetensors file) with the MLP weights scaled up, so that the same weights through GELU
give embeddings measurably different from the reference (checked in each test). Each entry
point that builds a CLIP by name (FrozenClip.from_name, LCCo, its save/load round trip,
ZeroShotCoseg, the CLI's --clip-model/--clip-pretrained) is checked by its towers' activation
and by its embeddings against the reference.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from cosegkit import LCCo
from cosegkit.cli import main
from cosegkit.clip import FrozenClip
from cosegkit.clip.activation import OPENAI_ONLY_KEYS, quick_gelu_architecture, trained_architecture
from cosegkit.errors import CosegValueError
from cosegkit.models.lcco import CLIP_CONFIG_DIR
from cosegkit.zeroshot import ZeroShotCoseg
from tests._support import TINY_CLIP, tiny_lcco
from tests.engine.test_trainer import TINY_ARGS, cli_env

TWIN = TINY_CLIP + "-quickgelu"
CLASSNAMES = ("cat", "dog", "car", "bird")
OPENAI_EXTRAS = {
    "input_resolution": torch.tensor(32),
    "context_length": torch.tensor(16),
    "vocab_size": torch.tensor(49408),
}
SAME = 1e-6  # QuickGELU build against the reference
APART = 1e-3  # GELU build against the reference: at least this far


def activations(model: nn.Module) -> set[str]:
    """The activation classes in the CLIP's transformer MLPs (both towers of the ViT CLIP)."""
    return {type(m).__name__ for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}


def images() -> torch.Tensor:
    return torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def embeddings(clip: FrozenClip) -> tuple[torch.Tensor, torch.Tensor]:
    return clip.encode_images(images()), clip.text_bank


def gap(clip: FrozenClip, other: FrozenClip) -> float:
    (a, bank_a), (b, bank_b) = embeddings(clip), embeddings(other)
    return max((a - b).abs().max().item(), (bank_a - bank_b).abs().max().item())


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_archive(state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose ``state_dict()`` is ``state``, as OpenAI's ``ViT-B-16.pt`` is."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if part not in module._modules:
                module.add_module(part, _Holder())
            module = module._modules[part]
        module.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files remain
        torch.jit.save(torch.jit.script(root), str(path))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The reference QuickGELU CLIP, its GELU twin on the same weights, and the weight files."""
    folder = tmp_path_factory.mktemp("openai-weights")
    torch.manual_seed(11)
    reference = open_clip.create_model(TINY_CLIP, pretrained=None, force_quick_gelu=True).eval()
    state = reference.state_dict()
    for key, value in state.items():
        if key.endswith("mlp.c_fc.weight"):
            value.mul_(2.0)  # MLP inputs away from 0, where GELU and QuickGELU part,
        if key.endswith("mlp.c_proj.weight"):
            value.mul_(4.0)  # and MLP outputs that count in the residual stream
        if value.ndim >= 2 and "embedding" not in key:
            state[key] = value.half()  # OpenAI's files hold conv and linear weights in float16
    reference.load_state_dict(state)
    gelu = open_clip.create_model(TINY_CLIP, pretrained=None).eval()
    gelu.load_state_dict(state)
    openai_state = {**{k: v.clone() for k, v in state.items()}, **OPENAI_EXTRAS}
    files = {
        "state dict": folder / "ViT-tiny-openai.pt",
        "TorchScript": folder / "ViT-tiny.pt",
        "safetensors": folder / "ViT-tiny-openai.safetensors",
        "open_clip": folder / "open_clip_model.safetensors",
    }
    torch.save(openai_state, files["state dict"])
    torchscript_archive(openai_state, files["TorchScript"])
    save_file(openai_state, str(files["safetensors"]))
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(files["open_clip"]))
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    return {
        "reference": FrozenClip(reference, tokenizer, classnames=CLASSNAMES),
        "gelu": FrozenClip(gelu, tokenizer, classnames=CLASSNAMES),
        "files": files,
    }


OPENAI_FORMATS = ["state dict", "TorchScript", "safetensors"]


def test_weights_tell_the_activations_apart(weights) -> None:
    assert activations(weights["reference"].model) == {"QuickGELU"}
    assert activations(weights["gelu"].model) == {"GELU"}
    assert gap(weights["gelu"], weights["reference"]) > APART


# ------------------------------------------------------------------ tags: name resolution, no weights
def quick_gelu_tags() -> list[tuple[str, str]]:
    from open_clip.pretrained import get_pretrained_cfg

    return [(n, t) for n, t in open_clip.list_pretrained() if get_pretrained_cfg(n, t).get("quick_gelu")]


def test_vit_b16_openai_resolves_to_the_quickgelu_architecture() -> None:
    choice = trained_architecture("ViT-B-16", "openai")
    assert choice.name == "ViT-B-16-quickgelu" and choice.state_dict is None
    assert "'ViT-B-16' is the GELU architecture" in choice.note and "'ViT-B-16-quickgelu'" in choice.note
    assert open_clip.get_model_config(choice.name)["quick_gelu"] is True
    assert trained_architecture("ViT-B-16-quickgelu", "openai").note is None  # already right
    assert trained_architecture("ViT-B-16", "laion2b_s34b_b88k").name == "ViT-B-16"  # a GELU tag
    assert trained_architecture("ViT-B-16", None).name == "ViT-B-16"


def test_every_quickgelu_tag_resolves_to_a_quickgelu_architecture() -> None:
    tags = quick_gelu_tags()
    assert ("ViT-B-16", "openai") in tags and ("RN50", "openai") in tags and len(tags) > 20
    for name, tag in tags:
        built = trained_architecture(name, tag).name
        assert open_clip.get_model_config(built)["quick_gelu"] is True, (name, tag, built)
        config = open_clip.get_model_config(name)
        assert open_clip.get_model_config(built) == {**config, "quick_gelu": True}, (name, tag)


def test_from_name_default_builds_vit_b16_quickgelu(monkeypatch) -> None:
    """The default ("ViT-B-16", "openai") of FrozenClip and LCCo reaches open_clip as the QuickGELU architecture."""
    calls = []

    def create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs.get("force_quick_gelu", False)))
        return open_clip.factory.create_model(TINY_CLIP, pretrained=None, force_quick_gelu=True)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name: open_clip.factory.get_tokenizer(TINY_CLIP))
    clip = FrozenClip.from_name(classnames=["cat"])
    assert calls == [("ViT-B-16-quickgelu", "openai", True)]
    assert clip.source["model_name"] == "ViT-B-16-quickgelu" and clip.source["requested_model_name"] == "ViT-B-16"


# ------------------------------------------------------------------ a tag through open_clip's download path
@pytest.fixture
def hub_tag(weights, tmp_path, monkeypatch):
    """A QuickGELU tag and a GELU tag for the tiny CLIP, their weights in a Hugging Face cache on disk."""
    from open_clip import pretrained as registry

    cache = tmp_path / "hub"
    for repo in ("quickgelu", "gelu"):
        snapshot = cache / f"models--cosegkit-test--tiny-{repo}" / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot / "open_clip_model.safetensors").write_bytes(weights["files"]["open_clip"].read_bytes())
        (cache / f"models--cosegkit-test--tiny-{repo}" / "refs").mkdir()
        (cache / f"models--cosegkit-test--tiny-{repo}" / "refs" / "main").write_text("0" * 40)
    tags = {
        "tiny_quickgelu": {"hf_hub": "cosegkit-test/tiny-quickgelu/", "quick_gelu": True},
        "tiny_gelu": {"hf_hub": "cosegkit-test/tiny-gelu/"},
    }
    monkeypatch.setitem(registry._PRETRAINED, TINY_CLIP, tags)
    return cache


def test_quickgelu_tag_builds_quickgelu_from_the_download(weights, hub_tag, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="cosegkit.clip"):
        clip = FrozenClip.from_name(TINY_CLIP, "tiny_quickgelu", classnames=CLASSNAMES, cache_dir=str(hub_tag))
    assert activations(clip.model) == {"QuickGELU"}
    assert clip.source["model_name"] == TWIN
    assert gap(clip, weights["reference"]) < SAME
    notes = [r.getMessage() for r in caplog.records if r.name.startswith("cosegkit.clip")]
    assert len(notes) == 1 and "'tiny_quickgelu' weights were trained with QuickGELU" in notes[0]
    assert "\n" not in notes[0]


def test_gelu_tag_stays_gelu(weights, hub_tag) -> None:
    clip = FrozenClip.from_name(TINY_CLIP, "tiny_gelu", classnames=CLASSNAMES, cache_dir=str(hub_tag))
    assert activations(clip.model) == {"GELU"} and clip.source["model_name"] == TINY_CLIP
    assert gap(clip, weights["gelu"]) < SAME


def test_file_in_the_hub_folder_of_a_quickgelu_tag_builds_quickgelu(weights, hub_tag) -> None:
    """open_clip's format carries no activation; the download folder of a QuickGELU tag does."""
    file = next((hub_tag / "models--cosegkit-test--tiny-quickgelu").rglob("*.safetensors"))
    clip = FrozenClip.from_name(TINY_CLIP, str(file), classnames=CLASSNAMES)
    assert activations(clip.model) == {"QuickGELU"} and gap(clip, weights["reference"]) < SAME
    other = next((hub_tag / "models--cosegkit-test--tiny-gelu").rglob("*.safetensors"))
    assert activations(FrozenClip.from_name(TINY_CLIP, str(other), classnames=CLASSNAMES).model) == {"GELU"}


# ------------------------------------------------------------------ local files in OpenAI's formats
@pytest.mark.parametrize("fmt", OPENAI_FORMATS)
def test_openai_file_under_a_gelu_name_is_built_quickgelu(fmt, weights, caplog) -> None:
    file = weights["files"][fmt]
    with caplog.at_level(logging.WARNING, logger="cosegkit.clip"):
        clip = FrozenClip.from_name(TINY_CLIP, file, classnames=CLASSNAMES)
    assert activations(clip.model) == {"QuickGELU"}
    assert clip.source["model_name"] == TWIN and clip.source["requested_model_name"] == TINY_CLIP
    assert gap(clip, weights["reference"]) < SAME
    assert not any(k in clip.clip_state_dict() for k in OPENAI_ONLY_KEYS)
    notes = [r.getMessage() for r in caplog.records if r.name.startswith("cosegkit.clip")]
    assert len(notes) == 1, notes
    expected = "TorchScript archive format" if fmt == "TorchScript" else "state-dict format"
    assert f"OpenAI CLIP weights in OpenAI's {expected}" in notes[0] and f"building {TWIN!r}" in notes[0]


WRAPPINGS = {
    "state_dict entry": lambda state: {"state_dict": state},
    "module. prefixes": lambda state: {"module." + key: value for key, value in state.items()},
}


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_wrapped_openai_state_dict_is_built_quickgelu(wrapping, weights, tmp_path, caplog) -> None:
    """A checkpoint open_clip unwraps (its ``state_dict`` entry, DDP's ``module.``) is read unwrapped here too."""
    state = torch.load(weights["files"]["state dict"], weights_only=True)
    file = tmp_path / "wrapped.pt"
    torch.save(WRAPPINGS[wrapping](state), file)
    with caplog.at_level(logging.WARNING, logger="cosegkit.clip"):
        clip = FrozenClip.from_name(TINY_CLIP, file, classnames=CLASSNAMES)
    assert activations(clip.model) == {"QuickGELU"}
    assert clip.source["model_name"] == TWIN
    assert gap(clip, weights["reference"]) < SAME
    notes = [r.getMessage() for r in caplog.records if r.name.startswith("cosegkit.clip")]
    assert len(notes) == 1 and "OpenAI CLIP weights in OpenAI's state-dict format" in notes[0], notes


@pytest.mark.parametrize("fmt", OPENAI_FORMATS)
def test_openai_file_under_the_quickgelu_name_loads_without_a_note(fmt, weights, caplog) -> None:
    quick_gelu_architecture(TINY_CLIP)
    with caplog.at_level(logging.WARNING, logger="cosegkit.clip"):
        clip = FrozenClip.from_name(TWIN, weights["files"][fmt], classnames=CLASSNAMES)
    assert activations(clip.model) == {"QuickGELU"} and gap(clip, weights["reference"]) < SAME
    assert not [r for r in caplog.records if r.name.startswith("cosegkit.clip")]


def test_a_different_config_under_the_twin_name_is_left_alone(tmp_path, monkeypatch) -> None:
    """A user's own ``<name>-quickgelu`` of another architecture is kept; the twin gets another name."""
    factory = open_clip.factory
    # open_clip's registry is global: work on copies, restored after the test
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    monkeypatch.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))
    base = open_clip.get_model_config(TINY_CLIP)
    users = {**base, "embed_dim": base["embed_dim"] * 2, "quick_gelu": True}
    (tmp_path / f"{TWIN}.json").write_text(json.dumps(users))
    open_clip.add_model_config(tmp_path / f"{TWIN}.json")
    name = quick_gelu_architecture(TINY_CLIP)
    assert name == TINY_CLIP + "-cosegkit-quickgelu"
    assert open_clip.get_model_config(name) == {**base, "quick_gelu": True}
    assert open_clip.get_model_config(TWIN) == users
    assert quick_gelu_architecture(TINY_CLIP) == name
    assert open_clip.get_model_config(TWIN) == users


def test_open_clip_file_is_built_as_named(weights) -> None:
    """open_clip's own format says nothing of the activation: the name decides."""
    file = weights["files"]["open_clip"]
    gelu = FrozenClip.from_name(TINY_CLIP, file, classnames=CLASSNAMES)
    assert activations(gelu.model) == {"GELU"} and gap(gelu, weights["gelu"]) < SAME
    quick = FrozenClip.from_name(quick_gelu_architecture(TINY_CLIP), file, classnames=CLASSNAMES)
    assert activations(quick.model) == {"QuickGELU"} and gap(quick, weights["reference"]) < SAME


def test_openai_file_under_a_tower_without_the_setting_is_refused(weights, monkeypatch) -> None:
    config = dict(open_clip.get_model_config(TINY_CLIP))
    config["text_cfg"] = {**config["text_cfg"], "hf_model_name": "bert-base-uncased"}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "coseg-test-hf-text", config)
    with pytest.raises(CosegValueError, match="not an architecture cosegkit can switch to QuickGELU") as info:
        FrozenClip.from_name("coseg-test-hf-text", weights["files"]["state dict"], classnames=CLASSNAMES)
    assert "ViT-B-16-quickgelu" in str(info.value) and "--clip-model" in str(info.value)


# ------------------------------------------------------------------ the other entry points
def test_lcco_builds_the_quickgelu_clip_and_its_round_trip_keeps_it(weights, tmp_path) -> None:
    model = tiny_lcco(clip_pretrained=str(weights["files"]["state dict"]), classnames=CLASSNAMES)
    assert activations(model.clip.model) == {"QuickGELU"} and gap(model.clip, weights["reference"]) < SAME
    assert model.config["clip_model"] == TWIN
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / CLIP_CONFIG_DIR / f"{TWIN}.json").read_text())
    assert saved["quick_gelu"] is True
    loaded = LCCo.from_pretrained(tmp_path / "model")
    assert activations(loaded.clip.model) == {"QuickGELU"} and gap(loaded.clip, weights["reference"]) < SAME


def test_lcco_round_trip_rebuilds_quickgelu_in_a_fresh_process(weights, tmp_path) -> None:
    """A new process knows the twin only from the model folder's saved CLIP config."""
    model = tiny_lcco(clip_pretrained=str(weights["files"]["TorchScript"]), classnames=CLASSNAMES)
    model.save_pretrained(tmp_path / "model")
    expected = embeddings(weights["reference"])[0]
    torch.save(expected, tmp_path / "expected.pt")
    torch.save(images(), tmp_path / "images.pt")
    script = (
        "import sys, torch, open_clip\n"
        "from open_clip.transformer import QuickGELU\n"
        "from cosegkit import LCCo\n"
        f"assert {TWIN!r} not in open_clip.list_models()\n"
        "m = LCCo.from_pretrained(sys.argv[1])\n"
        "acts = {type(x).__name__ for x in m.clip.model.modules() if isinstance(x, (QuickGELU, torch.nn.GELU))}\n"
        "e = m.clip.encode_images(torch.load(sys.argv[2]))\n"
        "print(sorted(acts), m.config['clip_model'], float((e - torch.load(sys.argv[3])).abs().max()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), str(tmp_path / "images.pt"), str(tmp_path / "expected.pt")],
        env=cli_env(), capture_output=True, text=True, timeout=300, check=True,
    ).stdout.split()  # fmt: skip
    assert out[:2] == ["['QuickGELU']", TWIN] and float(out[2]) < SAME


def test_zero_shot_on_openai_weights_equals_the_reference(weights) -> None:
    clip = FrozenClip.from_name(TINY_CLIP, weights["files"]["state dict"], classnames=CLASSNAMES)
    assert activations(clip.model) == {"QuickGELU"}
    x = images()
    ours, ref, gelu = (ZeroShotCoseg(c)(x) for c in (clip, weights["reference"], weights["gelu"]))
    assert (ours.probs - ref.probs).abs().max() < SAME
    assert (gelu.probs - ref.probs).abs().max() > APART  # the GELU build's masks are another CLIP's


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def zero_shot_segment(photos, out, model: str, file: Path, capsys) -> tuple[str, list[bytes]]:
    flags = ["--zero-shot", "--clip-model", model, "--clip-pretrained", str(file), "--device", "cpu",
             "--vocabulary", *CLASSNAMES, "--image-size", "32"]  # fmt: skip
    assert main(["segment", str(photos), "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    return printed, [p.read_bytes() for p in sorted(Path(out).glob("*.png"))]


def test_cli_zero_shot_segment_builds_quickgelu_from_an_openai_file(weights, photos, tmp_path, capsys) -> None:
    printed, masks = zero_shot_segment(photos, tmp_path / "a", TINY_CLIP, weights["files"]["state dict"], capsys)
    assert f"zero-shot: {TWIN} (" in printed
    # the reference: open_clip's format of the same weights, under the QuickGELU name
    _, reference = zero_shot_segment(photos, tmp_path / "b", TWIN, weights["files"]["open_clip"], capsys)
    assert len(masks) == 3 and masks == reference


def test_cli_train_builds_quickgelu_from_an_openai_file(weights, tmp_path) -> None:
    args = list(TINY_ARGS)
    args[args.index("--clip-pretrained") + 1] = str(weights["files"]["TorchScript"])
    run = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "cosegkit", "train", *args, "--steps", "1", "--eval-sets", "1", "--out", str(run)],
        env=cli_env(), capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    model = LCCo.from_pretrained(run / "model")
    assert model.config["clip_model"] == TWIN and activations(model.clip.model) == {"QuickGELU"}
    clip = model.clip
    clip.set_vocabulary(CLASSNAMES, weights["reference"].templates)  # the run's own are the synthetic world's
    assert gap(clip, weights["reference"]) < SAME


def test_cached_clip_outputs_are_keyed_by_the_architecture_built(weights) -> None:
    """Same weights, same name in the run's config, another activation: another cache."""
    from cosegkit.data import Group
    from cosegkit.engine import TrainConfig, class_targets, pseudo

    file = weights["files"]["open_clip"]
    gelu = FrozenClip.from_name(TINY_CLIP, file, classnames=CLASSNAMES)
    quick = FrozenClip.from_name(quick_gelu_architecture(TINY_CLIP), file, classnames=CLASSNAMES)
    assert gelu.weights_sha256() == quick.weights_sha256()
    config = TrainConfig(
        dataset="folder", root="photos", image_size=32, clip_model=TINY_CLIP, pseudo_masks="zero-shot"
    )
    groups = [Group("cats", ("photos/a.png",), ("photos/a_mask.png",))]
    keys = [class_targets.cache_key(config, clip, groups)[0] for clip in (gelu, quick)]
    assert keys[0] != keys[1]
    keys = [pseudo.cache_key(config, pseudo.build_zero_shot(config, clip))[0] for clip in (gelu, quick)]
    assert keys[0] != keys[1]
