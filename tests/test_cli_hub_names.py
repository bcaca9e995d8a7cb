"""Hub names on the command line: ``--model ORG/NAME[@REVISION]`` and ``--clip-pretrained ORG/NAME``.

Every flag that takes a trained model resolves a hub name once, through
:func:`cosegkit.hub.resolve_model_folder`, to the repository's local snapshot, and reads that
folder from then on. The hub is :class:`tests._hub.FakeHubApi` writing a hub cache that the real
``snapshot_download`` reads offline, or :class:`tests._hub.LocalHub`, a hub on localhost that
the real client downloads from.
"""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cosegkit.cli import main
from cosegkit.errors import HubError
from cosegkit.hub import hub_name, push_to_hub, resolve_model_folder
from tests._hub import FakeHubApi, LocalHub, http_error, offline_hub, point_client_at

REPO = "my-lab/lcco-tiny"
SIZES = [(40, 60), (50, 30), (33, 33)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two different tiny LCCo model folders (32 px, sets of 3), as save_pretrained writes them."""
    from cosegkit.testing import tiny_model

    root = tmp_path_factory.mktemp("models")
    return {name: tiny_model(seed=seed, image_size=32, set_size=3).save_pretrained(root / name)
            for name, seed in (("a", 0), ("b", 1))}  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHubApi:
    """The fake hub, writing a hub cache that the client reads offline, as after a download."""
    return offline_hub(tmp_path, monkeypatch)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A hub on localhost, and the real client pointed at it, online, with an empty cache."""
    with LocalHub() as hub:
        point_client_at(hub.url, tmp_path, monkeypatch)
        yield hub
        assert hub.unhandled == []


def _segment(model_flags: list[str], photos: Path, out: Path) -> dict[str, np.ndarray]:
    argv = ["segment", *model_flags, str(photos), "--out", str(out), "--device", "cpu", "--workers", "0"]
    assert main(argv) == 0
    return {p.name: np.array(Image.open(p)) for p in sorted(out.glob("p*.png"))}


def _same_masks(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == ["p0.png", "p1.png", "p2.png"] and a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def _count_downloads(monkeypatch) -> list[str]:
    """The repositories ``snapshot_download`` is asked for from now on (it still runs)."""
    import huggingface_hub

    calls: list[str] = []
    real = huggingface_hub.snapshot_download

    def counted(repo_id, *args, **kwargs):
        calls.append(repo_id)
        return real(repo_id, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", counted)
    return calls


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------- the hub name reads as the local folder
def test_the_cards_segment_line_gives_the_masks_of_the_local_folder(folders, photos, hub, tmp_path) -> None:
    push_to_hub(folders["a"], REPO, token=hub.token, api=hub)
    card = hub.files(REPO)["README.md"].decode()
    (line,) = [line for line in card.splitlines() if line.startswith("cosegkit segment")]
    argv = shlex.split(line)[1:]
    assert argv == ["segment", "--model", REPO, "photos/", "--out", "masks/"]  # the card's line, as printed

    from_hub = _segment(["--model", REPO], photos, tmp_path / "hub")
    local = _segment(["--model", str(folders["a"])], photos, tmp_path / "local")
    _same_masks(from_hub, local)
    other = _segment(["--model", str(folders["b"])], photos, tmp_path / "other")
    assert any(not np.array_equal(from_hub[n], other[n]) for n in other)  # the masks tell the models apart
    manifest = [json.loads(line) for line in (tmp_path / "hub" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 3


def test_evaluate_by_hub_name_scores_as_the_local_folder(folders, hub, tmp_path, monkeypatch, capsys) -> None:
    from cosegkit.data.synthetic import SyntheticWorld, write_folder_dataset

    push_to_hub(folders["a"], REPO, token=hub.token, api=hub)
    downloads = _count_downloads(monkeypatch)
    root = tmp_path / "data"
    groups = write_folder_dataset(SyntheticWorld(num_classes=5, image_size=32, seed=3), root, images_per_group=3)
    scores = {}
    for name, model in (("hub", REPO), ("local", str(folders["a"]))):
        scores[name] = tmp_path / f"{name}.json"
        argv = ["evaluate", "--model", model, "--data", f"folder={root}", "--classes", groups[0].name,
                groups[1].name, "--set-size", "3", "--device", "cpu", "--json", str(scores[name])]  # fmt: skip
        assert main(argv) == 0
    results = json.loads(scores["hub"].read_text())
    assert results == json.loads(scores["local"].read_text()) and results["folder"]["images"] == 6
    assert downloads == [REPO]  # resolved once: the config reads and the weights share one folder


def test_export_by_hub_name_takes_the_hub_models_sizes(hub, tmp_path, monkeypatch, capsys) -> None:
    from cosegkit.testing import tiny_model

    model = tiny_model(seed=2, image_size=48, set_size=2)
    model.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id=REPO, token=hub.token, api=hub)
    out = tmp_path / "m.pt2"
    downloads = _count_downloads(monkeypatch)
    assert main(["export", "--model", REPO, "--out", str(out)]) == 0
    assert downloads == [REPO]
    printed = capsys.readouterr().out
    assert "input (1, 2, 3, 48, 48)" in printed and str(hub.cache) in printed  # read from the snapshot
    program = torch.export.load(str(out))
    images = torch.rand(1, 2, 3, 48, 48)
    assert torch.allclose(program.module()(images), model.predict(images), atol=1e-5)


def test_segclip_by_hub_name_gives_the_masks_of_the_local_folder(photos, hub, tmp_path, capsys) -> None:
    from cosegkit.models import SegClip, SegClipConfig

    torch.manual_seed(0)
    config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2, first_stage_layer=1,
                           num_groups=4, context_length=8, text_width=32, text_layers=1, head_width=16,
                           mae_decoder=False)  # fmt: skip
    repo = "my-lab/segclip-tiny"
    folder = SegClip(config).save_pretrained(tmp_path / "segclip", push_to_hub=True, repo_id=repo,
                                             token=hub.token, api=hub)  # fmt: skip
    flags = ["--zero-shot", "--method", "segclip", "--image-size", "32", "--set-size", "3",
             "--vocabulary", "cat", "dog", "car", "--clip-pretrained"]  # fmt: skip
    from_hub = _segment([*flags, repo], photos, tmp_path / "hub")
    assert f"zero-shot: SegCLIP ({repo})" in capsys.readouterr().out
    _same_masks(from_hub, _segment([*flags, str(folder)], photos, tmp_path / "local"))


# ---------------------------------------------------------------------- the real client, online to localhost
def test_real_client_downloads_a_hub_name_not_in_the_cache(folders, photos, local_hub, tmp_path) -> None:
    push_to_hub(folders["a"], REPO, token=local_hub.token)
    push_to_hub(folders["b"], REPO, token=local_hub.token, revision="dev")
    assert not (tmp_path / "hf-cache" / "models--my-lab--lcco-tiny").exists()

    from_hub = _segment(["--model", REPO], photos, tmp_path / "hub")
    _same_masks(from_hub, _segment(["--model", str(folders["a"])], photos, tmp_path / "local"))
    downloaded = {path for method, path in local_hub.requests if method == "GET" and "/resolve/" in path}
    assert f"/{REPO}/resolve/{local_hub.repos[REPO]['branches']['main']}/model.safetensors" in downloaded
    assert not any(p.endswith("README.md") for p in downloaded)  # only what loading reads

    snapshot = resolve_model_folder(f"{REPO}@dev")  # a branch: that commit's snapshot
    assert snapshot.parent.name == "snapshots" and snapshot.name == local_hub.repos[REPO]["branches"]["dev"]
    assert (snapshot / "model.safetensors").read_bytes() == (folders["b"] / "model.safetensors").read_bytes()
    _same_masks(
        _segment(["--model", f"{REPO}@dev"], photos, tmp_path / "dev"),
        _segment(["--model", str(folders["b"])], photos, tmp_path / "local-b"),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("my-lab/absent", "--model 'my-lab/absent': no local folder of that name, and no model repository "
                          "my-lab/absent on the hub that this token may read"),
        (f"{REPO}@nope", f"--model '{REPO}@nope': the hub repository {REPO} has no revision 'nope'"),
    ],
)  # fmt: skip
def test_real_client_a_name_the_hub_does_not_have_gives_one_line(spec, message, folders, local_hub, tmp_path,
                                                                 monkeypatch, capsys) -> None:  # fmt: skip
    push_to_hub(folders["a"], REPO, token=local_hub.token)
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", spec, "--out", "never.pt2"]) == 2
    err = _one_line(capsys)
    assert message in err and ("hf auth login" in err or "branches, tags or commits" in err)
    assert not Path("never.pt2").exists()


def test_no_network_gives_one_line(tmp_path, monkeypatch, photos, capsys) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    point_client_at(f"http://127.0.0.1:{port}", tmp_path, monkeypatch)
    assert main(["segment", "--model", REPO, str(photos), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = _one_line(capsys)
    assert f"--model '{REPO}': no local folder of that name, and the hub (http://127.0.0.1:{port}) could not " in err
    assert "check the network (or HF_ENDPOINT) and retry, or pass a local model folder" in err


# ---------------------------------------------------------------------- which reading wins, and the errors
@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "--model", "my-lab/absent", "photos/", "--out", "masks/"],
        ["evaluate", "--model", "my-lab/absent", "--data", "synthetic"],
        ["export", "--model", "my-lab/absent", "--out", "m.pt2"],
        ["segment", "--zero-shot", "--method", "segclip", "--clip-pretrained", "my-lab/absent", "photos/",
         "--out", "masks/"],
    ],
)  # fmt: skip
def test_offline_and_not_in_the_cache_gives_one_line_naming_the_flag(argv, photos, hub, tmp_path, monkeypatch,
                                                                     capsys) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    Path("photos").symlink_to(photos)
    assert main(argv) == 2
    err = _one_line(capsys)
    flag = "--clip-pretrained" if "--clip-pretrained" in argv else "--model"
    assert err.startswith(f"cosegkit {argv[0]}: error: {flag} 'my-lab/absent': no local folder of that name, and ")
    assert f"HF_HUB_OFFLINE is set while the hub cache ({hub.cache}) holds no copy of my-lab/absent" in err
    assert "unset HF_HUB_OFFLINE to download it once, or pass a local model folder" in err
    assert not Path("masks").exists()


def test_a_local_folder_wins_over_the_hub_name_it_spells(folders, photos, hub, tmp_path, monkeypatch) -> None:
    push_to_hub(folders["a"], REPO, token=hub.token, api=hub)  # the hub holds model a ...
    monkeypatch.chdir(tmp_path)
    from cosegkit.testing import tiny_model

    tiny_model(seed=1, image_size=32, set_size=3).save_pretrained(Path(REPO))  # ... ./my-lab/lcco-tiny holds b

    def no_hub(*args, **kwargs):
        raise AssertionError("an existing local path must not reach the hub")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_hub)
    assert resolve_model_folder(REPO) == Path(REPO)
    _same_masks(
        _segment(["--model", REPO], photos, tmp_path / "named"),
        _segment(["--model", str(folders["b"])], photos, tmp_path / "b"),
    )


@pytest.mark.parametrize("spec", ["runs/pascal/model", "./pascal", "pascal", "my-lab/x@", "my-lab/bad--name"])
def test_neither_a_path_nor_a_hub_name_gives_todays_error(spec, photos, tmp_path, monkeypatch, capsys) -> None:
    def no_hub(*args, **kwargs):
        raise AssertionError("not a hub name: the hub must not be asked")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "--model", spec, str(photos), "--out", "masks"]) == 2
    err = _one_line(capsys)
    assert f"--model {spec!r} is not a model folder (no config.json); pass --model" in err
    assert "or the ORG/NAME of a model on the hub" in err


def test_segclip_checkpoint_path_is_not_taken_for_a_hub_name(photos, hub, tmp_path, capsys) -> None:
    argv = ["segment", "--zero-shot", "--method", "segclip", "--clip-pretrained", "weights/segclip.bin",
            str(photos), "--out", str(tmp_path / "masks")]  # fmt: skip
    assert main(argv) == 2
    assert "--clip-pretrained 'weights/segclip.bin': could not read SegCLIP checkpoint" in _one_line(capsys)


def test_a_hub_repository_without_a_model_gives_one_line(hub, tmp_path, capsys) -> None:
    hub.create_repo("my-lab/empty", token=hub.token)  # only the hub's first commit: .gitattributes
    assert main(["export", "--model", "my-lab/empty", "--out", str(tmp_path / "m.pt2")]) == 2
    err = _one_line(capsys)
    assert "--model 'my-lab/empty': the hub repository my-lab/empty holds no cosegkit model (no config.json)" in err


def test_a_failing_hub_is_named_with_its_status(monkeypatch) -> None:
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def failing(*args, **kwargs):  # what snapshot_download raises when the hub answers 500 and nothing is cached
        try:
            raise http_error(500, "GET", f"https://huggingface.co/api/models/{REPO}/revision/main", "boom")
        except Exception as err:
            raise LocalEntryNotFoundError(f"Got: {type(err).__name__}: {err}") from err

    monkeypatch.setattr("huggingface_hub.snapshot_download", failing)
    with pytest.raises(HubError) as info:
        resolve_model_folder(REPO, "--clip-pretrained")
    message = str(info.value)
    assert (
        message.startswith(f"--clip-pretrained '{REPO}': the hub (")
        and f"answered 500 to the download of {REPO}" in message
    )
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("my-lab/lcco", ("my-lab/lcco", None)),
        ("my-lab/lcco@dev", ("my-lab/lcco", "dev")),
        ("my-lab/lcco@refs/pr/1", ("my-lab/lcco", "refs/pr/1")),
        ("my-lab/lcco@" + "a" * 40, ("my-lab/lcco", "a" * 40)),
        ("lcco", None),
        ("runs/pascal/model", None),
        ("../runs/x", None),
        ("/abs/path", None),
        ("my-lab/lcco@", None),
        ("my-lab/lcco@a b", None),
        ("weights/segclip.bin", None),
        ("weights/model.safetensors", None),
        ("my-lab/x--y", None),
    ],
)
def test_hub_name_reads_org_name_and_revision(spec, expected) -> None:
    assert hub_name(spec) == expected


@pytest.mark.parametrize("command", ["segment", "evaluate", "export"])
def test_model_help_names_the_hub(command, capsys) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "hub name ORG/NAME[@REVISION]" in " ".join(out.split()) and "--model my-lab/lcco-pascal" in out
