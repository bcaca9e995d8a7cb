"""The assembled LCCo: shapes, encoders, Table 2 switches, set properties, errors, persistence, training."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit import CosegShapeError, CosegValueError, LCCo, LCCoLoss, WeightsUnavailableError
from tests._support import CLASSNAMES, TINY_CLIP, make_tiny_clip, tiny_lcco


@pytest.fixture(scope="module")
def model() -> LCCo:
    return tiny_lcco().eval()


def rand_images(b: int, n: int, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_output_fields(model: LCCo) -> None:
    out = model(rand_images(2, 3, 64, 80))
    assert out.masks.shape == (2, 3, 1, 64, 80)
    assert out.coarse_masks.shape == (2, 3, 1, 4, 4)  # tiny CLIP: 32 px, patch 8
    assert out.class_probs.shape == (2, len(CLASSNAMES))
    assert out.common_class.shape == (2,) and out.common_class.dtype == torch.long
    assert out.topk_indices.shape == (2, 3)
    assert out.similarity.shape == (2, 3, len(CLASSNAMES))
    assert out.class_targets is None and out.valid.all()


@given(b=st.integers(1, 2), n=st.integers(1, 4), h=st.integers(8, 72), w=st.integers(8, 72), seed=st.integers(0, 99))
def test_any_batch_set_and_image_size(model: LCCo, b: int, n: int, h: int, w: int, seed: int) -> None:
    out = model(rand_images(b, n, h, w, seed))
    assert out.masks.shape == (b, n, 1, h, w)
    assert torch.isfinite(out.masks).all()


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0", "mit_b0", "tu-test_convnext", "tu-resnet10t"])
def test_smp_encoders(encoder: str) -> None:
    m = tiny_lcco(encoder_name=encoder, decoder_channels=None, heads=8).eval()
    expected_levels = 4 if encoder in ("mit_b0", "tu-test_convnext") else 5  # 0-channel placeholder skipped
    assert len(m.levels) == expected_levels
    assert all(m.encoder.out_channels[i] > 0 for i in m.levels)
    out = m(rand_images(1, 2, 70, 50))
    assert out.masks.shape == (1, 2, 1, 70, 50)


def test_decoder_channels_follow_the_encoder() -> None:
    m = tiny_lcco(encoder_name="resnet18", decoder_channels=None, heads=8)
    assert m.center[0].in_channels == m.encoder.out_channels[-1]
    assert m.correspondence.channels == 256 and m.interaction.channels == 128 and m.regularization.channels == 64


@pytest.mark.parametrize("isfc,inter,reg", list(itertools.product([False, True], repeat=3)))
def test_every_row_of_table_2_is_a_constructor_call(isfc: bool, inter: bool, reg: bool) -> None:
    m = tiny_lcco(use_correspondence=isfc, use_interaction=inter, use_regularization=reg).eval()
    assert isinstance(m.correspondence, torch.nn.Identity) != isfc
    assert isinstance(m.interaction, torch.nn.Identity) != inter
    assert isinstance(m.regularization, torch.nn.Identity) != reg
    assert (m.clip is None) == (not inter and not reg)
    images = rand_images(2, 3)
    masks = (torch.rand(2, 3, 1, 40, 48) > 0.5).float()
    out = m(images, masks=masks)
    assert out.masks.shape == (2, 3, 1, 40, 48)
    assert (out.topk_indices is not None) == inter and (out.coarse_masks is not None) == inter
    assert (out.class_probs is not None) == reg and (out.class_targets is not None) == reg
    losses = LCCoLoss()(out, masks)
    assert torch.isfinite(losses.total)


def test_baseline_ignores_the_set_and_lcco_does_not(model: LCCo) -> None:
    base = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False).eval()
    x = rand_images(1, 3)
    other = torch.cat([x[:, :1], rand_images(1, 2, seed=5)], dim=1)  # image 0 in another set
    torch.testing.assert_close(base(x).masks[:, 0], base(other).masks[:, 0], atol=1e-6, rtol=1e-5)
    # LCCo: image 0's refined features depend on the rest of its set (the regularization module
    # sees the set only through i*, which a random CLIP rarely changes between two noise sets)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda mod, inp, out, name=name: seen.setdefault(name, []).append(out if torch.is_tensor(out) else out[0])
        )
        for name in ("correspondence", "interaction")
    ]
    try:
        first, second = model(x), model(other)
    finally:
        for h in hooks:
            h.remove()
    for name, (a, b) in seen.items():
        assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-6, rtol=0), name
    assert not torch.allclose(first.class_probs, second.class_probs)


@given(n=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_permuting_images_permutes_masks_and_keeps_set_outputs(model: LCCo, n: int, seed: int) -> None:
    x = rand_images(2, n, 32, 40, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, permuted = model(x), model(x[:, perm])
    torch.testing.assert_close(permuted.masks, out.masks[:, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(permuted.class_probs, out.class_probs, atol=1e-5, rtol=1e-4)
    assert torch.equal(permuted.common_class, out.common_class)
    assert set(permuted.topk_indices[0].tolist()) == set(out.topk_indices[0].tolist())


@given(n=st.integers(1, 3), pad=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_padding_and_batch_independence(model: LCCo, n: int, pad: int, seed: int) -> None:
    x = rand_images(1, n, 32, 32, seed)
    y = rand_images(1, n + pad, 32, 32, seed + 1)
    batch = torch.cat([torch.cat([x, rand_images(1, pad, 32, 32, seed + 2)], dim=1), y])
    valid = torch.tensor([[True] * n + [False] * pad, [True] * (n + pad)])
    out = model(batch, valid)
    alone = model(x)
    torch.testing.assert_close(out.masks[:1, :n], alone.masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.class_probs[:1], alone.class_probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.masks[1:], model(y).masks, atol=1e-4, rtol=1e-4)


def test_gradients_reach_every_trainable_parameter_and_never_clip() -> None:
    m = tiny_lcco().train()
    images = rand_images(2, 3)
    masks = torch.zeros(2, 3, 1, 40, 48)
    masks[..., 10:30, 12:36] = 1.0
    LCCoLoss()(m(images, masks=masks), masks).total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    clip_params = list(m.clip.model.parameters())
    assert clip_params and all(p.grad is None and not p.requires_grad for p in clip_params)
    ids = {id(p) for p in m.parameters()}
    assert not any(id(p) in ids for p in clip_params)  # an optimizer over m.parameters() never sees CLIP
    assert not m.clip.model.training


def test_clip_runs_once_per_forward_and_the_text_bank_once_per_model(monkeypatch) -> None:
    m = tiny_lcco().eval()
    visual_calls = []
    visual = m.clip.model.visual
    original = visual.forward
    monkeypatch.setattr(visual, "forward", lambda x: visual_calls.append(x.shape[0]) or original(x))
    images = rand_images(2, 3)
    m(images)
    m(images, masks=torch.ones(2, 3, 1, 40, 48))
    assert visual_calls == [6, 8, 4]  # every image once; masked images ride along, in chunks of 8
    assert m.clip.text_bank_computations == 1
    visual_calls.clear()
    m.micro_batch = m.clip.micro_batch = None
    m(images, masks=torch.ones(2, 3, 1, 40, 48))
    assert visual_calls == [12]


def test_micro_batches_give_the_same_output_as_one_batch() -> None:
    m = tiny_lcco(micro_batch=2).eval()
    images = rand_images(2, 3)
    chunked = m(images)
    m.micro_batch = m.clip.micro_batch = None
    whole = m(images)
    torch.testing.assert_close(chunked.masks, whole.masks, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked.class_probs, whole.class_probs, atol=1e-5, rtol=1e-4)
    with pytest.raises(CosegValueError, match="micro_batch"):
        tiny_lcco(micro_batch=0)


def test_class_targets_match_set_class_targets() -> None:
    from cosegkit import set_class_targets

    m = tiny_lcco().eval()
    images = rand_images(2, 3)
    masks = (torch.rand(2, 3, 1, 40, 48) > 0.5).float()
    assert torch.equal(m(images, masks=masks).class_targets, set_class_targets(m.clip, images, masks))


def test_predict_gives_probabilities_in_eval_mode() -> None:
    m = tiny_lcco().train()
    probs = m.predict(rand_images(1, 2))
    assert not m.training and not probs.requires_grad
    assert probs.shape == (1, 2, 1, 40, 48) and ((probs >= 0) & (probs <= 1)).all()


def test_save_and_load_round_trip(tmp_path) -> None:
    m = tiny_lcco().eval()
    # move away from initialisation so a load that silently kept random weights would fail
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = rand_images(2, 3)
    path = m.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "clip.safetensors"}
    loaded = LCCo.from_pretrained(path).eval()
    a, b = m(x), loaded(x)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.class_probs, b.class_probs)
    assert loaded.clip.classnames == CLASSNAMES


def test_loading_trained_weights_does_not_say_they_are_random(tmp_path, caplog) -> None:
    """open_clip's "initialized randomly" notice is wrong while a checkpoint loads its CLIP."""
    import logging

    path = tiny_lcco().save_pretrained(tmp_path / "ckpt")
    with caplog.at_level(logging.WARNING):
        make_tiny_clip()  # a CLIP built with random weights on purpose: the notice stays
    assert any("No pretrained weights loaded" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        LCCo.from_pretrained(path)
    assert not any("No pretrained weights loaded" in r.getMessage() for r in caplog.records)
    assert not any("No pretrained weights" in str(f) for f in logging.getLogger().filters)


def test_round_trip_of_the_baseline(tmp_path) -> None:
    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False).eval()
    m.save_pretrained(tmp_path)
    assert not (tmp_path / "clip.safetensors").exists()
    x = rand_images(1, 2)
    assert torch.equal(m(x).masks, LCCo.from_pretrained(tmp_path).eval()(x).masks)


def test_loading_refuses_what_is_not_a_checkpoint(tmp_path) -> None:
    with pytest.raises(WeightsUnavailableError, match="not an LCCo checkpoint"):
        LCCo.from_pretrained(tmp_path)
    with pytest.raises(WeightsUnavailableError, match="neither a local folder nor a reachable hub"):
        LCCo.from_pretrained("nobody/no-such-lcco-model")


def test_encoder_weights_from_a_local_file(tmp_path) -> None:
    from safetensors.torch import save_file

    source = tiny_lcco(use_interaction=False, use_regularization=False)
    file = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(file))
    torch.manual_seed(123)  # a different random init, overwritten by the file
    m = LCCo(
        encoder_name="tu-test_convnext",
        encoder_weights=file,
        use_interaction=False,
        use_regularization=False,
        decoder_channels=(32, 32, 16, 16),
        heads=4,
    )
    for k, v in source.encoder.state_dict().items():
        assert torch.equal(m.encoder.state_dict()[k], v), k
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    m2 = tiny_lcco(encoder_weights=str(tmp_path / "encoder.pth"), use_interaction=False, use_regularization=False)
    assert all(torch.equal(m2.encoder.state_dict()[k], v) for k, v in source.encoder.state_dict().items())
    with pytest.raises(CosegValueError, match="does not exist"):
        tiny_lcco(encoder_weights=str(tmp_path / "missing.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a weights file")
    with pytest.raises(WeightsUnavailableError, match=r"bad\.safetensors"):
        tiny_lcco(encoder_weights=str(tmp_path / "bad.safetensors"))


def test_unavailable_pretrained_weights_say_what_to_do() -> None:
    with pytest.raises(WeightsUnavailableError, match="encoder_weights=None"):
        LCCo(
            encoder_name="resnet18",
            encoder_weights="imagenet",
            use_correspondence=False,
            use_interaction=False,
            use_regularization=False,
        )
    with pytest.raises(WeightsUnavailableError, match="pretrained=None"):
        LCCo(
            encoder_name="tu-test_convnext",
            encoder_weights=None,
            clip_model=TINY_CLIP,
            clip_pretrained="openai",
            decoder_channels=(32, 32, 16, 16),
            heads=4,
        )


def test_unavailable_weights_name_the_cli_flags_and_open_clip_logs_no_second_error(monkeypatch, caplog) -> None:
    import logging

    import open_clip

    with pytest.raises(WeightsUnavailableError, match="--encoder-weights FILE"):
        LCCo(encoder_name="resnet18", encoder_weights="imagenet", use_correspondence=False,
             use_interaction=False, use_regularization=False)  # fmt: skip

    def offline(*args, **kwargs):  # what open_clip does offline: log, then raise
        logging.error("Failed to download weights for tag 'openai': no connection")
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    from cosegkit.clip import FrozenClip

    with caplog.at_level(logging.ERROR), pytest.raises(WeightsUnavailableError, match="--clip-pretrained FILE"):
        FrozenClip.from_name(TINY_CLIP, pretrained="openai")
    assert not any("Failed to download weights" in r.getMessage() for r in caplog.records)
    logging.error("Failed to download weights elsewhere")  # outside the call the filter is gone
    assert any("elsewhere" in r.getMessage() for r in caplog.records)


def test_passing_a_ready_clip() -> None:
    clip = make_tiny_clip(classnames=["apple", "pear", "plum", "fig"])
    m = tiny_lcco(clip=clip, top_k=2)
    assert m.clip is clip and m.regularization.num_prompts == 4
    assert m(rand_images(1, 2)).class_probs.shape == (1, 4)


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.rand(2, 3, 32, 32), r"\(B, N, 3, H, W\), got \(2, 3, 32, 32\).*unsqueeze"),
        (torch.rand(1, 2, 1, 32, 32), "3 RGB channels"),
        (torch.rand(1, 2, 32, 32, 3), "permute"),
        (torch.rand(1, 0, 3, 32, 32), "N >= 1"),
    ],
)
def test_shape_errors(model: LCCo, images: torch.Tensor, match: str) -> None:
    with pytest.raises(CosegShapeError, match=match):
        model(images)


def test_value_errors(model: LCCo) -> None:
    x = rand_images(1, 2)
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(CosegValueError, match="NaN"):
        model(bad)
    with pytest.raises(CosegValueError, match=r"\[0, 1\].*255"):
        model(x * 255)
    with pytest.raises(CosegValueError, match="uint8"):
        model((x * 255).to(torch.uint8))
    with pytest.raises(CosegValueError, match=r"no image as real in set\(s\) \[0\]"):
        model(x, torch.tensor([[False, False]]))
    with pytest.raises(CosegShapeError, match="masks of shape"):
        model(x, masks=torch.ones(1, 2, 1, 20, 24))


def test_constructor_errors() -> None:
    with pytest.raises(CosegValueError, match="top_k=9 is larger than the vocabulary of 8"):
        tiny_lcco(top_k=9)
    with pytest.raises(CosegValueError, match="vocabulary is empty"):
        tiny_lcco(classnames=[])
    with pytest.raises(CosegValueError, match="one entry per feature level"):
        tiny_lcco(decoder_channels=(32, 16))
    with pytest.raises(CosegValueError, match="encoder_depth >= 3"):
        tiny_lcco(encoder_name="resnet18", encoder_depth=2, decoder_channels=None)
    with pytest.raises(KeyError, match="get_encoder_names"):
        tiny_lcco(encoder_name="no-such-encoder")


def synthetic_batch(generator: torch.Generator, b: int = 4, n: int = 3, size: int = 32):
    """Sets of noisy images, each with a bright square at a random place: the mask to find."""
    images = 0.3 * torch.rand(b, n, 3, size, size, generator=generator)
    masks = torch.zeros(b, n, 1, size, size)
    for i in range(b):
        for j in range(n):
            s = int(torch.randint(8, 16, (1,), generator=generator))
            y, x = (int(v) for v in torch.randint(0, size - s, (2,), generator=generator))
            images[i, j, :, y : y + s, x : x + s] += 0.6
            masks[i, j, :, y : y + s, x : x + s] = 1.0
    return images.clamp(0, 1), masks


def test_a_few_dozen_steps_lower_the_loss() -> None:
    m = tiny_lcco().train()
    loss_fn = LCCoLoss()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        images, masks = synthetic_batch(g)
        loss = loss_fn(m(images, masks=masks), masks).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_from_pretrained_by_hub_id(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    m = tiny_lcco().eval()
    m.save_pretrained(tmp_path / "snapshot")
    asked = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = LCCo.from_pretrained("cosegkit/lcco-tiny").eval()
    assert asked == [("cosegkit/lcco-tiny", ("*.json", "*.safetensors"))]  # never pickles
    x = rand_images(1, 2)
    assert torch.equal(m(x).masks, loaded(x).masks)


def test_text_bank_first_computed_in_predict_stays_a_normal_tensor() -> None:
    m = tiny_lcco()
    m.clip.set_vocabulary(["apple", "pear", "plum", "fig"])  # the next use recomputes the bank
    m.regularization = type(m.regularization)(16, 32, 4)
    m.predict(rand_images(1, 2))
    assert m.clip.text_bank_computations == 2
    assert not m.clip.text_bank.is_inference()
    m.train()
    masks = torch.ones(1, 2, 1, 40, 48)
    LCCoLoss()(m(rand_images(1, 2), masks=masks), masks).total.backward()


def test_a_half_precision_clip_beside_a_float_decoder() -> None:
    m = tiny_lcco().eval()
    m.clip.to(torch.bfloat16)  # a memory saving users reach for: CLIP in bf16, the rest in fp32
    out = m(rand_images(1, 2), masks=torch.ones(1, 2, 1, 40, 48))
    assert out.masks.dtype == torch.float32 and torch.isfinite(out.masks).all()
    double = tiny_lcco().double().eval()
    assert double(rand_images(1, 2).double()).masks.dtype == torch.float64


# ------------------------------------------------------------------ variants
def module_settings(m: LCCo) -> dict:
    return {
        "residual": (m.interaction.residual, m.regularization.residual),
        "correspondence_residual": m.correspondence.residual,
        "unit_scale": (m.interaction.unit_scale, m.regularization.unit_scale),
        "class_pool": m.regularization.class_pool,
        "class_prior": m.regularization.class_prior,
    }


def test_variants_set_the_modules() -> None:
    from cosegkit.models import VARIANTS

    paper, default = module_settings(tiny_lcco(variant="paper")), module_settings(tiny_lcco())
    assert paper == {
        "residual": (False, False),
        "correspondence_residual": False,
        "unit_scale": (True, True),
        "class_pool": "max",
        "class_prior": VARIANTS["paper"]["class_prior"],
    }
    assert VARIANTS["paper"]["class_prior"] > 0
    assert default == {
        "residual": (True, True),
        "correspondence_residual": True,
        "unit_scale": (True, True),
        "class_pool": "mean",
        "class_prior": VARIANTS["default"]["class_prior"],
    }
    # one setting overrides its variant and leaves the others alone
    one = module_settings(tiny_lcco(variant="paper", class_pool="mean"))
    assert one == {**paper, "class_pool": "mean"}
    with pytest.raises(KeyError, match=r"unknown LCCo variant 'best'; choose one of \['default', 'paper'\]"):
        tiny_lcco(variant="best")
    with pytest.raises(CosegValueError, match="pool must be one of"):
        tiny_lcco(class_pool="median")


@pytest.mark.parametrize("variant", ["default", "paper"])
def test_variants_round_trip(tmp_path, variant: str) -> None:
    m = tiny_lcco(variant=variant, class_prior=1.5).eval()
    loaded = LCCo.from_pretrained(m.save_pretrained(tmp_path / variant)).eval()
    assert module_settings(loaded) == module_settings(m) and loaded.config == m.config
    x = rand_images(1, 3)
    assert torch.equal(m(x).masks, loaded(x).masks)


@pytest.mark.parametrize("residual", [False, True])
def test_a_checkpoint_from_before_variants_loads_as_it_was_built(tmp_path, residual: bool) -> None:
    """Before the variants, LCCo was the printed equations at their most literal, with ``residual``."""
    import json

    m = tiny_lcco(variant="paper", unit_scale=False, class_prior=0.0, residual=residual).eval()
    path = m.save_pretrained(tmp_path / "old")
    config = json.loads((path / "config.json").read_text())
    for key in ("variant", "correspondence_residual", "unit_scale", "class_pool", "class_prior"):
        del config["model"][key]  # what an older cosegkit wrote
    (path / "config.json").write_text(json.dumps(config))
    loaded = LCCo.from_pretrained(path).eval()
    assert module_settings(loaded) == module_settings(m)
    assert loaded.regularization.class_prior == 0.0 and not loaded.interaction.unit_scale
    x = rand_images(1, 2)
    assert torch.equal(m(x).masks, loaded(x).masks)


def test_default_i_star_starts_from_clips_ranking() -> None:
    """With MLP_3 silenced, the default's i* is the argmax of the set's mean standardised S."""
    m = tiny_lcco().eval()
    with torch.no_grad():
        for p in m.regularization.mlp3.parameters():
            p.zero_()
    x = rand_images(3, 4)
    out = m(x)
    s = out.similarity
    standardised = (s - s.mean(-1, keepdim=True)) / (s.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.equal(out.common_class, standardised.mean(1).argmax(-1))


def test_false_and_zero_overrides_beat_the_default_variant(tmp_path) -> None:
    m = tiny_lcco(residual=False, correspondence_residual=False, unit_scale=False, class_prior=0.0)
    assert module_settings(m) == {
        "residual": (False, False),
        "correspondence_residual": False,
        "unit_scale": (False, False),
        "class_pool": "mean",
        "class_prior": 0.0,
    }
    loaded = LCCo.from_pretrained(m.save_pretrained(tmp_path / "m"))
    assert module_settings(loaded) == module_settings(m)


def test_rgba_images_get_their_own_hint(model: LCCo) -> None:
    with pytest.raises(CosegShapeError, match=r"got 4 in .*RGBA images: drop the alpha channel with images\[:, :, :3\]"):
        model(torch.rand(1, 2, 4, 32, 32))
    with pytest.raises(CosegShapeError, match="grayscale") as info:
        model(torch.rand(1, 2, 1, 32, 32))
    assert "alpha" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_floating_input_of_any_precision_runs_at_the_models(model: LCCo, dtype: torch.dtype) -> None:
    x = rand_images(1, 3).to(dtype)
    probs = model.predict(x)
    assert probs.dtype == torch.float32
    assert torch.equal(probs, model.predict(x.float()))  # the same values in float32: the same masks


def test_image_and_set_size_are_stored_and_round_trip(tmp_path) -> None:
    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False)
    assert m.image_size is None and m.set_size is None  # not known unless told
    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False, image_size=64, set_size=4)
    path = m.save_pretrained(tmp_path / "model")
    stored = json.loads((path / "config.json").read_text())["model"]
    assert (stored["image_size"], stored["set_size"]) == (64, 4)
    loaded = LCCo.from_pretrained(path)
    assert (loaded.image_size, loaded.set_size) == (64, 4)
    loaded.image_size = 96
    assert loaded.config["image_size"] == 96
    for bad in (0, -3, 64.0, True, "64"):
        with pytest.raises(CosegValueError, match="image_size must be a positive integer or None"):
            loaded.image_size = bad


def test_a_config_without_the_sizes_loads_with_none_or_its_runs_sizes(tmp_path) -> None:
    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False, image_size=64, set_size=4)
    path = m.save_pretrained(tmp_path / "run" / "model")
    config = json.loads((path / "config.json").read_text())
    for key in ("image_size", "set_size"):
        del config["model"][key]  # as written before the sizes were stored
    (path / "config.json").write_text(json.dumps(config))
    older = LCCo.from_pretrained(path)
    assert (older.image_size, older.set_size) == (None, None)
    # inside the run folder of cosegkit train, the run's own config.json gives them
    run_config = {"dataset": "synthetic", "encoder": "tu-test_convnext", "image_size": 48, "set_size": 3}
    (tmp_path / "run" / "config.json").write_text(json.dumps(run_config))
    assert (LCCo.from_pretrained(path).image_size, LCCo.from_pretrained(path).set_size) == (48, 3)
    # a config.json around it that is not this model's run is not read
    (tmp_path / "run" / "config.json").write_text(json.dumps({**run_config, "encoder": "resnet50"}))
    assert LCCo.from_pretrained(path).image_size is None


def test_from_pretrained_takes_a_run_folder(tmp_path) -> None:
    m = tiny_lcco(use_correspondence=False, use_interaction=False, use_regularization=False).eval()
    m.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"dataset": "synthetic", "encoder": "resnet50"}))
    x = rand_images(1, 2)
    assert torch.equal(LCCo.from_pretrained(tmp_path / "run").eval()(x).masks, m(x).masks)
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(WeightsUnavailableError, match="has not finished.*--resume"):
        LCCo.from_pretrained(unfinished)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_usual_mode(tmp_path, umask: int) -> None:
    import os
    import stat

    old = os.umask(umask)
    try:
        path = tiny_lcco().save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir() if p.is_file()}
    assert set(modes) == {"config.json", "model.safetensors", "clip.safetensors"}
    assert set(modes.values()) == {0o666 & ~umask}
