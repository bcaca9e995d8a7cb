"""SegCLIP's pre-training from captions alone: cache key, files, data stream, loss switches, no masks, CLI."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F

from cosegkit.cli import main
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.engine import pretrain, segclip_pretrain
from cosegkit.engine.pretrain import ClipRecipe, pretrain_clip
from cosegkit.engine.segclip_pretrain import (
    SEGCLIP_COMPOSITE,
    SEGCLIP_COMPOSITE_RECIPE,
    SEGCLIP_SYNTHETIC_CONFIG,
    SEGCLIP_SYNTHETIC_RECIPE,
    SegClipRecipe,
    contrastive_loss,
    pretrain_segclip,
    segclip_zero_shot_accuracy,
)
from cosegkit.errors import CosegValueError
from cosegkit.models.segclip import SegClip

TINY = SegClipRecipe(steps=2, batch_size=4)


@pytest.fixture
def world() -> SyntheticWorld:
    return SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COSEGKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_presets_have_the_plain_clips_budgets_and_sizes() -> None:
    synthetic = pretrain.ClipPretrainConfig().recipe()
    for segclip, clip in ((SEGCLIP_SYNTHETIC_RECIPE, synthetic), (SEGCLIP_COMPOSITE_RECIPE, pretrain.COMPOSITE_RECIPE)):
        assert (segclip.steps, segclip.batch_size, segclip.weight_decay, segclip.seed) == (
            clip.steps,
            clip.batch_size,
            clip.weight_decay,
            clip.seed,
        )
    # the learning rate is each method's own, chosen on a development seed: the composite ViT
    # stayed at chance at the ResNet CLIP's 2e-3
    assert (SEGCLIP_SYNTHETIC_RECIPE.lr, SEGCLIP_COMPOSITE_RECIPE.lr) == (synthetic.lr, 5e-4)
    assert SEGCLIP_SYNTHETIC_RECIPE.reconstruction_weight == SEGCLIP_COMPOSITE_RECIPE.reconstruction_weight == 0.0
    assert (SEGCLIP_SYNTHETIC_RECIPE.steps, SEGCLIP_COMPOSITE_RECIPE.steps) == (600, 2000)
    vision, text = pretrain.SYNTHETIC_CLIP_CONFIG["vision_cfg"], pretrain.SYNTHETIC_CLIP_CONFIG["text_cfg"]
    c = SEGCLIP_SYNTHETIC_CONFIG
    assert (c.image_size, c.patch_size, c.width, c.layers, c.head_width) == (
        vision["image_size"],
        vision["patch_size"],
        vision["width"],
        vision["layers"],
        vision["head_width"],
    )
    assert (c.text_width, c.text_layers, c.text_heads, c.context_length, c.embed_dim) == (
        text["width"],
        text["layers"],
        text["heads"],
        text["context_length"],
        pretrain.SYNTHETIC_CLIP_CONFIG["embed_dim"],
    )
    assert (c.first_stage_layer, c.num_groups, c.cross_layers, c.mae_decoder, c.decoder_width) == (2, 8, 2, True, 48)
    assert SEGCLIP_COMPOSITE_RECIPE.architecture == SEGCLIP_COMPOSITE


def test_the_key_changes_with_every_recipe_field_and_the_world(world) -> None:
    other = {
        "architecture": SEGCLIP_COMPOSITE,
        "steps": 3,
        "batch_size": 8,
        "lr": 1e-3,
        "weight_decay": 0.2,
        "seed": 1,
        "superpixel_weight": 0.5,
        "reconstruction_weight": 0.0,
        "mask_ratio": 0.5,
    }
    assert set(other) == {f.name for f in fields(SegClipRecipe)}
    key = TINY.key(world)
    assert key == replace(TINY).key(world) and len(key) == 16
    keys = {name: replace(TINY, **{name: value}).key(world) for name, value in other.items()}
    keys["world"] = TINY.key(SyntheticWorld(num_classes=3, image_size=32, objects_per_image=1, seed=1))
    assert key not in keys.values() and len(set(keys.values())) == len(keys), keys


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "ViT-B-16"}, "unknown SegCLIP architecture"),
        ({"steps": 0}, "SegClipRecipe.steps must be an int >= 1, got 0"),
        ({"batch_size": 1}, "SegClipRecipe.batch_size must be an int >= 2, got 1"),
        ({"steps": 2.0}, "SegClipRecipe.steps must be an int"),
        ({"seed": True}, "SegClipRecipe.seed must be an int"),
        ({"lr": 0.0}, "SegClipRecipe.lr must be > 0"),
        ({"lr": float("nan")}, "SegClipRecipe.lr must be a finite number"),
        ({"weight_decay": -0.1}, "SegClipRecipe.weight_decay must be >= 0"),
        ({"superpixel_weight": -1.0}, "SegClipRecipe.superpixel_weight must be >= 0"),
        ({"reconstruction_weight": float("inf")}, "SegClipRecipe.reconstruction_weight must be a finite number"),
        ({"mask_ratio": 0.0}, "SegClipRecipe.mask_ratio must lie in (0, 1)"),
        ({"mask_ratio": "0.5"}, "SegClipRecipe.mask_ratio must be a finite number"),
    ],
)
def test_bad_recipe_values_are_refused(change, message) -> None:
    with pytest.raises(CosegValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SegClipRecipe(**change)


def test_a_two_step_run_writes_a_loadable_folder_and_is_cached(world, cache) -> None:
    calls = []
    folder = pretrain_segclip(world, TINY, progress=lambda *args: calls.append(args))
    assert folder == cache / "segclip" / f"segclip-synthetic-{TINY.key(world)}-threads{torch.get_num_threads()}"
    assert [(s, n) for s, n, _ in calls] == [(1, 2), (2, 2)]
    model = SegClip.from_pretrained(folder)
    assert model.config == SEGCLIP_SYNTHETIC_CONFIG
    record = json.loads((folder / "pretrain.json").read_text())
    assert record["recipe"]["steps"] == 2 and record["world"]["fingerprint"] == world.fingerprint()
    assert record["config"]["num_groups"] == 8 and record["train_seconds"] >= 0
    assert record["final_losses"]["total"] == pytest.approx(calls[-1][2], abs=1e-5)
    # the saved weights are the trained ones: not the initialisation
    torch.manual_seed(TINY.seed)
    fresh = SegClip(SEGCLIP_SYNTHETIC_CONFIG)
    assert not torch.equal(fresh.visual.grouping.semantic_center, model.visual.grouping.semantic_center)
    assert not torch.equal(fresh.text_projection, model.text_projection)
    # cached: no training the second time; cache=False trains again and replaces the folder
    again = []
    assert pretrain_segclip(world, TINY, progress=lambda *args: again.append(args)) == folder and again == []
    assert pretrain_segclip(world, TINY, cache=False, progress=lambda *args: again.append(args)) == folder
    assert len(again) == 2
    assert [p.name for p in (cache / "segclip").iterdir()] == [folder.name]


def test_an_interrupted_run_leaves_no_partial_folder(world, cache, monkeypatch) -> None:
    def stop(step, steps, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_segclip(world, TINY, progress=stop)
    assert not (cache / "segclip").exists() or list((cache / "segclip").iterdir()) == []

    def half_written(self, directory):
        (directory / "model.safetensors").parent.mkdir(parents=True, exist_ok=True)
        (directory / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(SegClip, "save_pretrained", half_written)
    with pytest.raises(KeyboardInterrupt):
        pretrain_segclip(world, TINY)
    assert list((cache / "segclip").iterdir()) == []


def test_it_trains_on_exactly_the_pairs_pretrain_clip_draws(world, monkeypatch) -> None:
    seen: dict[str, list] = {"clip": [], "segclip": []}
    real = pretrain._pairs

    def recorder(name):
        def pairs(w, count, seed):
            images, captions = real(w, count, seed)
            seen[name].append((seed, images.clone(), list(captions)))
            return images, captions

        return pairs

    monkeypatch.setattr(pretrain, "_pairs", recorder("clip"))
    monkeypatch.setattr(segclip_pretrain, "_pairs", recorder("segclip"))
    pretrain_clip(world, ClipRecipe(steps=3, batch_size=6, seed=4))
    pretrain_segclip(world, replace(TINY, steps=3, batch_size=6, seed=4))
    assert len(seen["clip"]) == len(seen["segclip"]) == 3
    for (seed_a, images_a, captions_a), (seed_b, images_b, captions_b) in zip(
        seen["clip"], seen["segclip"], strict=True
    ):
        assert seed_a == seed_b and captions_a == captions_b and torch.equal(images_a, images_b)
        assert images_a.shape[0] == 6
    assert seen["segclip"][0][2] != seen["segclip"][1][2] or not torch.equal(
        seen["segclip"][0][1], seen["segclip"][1][1]
    )


def _trace(monkeypatch) -> dict[str, int]:
    """Count the superpixel computations and reconstruction passes."""
    counts = {"superpixels": 0, "reconstruction": 0}
    real_superpixels, real_reconstruction = segclip_pretrain._superpixels, SegClip.reconstruction_loss

    def superpixels(images):
        counts["superpixels"] += 1
        return real_superpixels(images)

    def reconstruction(self, images, **kwargs):
        counts["reconstruction"] += 1
        return real_reconstruction(self, images, **kwargs)

    monkeypatch.setattr(segclip_pretrain, "_superpixels", superpixels)
    monkeypatch.setattr(SegClip, "reconstruction_loss", reconstruction)
    return counts


def test_the_loss_terms_are_weighted_and_switched_off_by_their_weights(world, monkeypatch) -> None:
    counts = _trace(monkeypatch)
    folder = pretrain_segclip(world, replace(TINY, superpixel_weight=2.0, reconstruction_weight=3.0))
    assert counts == {"superpixels": 2, "reconstruction": 2}
    losses = json.loads((folder / "pretrain.json").read_text())["final_losses"]
    expected = losses["contrastive"] + 2.0 * losses["superpixel"] + 3.0 * losses["reconstruction"]
    assert losses["total"] == pytest.approx(expected, abs=1e-5) and losses["reconstruction"] > 0

    counts.update(superpixels=0, reconstruction=0)
    folder = pretrain_segclip(world, replace(TINY, superpixel_weight=0.0, reconstruction_weight=0.0))
    assert counts == {"superpixels": 0, "reconstruction": 0}
    losses = json.loads((folder / "pretrain.json").read_text())["final_losses"]
    assert set(losses) == {"total", "contrastive"} and losses["total"] == losses["contrastive"]


def test_without_the_reconstruction_the_mae_decoder_stays_as_initialised(world) -> None:
    def decoder(model):
        return {k: v for k, v in model.state_dict().items() if k.startswith("mae_decoder.")}

    torch.manual_seed(TINY.seed)
    initial = decoder(SegClip(SEGCLIP_SYNTHETIC_CONFIG))
    assert initial
    off = decoder(SegClip.from_pretrained(pretrain_segclip(world, replace(TINY, reconstruction_weight=0.0))))
    on = decoder(SegClip.from_pretrained(pretrain_segclip(world, TINY)))
    assert all(torch.equal(initial[k], off[k]) for k in initial)
    assert not all(torch.equal(initial[k], on[k]) for k in initial)


class _NoMasks:
    """A sampled set whose masks (and class maps) raise when read."""

    def __init__(self, inner) -> None:
        self._inner = inner

    @property
    def masks(self):
        raise AssertionError("the pre-training read a mask")

    def __getattr__(self, name):
        if name in ("masks", "class_maps"):
            raise AssertionError("the pre-training read a mask")
        return getattr(self._inner, name)


class _MaskFreeWorld:
    def __init__(self, world: SyntheticWorld) -> None:
        self._world = world
        self.class_names = world.class_names

    def sample_set(self, set_size, *, seed=None):
        return _NoMasks(self._world.sample_set(set_size, seed=seed))

    def fingerprint(self) -> str:
        return self._world.fingerprint()


def test_masks_are_never_read(world) -> None:
    sampled = world.sample_set(2, seed=0)
    assert hasattr(sampled, "masks") and hasattr(sampled, "class_maps")  # the world has masks to read
    for name in ("masks", "class_maps"):
        with pytest.raises(AssertionError, match="read a mask"):
            getattr(_MaskFreeWorld(world).sample_set(2, seed=0), name)
    folder = pretrain_segclip(_MaskFreeWorld(world), TINY)
    assert SegClip.from_pretrained(folder).config == SEGCLIP_SYNTHETIC_CONFIG


def test_contrastive_loss_is_cross_entropy_both_ways_with_the_scale_clamped() -> None:
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    cos = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    labels = torch.arange(5)
    for log_scale, scale in ((2.0, torch.tensor(2.0).exp()), (6.0, torch.tensor(100.0))):
        expected = (F.cross_entropy(scale * cos, labels) + F.cross_entropy(scale * cos.T, labels)) / 2
        assert contrastive_loss(image, text, torch.tensor(log_scale)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_zero_shot_accuracy_reads_the_image_embedding_against_the_prompts(world) -> None:
    import open_clip

    torch.manual_seed(0)
    model = SegClip(SEGCLIP_SYNTHETIC_CONFIG).eval()
    scores = segclip_zero_shot_accuracy(model, world, sets=3, set_size=2, seed=9)
    tokens = open_clip.tokenize([f"a {c}" for c in world.class_names], context_length=32)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
        hits = 0
        for i in range(3):
            s = world.sample_set(2, seed=(9, i))
            x = segclip_pretrain._normalise(s.images, 64)
            best = (F.normalize(model.encode_image(x).embedding, dim=-1) @ text.T).argmax(1).tolist()
            hits += sum(b in present for b, present in zip(best, s.present_classes, strict=True))
    assert scores["image_top1"] == pytest.approx(hits / 6)
    with pytest.raises(CosegValueError, match="expected a SegClip"):
        segclip_zero_shot_accuracy(object(), world)


def test_cli_pretrain_clip_method_segclip(cache, monkeypatch, capsys, tmp_path) -> None:
    recipes = []
    real = segclip_pretrain.pretrain_segclip

    def spy(world, recipe, **kwargs):
        recipes.append(recipe)
        return real(world, recipe, **kwargs)

    monkeypatch.setattr(segclip_pretrain, "pretrain_segclip", spy)
    argv = ["pretrain-clip", "--method", "segclip", "--dataset", "synthetic", "--world-classes", "4"]
    argv += ["--image-size", "32", "--steps", "2", "--batch-size", "4", "--sets", "2", "--no-progress"]
    argv += [
        "--seed",
        "3",
        "--superpixel-weight",
        "0.5",
        "--reconstruction-weight",
        "0",
        "--json",
        str(tmp_path / "s.json"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (recipe,) = recipes
    assert recipe == replace(
        SEGCLIP_SYNTHETIC_RECIPE, steps=2, batch_size=4, seed=3, superpixel_weight=0.5, reconstruction_weight=0.0
    )
    record = json.loads((tmp_path / "s.json").read_text())
    assert f"model folder: {record['model']}" in out and "held-out sets (2 of 5 images, held-out seeds)" in out
    assert SegClip.from_pretrained(record["model"]).config == SEGCLIP_SYNTHETIC_CONFIG
    assert record["architecture"] == "segclip-synthetic" and 0 <= record["set_top1"] <= 1
    assert not (cache / "clip").exists()  # no plain CLIP was trained


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reconstruction-weight", "0"], "--reconstruction-weight: only with --method segclip"),
        (["--method", "segclip", "--superpixel-weight", "-1"], "--superpixel-weight: SegClipRecipe.superpixel_weight"),
        (["--method", "segclip", "--batch-size", "1"], "--batch-size: SegClipRecipe.batch_size"),
    ],
)
def test_cli_segclip_errors_name_the_flag(argv, message, capsys) -> None:
    assert main(["pretrain-clip", "--dataset", "synthetic", "--steps", "1", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cli_segclip_on_the_composite_world_trains_on_the_training_photos(tmp_path, monkeypatch, capsys) -> None:
    from cosegkit.data.synthetic import write_folder_dataset

    root = tmp_path / "photos"
    write_folder_dataset(SyntheticWorld(num_classes=4, image_size=32, objects_per_image=2, seed=3), root, 6)
    calls = []
    real = segclip_pretrain.pretrain_segclip

    def spy(world, recipe, **kwargs):
        calls.append((world, recipe))
        return real(world, recipe, **kwargs)

    monkeypatch.setattr(segclip_pretrain, "pretrain_segclip", spy)
    argv = ["pretrain-clip", "--method", "segclip", "--dataset", "composite", "--root", str(root), "--reader", "folder"]
    assert main([*argv, "--split-seed", "2", "--steps", "2", "--batch-size", "4", "--sets", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    ((world, recipe),) = calls
    assert recipe == replace(SEGCLIP_COMPOSITE_RECIPE, steps=2, batch_size=4)
    from cosegkit.engine import TrainConfig

    config = TrainConfig(dataset="composite", root=str(root), reader="folder", split_seed=2)
    assert set(world.photos) == set(config.world().photos) and set(world.photos).isdisjoint(
        config.held_out_world().photos
    )
    assert "model folder: " in out and "segclip-composite-" in out and "held-out photos" in out
