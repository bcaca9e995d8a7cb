"""Fine-tuning from a trained model: --init-from (TrainConfig.init_from)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from cosegkit import LCCo
from cosegkit.clip import FrozenClip
from cosegkit.engine import TrainConfig, build_model, train
from cosegkit.engine.finetune import inherit_architecture, source_folder
from cosegkit.errors import CosegValueError
from tests.engine.test_trainer import TINY, assert_resume_is_exact, weights

SOURCE = dict(TINY, world_classes=6, steps=3, checkpoint_every=3, use_grouping=True, num_groups=4)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("source") / "run"
    train(TrainConfig(**SOURCE), run, progress=False)
    return run


def finetune_config(source, **overrides) -> TrainConfig:
    """A fine-tuning run on the synthetic world of another seed and size: other classes."""
    settings = dict(
        dataset="synthetic",
        world_classes=5,
        world_seed=3,
        image_size=32,
        set_size=2,
        batch_size=2,
        lr=1e-3,
        log_every=1,
        eval_set_size=2,
        device="cpu",
        steps=4,
        checkpoint_every=2,
        seed=7,
        extra={"eval_sets": 2},
        init_from=str(source),
    )
    return TrainConfig(**{**settings, **overrides})


def test_the_architecture_comes_from_the_source_and_the_rest_from_the_command(source_run) -> None:
    config = inherit_architecture(finetune_config(source_run))
    assert (config.encoder, config.decoder_channels, config.clip_model) == (
        "tu-test_convnext",
        [16] * 4,
        "coseg-test-tiny",
    )
    assert (config.heads, config.top_k, config.use_grouping, config.num_groups) == (2, 2, True, 4)
    assert (config.encoder_weights, config.clip_pretrained) == (None, None)  # the source's weights
    assert (config.steps, config.lr, config.world_classes, config.image_size, config.seed) == (4, 1e-3, 5, 32, 7)
    assert inherit_architecture(config) == config


def test_weights_load_except_the_class_indexed_mlp3_and_the_bank_is_rebuilt(source_run, caplog) -> None:
    config = finetune_config(source_run)
    source = LCCo.from_pretrained(source_run)
    with caplog.at_level(logging.INFO, logger="cosegkit.engine.finetune"):
        model = build_model(config)
    assert "text bank is rebuilt" in caplog.text and "regularization.mlp3" in caplog.text
    new_names, templates = inherit_architecture(config).vocabulary()
    assert list(model.clip.classnames) == new_names != list(source.clip.classnames)
    a, b = source.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    fresh = {k for k in a if k.startswith("regularization.mlp3.")}
    assert fresh and all(a[k].shape != b[k].shape for k in fresh if a[k].ndim)  # 6 classes -> 5
    assert all(torch.equal(a[k], b[k]) for k in a if k not in fresh)
    # the frozen CLIP is the source's, and its bank is the one a fresh CLIP builds for the new vocabulary
    assert model.clip.weights_sha256() == source.clip.weights_sha256()
    fresh_clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=new_names, templates=templates)
    fresh_clip.model.load_state_dict(source.clip.clip_state_dict())
    assert torch.equal(model.clip.text_bank, fresh_clip.text_bank)
    assert model.image_size == 32 and model.set_size == 2


def test_the_same_vocabulary_keeps_every_weight(source_run) -> None:
    config = finetune_config(source_run, world_classes=6, world_seed=0, image_size=32)
    model, source = build_model(config), LCCo.from_pretrained(source_run)
    a, b = source.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(model.clip.text_bank, source.clip.text_bank)


def test_a_finetuning_run_starts_at_step_0_from_the_source_and_trains(source_run, tmp_path, monkeypatch) -> None:
    run = tmp_path / "ft"
    seen = {}
    original = torch.optim.AdamW.step

    def first_step(self, *args, **kwargs):  # the model the first optimizer step starts from
        if "lrs" not in seen:
            seen["lrs"] = [g["lr"] for g in self.param_groups]
            seen["steps"] = [s.get("step") for s in self.state.values()]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", first_step)
    config = finetune_config(source_run)
    result = train(config, run, progress=False)
    assert result.steps == 4 and math.isfinite(result.last_loss)
    assert seen["lrs"] == [1e-3, 1e-3] and seen["steps"] == []  # a fresh optimizer at the full lr
    saved = json.loads((run / "config.json").read_text())
    assert saved["init_from"] == str(source_run) and saved["encoder"] == "tu-test_convnext"
    assert saved["use_grouping"] is True and saved["encoder_weights"] is None
    losses = [json.loads(line)["total"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4
    model = LCCo.from_pretrained(run)
    assert len(model.clip.classnames) == 5 and model.config["num_groups"] == 4
    source = load_file(str(source_run / "model" / "model.safetensors"))
    tuned = weights(run)
    assert any(not torch.equal(source[k], tuned[k]) for k in source if not k.startswith("regularization.mlp3."))


def test_the_loss_goes_down_from_the_source(source_run, tmp_path) -> None:
    config = finetune_config(source_run, steps=12, checkpoint_every=12, lr=3e-3, world_classes=4, world_objects=(1, 1))
    run = tmp_path / "ft"
    train(config, run, progress=False)
    losses = [json.loads(line)["total"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses


def test_a_resumed_finetuning_run_equals_an_uninterrupted_one(source_run, tmp_path) -> None:
    config = finetune_config(source_run)
    broken = assert_resume_is_exact(config, tmp_path)
    train(dataclasses.replace(config, steps=6), broken, resume=True, progress=False)  # and extended
    assert json.loads((broken / "config.json").read_text())["extensions"][0]["step"] == 4


def test_conflicting_flags_are_refused_by_name(source_run) -> None:
    with pytest.raises(
        CosegValueError, match=r"--encoder resnet18 \(the source's encoder: tu-test_convnext\).*drop these"
    ):
        inherit_architecture(finetune_config(source_run, encoder="resnet18"))
    with pytest.raises(CosegValueError, match=r"--no-regularization \(the source's use_regularization: True\)"):
        inherit_architecture(finetune_config(source_run, use_regularization=False))
    with pytest.raises(CosegValueError, match=r"--model ufo"):
        inherit_architecture(finetune_config(source_run, model="ufo"))
    with pytest.raises(CosegValueError, match=r"--encoder-weights w\.pt \(the weights are the source's\)"):
        inherit_architecture(finetune_config(source_run, encoder_weights="w.pt"))
    # the source's own values, given explicitly, are no conflict
    assert inherit_architecture(finetune_config(source_run, heads=2, num_groups=4)).heads == 2


def test_missing_and_unfinished_sources_say_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CosegValueError, match=r"--init-from 'runs/demo': no such folder here, and the hub did not"):
        source_folder("runs/demo")  # offline: not in the hub's cache either
    with pytest.raises(CosegValueError, match=r"--init-from '.*nowhere': no such folder, and not a hub name"):
        source_folder(str(tmp_path / "nowhere"))
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(
        CosegValueError, match=r"is a run folder whose run has not finished.*--resume\), then fine-tune"
    ):
        source_folder(str(unfinished))
    with pytest.raises(CosegValueError, match=r"not a model folder"):
        source_folder(str(tmp_path))
    with pytest.raises(CosegValueError, match="--init-from"):
        train(finetune_config(tmp_path / "nowhere"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_hub_name_is_fetched_as_from_pretrained_fetches_it(source_run, monkeypatch) -> None:
    calls = []

    def download(repo_id):
        calls.append(repo_id)
        return source_run / "model"

    monkeypatch.setattr(LCCo, "_download", staticmethod(download))
    config = inherit_architecture(finetune_config("org/lcco-tiny"))
    assert config.encoder == "tu-test_convnext" and calls == ["org/lcco-tiny"]
    assert config.init_from == "org/lcco-tiny"


def test_a_ufo_source_gets_a_new_head_for_new_classes(tmp_path, caplog) -> None:
    from cosegkit.models import UFO

    source = UFO(encoder_name="resnet18", encoder_weights=None, classnames=["a", "b", "c"], dim=16)
    folder = source.save_pretrained(tmp_path / "ufo")
    config = finetune_config(folder, world_classes=4)
    with caplog.at_level(logging.INFO, logger="cosegkit.engine.finetune"):
        model = build_model(config)
    assert "classifier" in caplog.text and "starts afresh" in caplog.text
    assert model.classifier.out_features == 4 and model.classnames == config.world().class_names
    a, b = source.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("classifier."))
    with pytest.raises(CosegValueError, match=r"--no-correspondence \(the source, a UFO, has no such setting\)"):
        inherit_architecture(finetune_config(folder, use_correspondence=False))
    # the same classes: the head is kept
    same = source_folder(str(UFO(encoder_name="resnet18", encoder_weights=None, classnames=config.world().class_names,
                                 dim=16).save_pretrained(tmp_path / "same")))  # fmt: skip
    kept = build_model(finetune_config(same, world_classes=4))
    assert torch.equal(kept.classifier.weight, UFO.from_pretrained(same).classifier.weight)


def test_a_ufo_run_fine_tunes_into_a_ufo_run(tmp_path) -> None:
    base = dict(model="ufo", encoder="resnet18", encoder_weights=None, ufo_dim=16, image_size=64, set_size=3,
                batch_size=2, world_classes=5, steps=2, checkpoint_every=2, log_every=1, device="cpu",
                eval_set_size=3, extra={"eval_sets": 2})  # fmt: skip
    train(TrainConfig(**base), tmp_path / "src", progress=False)
    config = TrainConfig(
        world_classes=7, world_seed=2, image_size=64, set_size=3, steps=2, device="cpu", eval_set_size=3,
        extra={"eval_sets": 2}, init_from=str(tmp_path / "src"),
    )  # fmt: skip
    result = train(config, tmp_path / "ft", progress=False)
    assert result.steps == 2 and math.isfinite(result.last_loss)
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (saved["model"], saved["encoder"], saved["ufo_dim"]) == ("ufo", "resnet18", 16)
    from cosegkit.models import UFO

    assert UFO.from_pretrained(tmp_path / "ft").classifier.out_features == 7
