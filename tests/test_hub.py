"""Pushing a model to the Hugging Face hub and loading it back by name, offline.

The hub is :class:`tests._hub.FakeHubApi`: the methods of ``HfApi`` that a push calls, each call
bound to the real method's signature, writing the pushed files into a folder laid out as the hub
cache. Loading then goes through the real ``snapshot_download`` with ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cosegkit import LCCo
from cosegkit.cli import main
from cosegkit.errors import CosegValueError, HubError
from cosegkit.hub import hub_api, model_card, push_to_hub
from tests._hub import FakeHubApi, LocalHub, http_error, offline_hub, point_client_at
from tests.engine.test_trainer import TINY_ARGS

REPO = "my-lab/lcco-tiny"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run of ``cosegkit train`` (4 steps, tiny models): config.json, eval.json and model/."""
    run = tmp_path_factory.mktemp("hub") / "run"
    assert main(["train", *TINY_ARGS, "--steps", "4", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of the trained run that a test may add files to."""
    return Path(shutil.copytree(trained_run, tmp_path / "runs" / "lcco"))


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHubApi:
    """The fake hub, and the hub cache pointed at it with the client offline, as for a reader of the repository."""
    return offline_hub(tmp_path, monkeypatch)


def _png(path: Path, colour: str = "red") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) > 0
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------------- the round trip
def test_push_then_from_pretrained_by_name_gives_the_same_model(run, hub) -> None:
    report = push_to_hub(run, REPO, token=hub.token, api=hub)
    assert report.commit_url.startswith(f"https://huggingface.co/{REPO}/commit/")
    assert report.folder is None and report.revision == "main"

    snapshot = LCCo._download(REPO)  # the real snapshot_download, offline, from the cache the fake hub wrote
    assert hub.cache in snapshot.parents
    loaded = LCCo.from_pretrained(REPO)
    local = LCCo.from_pretrained(run)
    _same_weights(loaded, local)
    for key, value in local.clip.clip_state_dict().items():
        assert torch.equal(loaded.clip.clip_state_dict()[key], value), key
    assert loaded.config == local.config and loaded.image_size == 32 and loaded.set_size == 3
    images = torch.rand(1, 3, 3, 32, 32)
    assert torch.equal(loaded.predict(images), local.predict(images))

    pushed = hub.files(REPO)
    model = run / "model"
    for path in model.rglob("*"):
        if path.is_file():
            assert pushed[path.relative_to(model).as_posix()] == path.read_bytes()
    assert pushed["training_config.json"] == (run / "config.json").read_bytes()
    assert pushed["eval.json"] == (run / "eval.json").read_bytes()
    assert "README.md" in pushed and ".gitattributes" in pushed  # the card, and the hub's first commit


@pytest.mark.parametrize("architecture", ["lcco", "ufo", "segclip"])
def test_save_pretrained_push_to_hub_round_trip(architecture, tmp_path, hub) -> None:
    from cosegkit.models import SegClip, SegClipConfig, load_model
    from cosegkit.models.ufo import UFO
    from cosegkit.testing import tiny_model

    torch.manual_seed(0)
    if architecture == "lcco":
        model = tiny_model()
    elif architecture == "ufo":
        model = UFO(encoder_name="resnet18", encoder_weights=None, classnames=["cat", "dog"], dim=16, mlp_dim=24)
    else:
        config = SegClipConfig(embed_dim=16, image_size=32, patch_size=8, width=32, layers=2, first_stage_layer=1,
                               num_groups=4, context_length=8, text_width=32, text_layers=1, head_width=16,
                               mae_decoder=False)  # fmt: skip
        model = SegClip(config)
    repo = f"my-lab/{architecture}-tiny"
    folder = model.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id=repo, token=hub.token, api=hub)
    assert (folder / "model.safetensors").is_file()  # written locally too

    loaded = SegClip.from_pretrained(repo) if architecture == "segclip" else load_model(repo)
    assert type(loaded) is type(model)
    _same_weights(loaded, model)
    card = hub.files(repo)["README.md"].decode()
    assert _front_matter(card)["tags"][3] == architecture
    assert "outside a `cosegkit train` run" in card and "No held-out evaluation" in card
    flag = "--clip-pretrained" if architecture == "segclip" else "--model"
    assert f"On the command line, `{flag}` takes the same name" in card and "hf download" not in card
    assert (
        f"cosegkit segment {'--zero-shot --method segclip ' if architecture == 'segclip' else ''}{flag} {repo} " in card
    )


def test_save_pretrained_checks_its_hub_arguments_before_writing(tmp_path) -> None:
    from cosegkit.testing import tiny_model

    model = tiny_model()
    with pytest.raises(CosegValueError, match=r"push_to_hub=True needs repo_id='ORG/NAME'"):
        model.save_pretrained(tmp_path / "a", push_to_hub=True)
    with pytest.raises(CosegValueError, match=r"'lcco' is not a hub model repository name"):
        model.save_pretrained(tmp_path / "b", push_to_hub=True, repo_id="lcco")
    with pytest.raises(CosegValueError, match=r"repo_id='my-lab/x' is given but push_to_hub is False"):
        model.save_pretrained(tmp_path / "c", repo_id="my-lab/x")
    with pytest.raises(CosegValueError, match=r"private is given but push_to_hub is False"):
        model.save_pretrained(tmp_path / "d", private=True)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_the_stand_in_refuses_what_the_real_client_refuses(tmp_path) -> None:
    hub = FakeHubApi(tmp_path)
    with pytest.raises(TypeError):  # HfApi.upload_folder has no argument "folder"
        hub.upload_folder(repo_id=REPO, folder=str(tmp_path))
    with pytest.raises(TypeError):  # and takes its arguments by keyword only
        hub.upload_folder(REPO, str(tmp_path))
    with pytest.raises(TypeError):
        hub.create_repo(REPO, exists_ok=True)


def test_the_production_client_is_huggingface_hubs() -> None:
    from huggingface_hub import HfApi

    assert type(hub_api()) is HfApi


# ---------------------------------------------------------------------- the card
def test_card_holds_the_config_the_eval_table_and_the_figure(run, hub) -> None:
    from huggingface_hub import ModelCard

    _png(run / "figure.png")
    photos = {"P": 0.9123, "J": 0.6789, "images": 20, "preset": "ufo", "per_group": {}}
    (run / "eval_photos.json").write_text(json.dumps(photos))
    push_to_hub(run, REPO, token=hub.token, api=hub, license="mit")
    pushed = hub.files(REPO)
    card = pushed["README.md"].decode()

    meta = _front_matter(card)
    assert meta["library_name"] == "cosegkit" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert {"image-segmentation", "co-segmentation", "lcco"} <= set(meta["tags"])
    evaluation = json.loads((run / "eval.json").read_text())
    results = meta["model-index"][0]["results"]
    assert [r["metrics"][1]["value"] for r in results] == [round(100 * evaluation["J"], 2), 67.89]
    assert [r["metrics"][0]["value"] for r in results] == [round(100 * evaluation["P"], 2), 91.23]
    parsed = ModelCard(card).data  # the hub's own reader of the front matter
    assert parsed.library_name == "cosegkit"
    assert [(e.metric_type, e.metric_value) for e in parsed.eval_results][:2] == [
        ("accuracy", round(100 * evaluation["P"], 2)),
        ("jaccard", round(100 * evaluation["J"], 2)),
    ]

    assert f"| {100 * evaluation['P']:.2f} | {100 * evaluation['J']:.2f} | {evaluation['images']} | `ssnm` |" in card
    assert "| 91.23 | 67.89 | 20 | `ufo` |" in card and "min(mean + std, 0.5)" in card
    config = json.loads(card.split("```json\n")[1].split("\n```")[0])
    assert config == json.loads((run / "config.json").read_text())
    assert "**synthetic**" in card and "4 steps of 2 sets of 3 images at 32 px" in card
    assert "![figure.png](figure.png)" in card and pushed["figure.png"] == (run / "figure.png").read_bytes()
    assert pushed["eval_photos.json"] == (run / "eval_photos.json").read_bytes()
    assert f'LCCo.from_pretrained("{REPO}")' in card and "`coseg-test-tiny`" in card
    assert "| CLIP regularization (eq. 6-8) | on |" in card and "| trained set size | 3 |" in card
    assert "Lending {CLIP} to Co-Segmentation" in card and "Duan, Xin and Yang, Yan" in card


def test_card_figure_defaults_to_the_run_then_the_folder_around_it(run, tmp_path) -> None:
    assert "No figure was pushed" in model_card(run / "model", REPO)
    _png(run.parent / "figure.png")  # a demo's figure beside its runs
    assert "![figure.png](figure.png)" in model_card(run / "model", REPO, figures=["figure.png"])
    out = tmp_path / "dry"
    report = push_to_hub(run, REPO, dry_run_to=out)
    assert "figure.png" in report.files and "![figure.png](figure.png)" in (out / "README.md").read_text()
    _png(run / "curves.png", "blue")  # the run's own figure wins over the folder around it
    report = push_to_hub(run, REPO, dry_run_to=tmp_path / "dry2")
    assert "curves.png" in report.files and "figure.png" not in report.files
    report = push_to_hub(run, REPO, figures=[], dry_run_to=tmp_path / "dry3")
    assert not any(name.endswith(".png") for name in report.files)
    assert "No figure was pushed" in (tmp_path / "dry3" / "README.md").read_text()


def test_card_of_a_model_folder_without_a_run(tmp_path) -> None:
    from cosegkit.testing import tiny_model

    folder = tiny_model(use_interaction=False, use_regularization=False).save_pretrained(tmp_path / "model")
    card = model_card(folder, REPO)
    assert "model-index" not in _front_matter(card)
    assert "| CLIP | none (both CLIP modules off) |" in card and "| CLIP interaction (eq. 3-5) | off |" in card
    assert "settings are not recorded here" in card and "No held-out evaluation" in card


# ---------------------------------------------------------------------- the command line
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_push_end_to_end(run, hub, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("cosegkit.hub.hub_api", lambda: hub)
    figure = _png(tmp_path / "plots" / "masks.png")
    argv = ["push", "--model", str(run), "--repo", REPO, "--token", hub.token, "--private", "--branch", "dev",
            "--commit-message", "tiny run", "--figure", str(figure), "--license", "cc-by-4.0"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"to {REPO} (dev): https://huggingface.co/{REPO}/commit/" in out and "  model.safetensors" in out

    assert hub.private[REPO] is True
    assert set(hub.files(REPO, "main")) == {".gitattributes"}  # the branch got the files, main did not
    pushed = hub.files(REPO, "dev")
    assert pushed["masks.png"] == figure.read_bytes() and "![masks.png](masks.png)" in pushed["README.md"].decode()
    assert _front_matter(pushed["README.md"].decode())["license"] == "cc-by-4.0"
    ((_, upload),) = [call for call in hub.calls if call[0] == "upload_folder"]
    assert upload["commit_message"] == "tiny run" and upload["revision"] == "dev" and upload["token"] == hub.token

    monkeypatch.setenv("HF_TOKEN", hub.token)  # the usual token resolution, without --token
    assert main(["push", "--model", str(run / "model"), "--repo", REPO]) == 0
    assert (
        hub.calls[-1][1]["token"] == hub.token
        and hub.calls[-1][1]["commit_message"] == "Upload LCCo model with cosegkit"
    )
    _same_weights(LCCo.from_pretrained(REPO), LCCo.from_pretrained(run))


def test_cli_push_dry_run_writes_the_folder_and_uploads_nothing(run, tmp_path, monkeypatch, capsys) -> None:
    def no_hub():
        raise AssertionError("a dry run must not reach the hub")

    monkeypatch.setattr("cosegkit.hub.hub_api", no_hub)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "dry"
    assert main(["push", "--model", str(run), "--repo", REPO, "--dry-run", "--out", str(out)]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "clip.safetensors", "config.json", "eval.json", "model.safetensors",
        "open_clip_config/coseg-test-tiny.json", "training_config.json",
    ]  # fmt: skip
    assert (out / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    assert main(["push", "--model", str(run), "--repo", REPO, "--dry-run", "--out", str(out)]) == 2
    assert "is not an empty folder" in _one_line(capsys)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--repo", "lcco-tiny"], "--repo 'lcco-tiny' is not a hub model repository name: expected ORG/NAME"),
        (["--repo", "my-lab/bad--name"], "--repo 'my-lab/bad--name' is not a hub model repository name"),
        (["--repo", "a/b/c"], "expected ORG/NAME"),
        (["--dry-run"], "pass --out"),
        (["--out", "somewhere"], "pass --dry-run too"),
        (["--figure", "/no/such.png"], "--figure '/no/such.png': no such file"),
    ],
)
def test_cli_push_bad_arguments_give_one_line(extra, message, run, capsys) -> None:
    argv = ["push", "--model", str(run), "--repo", REPO, *extra]
    assert main(argv) == 2
    assert message in _one_line(capsys)


def test_cli_push_refuses_what_is_not_a_model_folder(run, tmp_path, capsys) -> None:
    assert main(["push", "--model", str(tmp_path / "nothing"), "--repo", REPO]) == 2
    assert "--model" in _one_line(capsys)
    text = run / "notes.txt"
    text.write_text("x")
    assert main(["push", "--model", str(run), "--repo", REPO, "--figure", str(text)]) == 2
    assert "is not an image the hub shows in a card" in _one_line(capsys)
    (run / "model" / "model.safetensors").unlink()
    assert main(["push", "--model", str(run), "--repo", REPO]) == 2
    assert "model.safetensors missing" in _one_line(capsys)
    assert main(["push", "--model", str(run / "config.json"), "--repo", REPO]) == 2
    assert "is not a model folder" in _one_line(capsys)


def test_cli_push_without_a_token_names_the_login(run, tmp_path, monkeypatch, capsys) -> None:
    import huggingface_hub.constants as constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_ID_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    hub = FakeHubApi(tmp_path / "cache")
    monkeypatch.setattr("cosegkit.hub.hub_api", lambda: hub)
    assert main(["push", "--model", str(run), "--repo", REPO]) == 1
    err = _one_line(capsys)
    assert "not logged in" in err and "hf auth login" in err and "--token" in err
    assert hub.calls == []
    with pytest.raises(HubError, match="not logged in"):
        push_to_hub(run, REPO, api=hub)


def test_cli_push_with_a_token_the_hub_refuses(run, hub, monkeypatch, capsys) -> None:
    monkeypatch.setattr("cosegkit.hub.hub_api", lambda: hub)
    assert main(["push", "--model", str(run), "--repo", REPO, "--token", "hf_wrong"]) == 1
    err = _one_line(capsys)
    assert "refused the token (401 Unauthorized)" in err and "hf auth login" in err and "--token" in err


def test_push_turns_the_real_clients_errors_into_one_line(run, monkeypatch) -> None:
    """The production client, offline: no request leaves, and the error says why in one line."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE is set; unset it to push") as info:
        push_to_hub(run, REPO, token="hf_any")
    assert len(str(info.value).splitlines()) == 1


# ---------------------------------------------------------------------- the real client, over HTTP
@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A hub on localhost, and the real huggingface_hub client pointed at it, online, with its own cache."""
    with LocalHub() as hub:
        point_client_at(hub.url, tmp_path, monkeypatch)
        yield hub
        assert hub.unhandled == []  # every request the real client made is one LocalHub implements


def test_real_client_pushes_and_from_pretrained_downloads_over_http(run, local_hub, tmp_path) -> None:
    """HfApi.create_repo and upload_folder, then snapshot_download: the real client end to end, against LocalHub."""
    _png(run / "figure.png")
    report = push_to_hub(run, REPO, token=local_hub.token)  # the production client: hub_api()
    assert report.commit_url.startswith(f"{local_hub.url}/{REPO}/commit/")
    pushed = local_hub.files(REPO)
    assert pushed["model.safetensors"] == (run / "model" / "model.safetensors").read_bytes()
    assert pushed["figure.png"] == (run / "figure.png").read_bytes()
    assert local_hub.validated == [pushed["README.md"].decode()]  # the client had the card's metadata checked

    loaded = LCCo.from_pretrained(REPO)
    assert Path(tmp_path / "hf-cache") in LCCo._download(REPO).parents
    _same_weights(loaded, LCCo.from_pretrained(run))
    images = torch.rand(1, 3, 3, 32, 32)
    assert torch.equal(loaded.predict(images), LCCo.from_pretrained(run).predict(images))
    downloaded = {path for method, path in local_hub.requests if method == "GET" and "/resolve/" in path}
    assert not any(p.endswith(("README.md", ".png")) for p in downloaded)  # only what loading needs


def test_real_client_cli_push_to_a_private_branch_over_http(run, local_hub, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    assert main(["push", "--model", str(run), "--repo", REPO, "--private", "--branch", "dev"]) == 0
    assert local_hub.repos[REPO]["private"] is True
    assert set(local_hub.files(REPO, "main")) == {".gitattributes"} and "README.md" in local_hub.files(REPO, "dev")
    assert "(dev)" in capsys.readouterr().out


def test_real_client_errors_become_one_line(run, local_hub, capsys) -> None:
    assert main(["push", "--model", str(run), "--repo", REPO, "--token", "hf_wrong"]) == 1
    err = _one_line(capsys)
    assert "refused the token (401 Unauthorized)" in err and "hf auth login" in err and "--token" in err


def test_push_help_has_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "cosegkit push --model runs/pascal --repo my-lab/lcco-pascal" in out
    for flag in ("--private", "--token", "--revision", "--branch", "--commit-message", "--figure", "--dry-run"):
        assert flag in out


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (lambda: http_error(403, "POST", "https://huggingface.co/api/repos/create", "no write access"),
         "the token may not create the repository my-lab/lcco-tiny (403 Forbidden): use a token with write access to 'my-lab'"),
        (lambda: http_error(500, "POST", "https://huggingface.co/api/repos/create", "boom"),
         "the hub answered 500 to create the repository my-lab/lcco-tiny"),
        (lambda: ConnectionError("Name or service not known\nmore detail"),
         "could not create the repository my-lab/lcco-tiny (ConnectionError: Name or service not known); check the network"),
    ],
)  # fmt: skip
def test_push_names_what_the_hub_answered_in_one_line(error, message, run, tmp_path) -> None:
    class Refusing(FakeHubApi):
        def create_repo(self, *args, **kwargs):
            self._bind("create_repo", *args, **kwargs)
            raise error()

    with pytest.raises(HubError) as info:
        push_to_hub(run, REPO, token="hf_any", api=Refusing(tmp_path))
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1
