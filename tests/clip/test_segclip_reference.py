"""Checks of the functional SegCLIP transcription in ``segclip_reference.py`` itself.

Its equality with SegCLIP's own code was measured outside the repository (their modules with
this state dict loaded); these tests hold the properties that transcription must keep.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.clip import segclip_reference as ref

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return ref.segclip_state_dict()


def _tokens(batch: int, length: int, eot_at: list[int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, SOT, (batch, length), generator=gen)
    tokens[:, 0] = SOT
    for row, position in enumerate(eot_at):
        tokens[row, position] = EOT
        tokens[row, position + 1 :] = 0
    return tokens


def test_key_set_follows_segvit_structure(state):
    shapes = ref.segclip_key_shapes()
    assert list(state) == list(shapes)
    assert {k: tuple(v.shape) for k, v in state.items()} == dict(shapes)
    # 295 keys: the count of their SegCLIP(use_vision_mae_recon=True).state_dict() at these sizes
    assert len(state) == 295
    vt = "clip.visual.transformer."
    blocks = {
        k.split(".")[3] + "." + k.split(".")[4] for k in state if k.endswith("attn.in_proj_weight") and k.startswith(vt)
    }
    assert sum(b.startswith("layers0.") for b in blocks) + sum(b.startswith("layers2.") for b in blocks) == 12
    assert sum(b.startswith("layers_mae2.") for b in blocks) == 2
    assert state[f"{vt}semantic_layer2.k_conv.weight"].shape == (128, 64, 1)  # 2 heads -> groups=2
    assert state[f"{vt}reconstruct_layer2.rec_proj_a.a_fc.weight"].shape == (4, 4)
    assert state["vis_mae_decoder.decoder_pred.weight"].shape == (8 * 8 * 3, 64)
    assert not any(k.startswith("clip.visual.transformer.resblocks") for k in state)
    assert state["clip.logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    with pytest.raises(ValueError, match="multiple of 64"):
        ref.segclip_state_dict(text_width=32)


def test_sincos_table_halves_encode_column_then_row():
    table = ref.sincos_pos_embed_2d(16, 4)
    assert table.shape == (17, 16)
    assert torch.all(table[0] == 0)
    grid = table[1:].reshape(4, 4, 16)  # (row, column, channel)
    assert torch.allclose(grid[0, :, :8], grid[3, :, :8])  # first half: the column only
    assert torch.allclose(grid[:, 0, 8:], grid[:, 3, 8:])  # second half: the row only
    assert not torch.allclose(grid[0, 0, :8], grid[0, 1, :8])
    assert torch.allclose(grid[0, 1, :4], torch.sin(torch.tensor(1.0) / 10000 ** (torch.arange(4) / 4.0)))


def test_activations_stay_order_one(state):
    torch.manual_seed(0)
    out = ref.reference_encode_image(state, torch.randn(2, 3, 32, 32))
    text = ref.reference_encode_text(state, _tokens(2, 16, [5, 15]))
    for value in (out["image"], out["hidden"], text):
        assert 0.3 < value.std().item() < 3.0
    top_share = out["soft"].max(dim=1).values  # the winning group's share of each token
    assert (top_share > 0.99).float().mean() < 0.5  # the soft assignment is mostly not a one-hot


def test_grouped_conv_and_attention_match_torch_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 128)
    conv = nn.Conv1d(128, 128, 1, groups=2, bias=False)
    expected = conv(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(ref._grouped_conv1x1(x, conv.weight, 2), expected, atol=1e-5)
    mha = nn.MultiheadAttention(128, 2).eval()
    s = {f"a.{k}": v for k, v in mha.state_dict().items()}
    q, kv = torch.randn(2, 3, 128), torch.randn(2, 7, 128)
    expected = mha(q.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), need_weights=False)[0].transpose(0, 1)
    assert torch.allclose(ref._mha(q, kv, s, "a.", 2), expected, atol=1e-5)


def test_assignments_soft_sums_to_one_hard_is_its_one_hot(state):
    torch.manual_seed(1)
    out = ref.reference_encode_image(state, torch.randn(3, 3, 32, 32))
    soft, hard = out["soft"], out["hard"]
    assert soft.shape == hard.shape == (3, 4, 16)
    assert torch.allclose(soft.sum(dim=1), torch.ones(3, 16), atol=1e-6)
    assert torch.allclose(hard, hard.round(), atol=1e-6)
    assert torch.allclose(hard.sum(dim=1), torch.ones(3, 16), atol=1e-6)
    assert torch.equal(hard.argmax(dim=1), soft.argmax(dim=1))
    assert torch.allclose(out["image"], out["hidden"][:, 0])


def test_pos_embed_interpolation_identity_only_at_native_square_grid(state):
    pos = state["clip.visual.positional_embedding"]
    assert ref.interpolate_pos_embed(pos, 4, 4) is pos
    bigger = ref.interpolate_pos_embed(pos, 8, 8)
    assert bigger.shape == (65, 128) and torch.equal(bigger[0], pos[0])
    flat = ref.interpolate_pos_embed(pos, 2, 8)  # same count, not square: resized
    assert flat.shape == pos.shape and not torch.allclose(flat, pos)


def test_any_size_runs_segmentation_branch_unless_their_rule_asked(state):
    torch.manual_seed(2)
    for h, w in ((64, 64), (32, 128), (48, 40)):
        out = ref.reference_encode_image(state, torch.randn(1, 3, h, w))
        assert out["soft"].shape == (1, 4, (h // 8) * (w // 8))
    ref.reference_encode_image(state, torch.randn(1, 3, 64, 64), their_size_rule=True)
    with pytest.raises(ValueError, match="reconstruction branch"):
        ref.reference_encode_image(state, torch.randn(1, 3, 48, 40), their_size_rule=True)


def test_torch18_key_layout_mixes_images_only_in_a_batch(state):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    single = ref.reference_encode_image(state, images[:1])["image"]
    assert torch.allclose(ref.reference_encode_image(state, images[:1], torch18_keys=True)["image"], single)
    per_image = ref.reference_encode_image(state, images)["image"]
    mixed = ref.reference_encode_image(state, images, torch18_keys=True)["image"]
    assert torch.allclose(per_image[:1], single, atol=1e-5)
    assert not torch.allclose(mixed, per_image, atol=1e-3)


def test_text_is_causal_and_read_at_eot(state):
    tokens = _tokens(2, 16, [5, 9])
    base = ref.reference_encode_text(state, tokens)
    after = tokens.clone()
    after[0, 7] = 1234  # after the eot of row 0
    changed = ref.reference_encode_text(state, after)
    assert torch.equal(changed[0], base[0]) and torch.equal(changed[1], base[1])
    before = tokens.clone()
    before[0, 3] = 1234  # before it
    assert not torch.allclose(ref.reference_encode_text(state, before)[0], base[0])
    shorter = ref.reference_encode_text(state, tokens[:, :10])  # mask and positions cut to the length
    assert torch.allclose(shorter, base, atol=1e-5)


def test_text_embedding_is_unit_mean_over_templates(state):
    tokens = _tokens(4, 16, [5, 9, 3, 12])
    per_class = tokens.reshape(2, 2, 16)
    emb = ref.reference_text_embedding(state, per_class)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    single = ref.reference_encode_text(state, tokens).reshape(2, 2, 32).mean(dim=1)
    assert torch.allclose(emb, F.normalize(single, dim=-1), atol=1e-6)


def test_segment_shapes_top5_mask_and_background(state):
    torch.manual_seed(4)
    text = ref.reference_text_embedding(state, torch.stack([_tokens(2, 16, [4, 6], seed=i) for i in range(7)]))
    image = torch.randn(1, 3, 32, 48)
    logits = ref.reference_segment(state, image, text, with_bg=True, bg_thresh=0.8)
    assert logits.shape == (8, 32, 48)
    assert logits.argmax(dim=0).shape == (32, 48)
    assert set(logits[0].unique().tolist()) <= {0.0, 1.0}
    assert (logits[1:].amax(dim=(1, 2)) == 0).sum() >= 2  # 7 classes, only the image's top 5 kept
    no_bg = ref.reference_segment(state, image, text, with_bg=False)
    assert torch.equal(no_bg, logits[1:])
    # background: best class affinity under min(bg_thresh, the largest group-class affinity)
    assert ref.reference_segment(state, image, text, bg_thresh=0.0)[0].sum() == 0
    highest = ref.reference_segment(state, image, text, bg_thresh=1.0)
    best = highest[1:].amax(dim=0)
    assert torch.equal(highest[0] == 0, best == best.max())  # lowered to the largest affinity


def test_resize_attn_map_grid_from_aspect():
    attn = torch.rand(1, 4 * 6, 3)
    out = ref.resize_attn_map(attn, 32, 48)
    assert out.shape == (1, 32, 48, 3)
    same = ref.resize_attn_map(attn, 4, 6)
    assert torch.allclose(same[0].reshape(24, 3), attn[0])


def test_mae_loss_finite_and_driven_by_noise(state):
    torch.manual_seed(5)
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 17)
    loss = ref.reference_mae_loss(state, images, noise)
    assert torch.isfinite(loss) and loss > 0
    assert ref.reference_mae_loss(state, images, noise) == loss
    assert ref.reference_mae_loss(state, images, torch.rand(2, 17)) != loss
    high, low = noise.clone(), noise.clone()
    high[:, 0], low[:, 0] = 5.0, -3.0  # both overwritten with -1: the class token is always kept
    assert ref.reference_mae_loss(state, images, high) == ref.reference_mae_loss(state, images, low) == loss
    groups, kept = 4, int(17 * 0.25) - 1
    zero = ref.reference_mae_loss(state, images, noise, gumbel=torch.zeros(2, groups, kept))
    assert torch.allclose(zero, loss, atol=1e-5)  # same argmax with tau applied
    strong = ref.reference_mae_loss(state, images, noise, gumbel=30 * torch.randn(2, groups, kept))
    assert not torch.allclose(strong, loss)
    assert not torch.allclose(ref.reference_mae_loss(state, images, noise, torch18_keys=True), loss)


def test_contrastive_loss():
    torch.manual_seed(6)
    emb = torch.randn(4, 32)
    scale = torch.tensor(math.log(1 / 0.07))
    aligned = ref.reference_contrastive_loss(emb, emb, scale)
    shuffled = ref.reference_contrastive_loss(emb, emb.roll(1, dims=0), scale)
    assert aligned < shuffled
    text = torch.randn(4, 32)
    assert torch.allclose(
        ref.reference_contrastive_loss(emb, text, scale), ref.reference_contrastive_loss(text, emb, scale)
    )
    clamped = ref.reference_contrastive_loss(emb, text, torch.tensor(math.log(1000.0)))
    assert torch.allclose(clamped, ref.reference_contrastive_loss(emb, text, torch.tensor(math.log(100.0))))
    logits = 100 * F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).T
    manual = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert torch.allclose(clamped, manual)


# Recorded from SegCLIP's own modules (CLIP of modules/module_clip.py, MAEDecoder of
# modules/module_mae.py) with ``segclip_state_dict()`` loaded, on the inputs of
# ``_recorded_inputs``; their cross-attention keys fed per image (their batch-1 layout) or as
# torch 1.8 reshaped them, their ``torch.rand`` in ``random_masking`` returning ``noise``, the
# group module in eval.
RECORDED = {
    "image": [[0.0174779, -1.0776948, -1.5512518, -1.5547262], [-0.5735525, -2.1604307, -1.3196399, -1.2524966]],
    "image_torch18": [
        [-0.5003905, -1.2917587, -1.2583596, -1.4914237],
        [0.0714140, -1.6083570, -1.1003989, -0.9892434],
    ],
    "soft_0": [
        [0.1331186, 0.3326760, 0.0859879],
        [0.6261252, 0.5299149, 0.0003421],
        [0.2365278, 0.0769255, 0.0278264],
        [0.0042284, 0.0604836, 0.8858436],
    ],
    "text": [[0.7327514, 1.1128443, 0.0625018, 0.3447189], [1.1205487, 0.5171574, 0.0000276, 0.3883843]],
    "mae_loss": 2.1960919,
}


def _recorded_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    tokens = torch.randint(1, SOT, (2, 16), generator=gen)
    tokens[:, 0] = SOT
    tokens[0, 5], tokens[0, 6:] = EOT, 0
    tokens[1, 15] = EOT
    noise = torch.rand(2, 17, generator=gen)
    return images, tokens, noise


def test_matches_values_recorded_from_segclip_code(state):
    images, tokens, noise = _recorded_inputs()
    out = ref.reference_encode_image(state, images)
    assert torch.allclose(out["image"][:, :4], torch.tensor(RECORDED["image"]), atol=1e-5)
    assert torch.allclose(out["soft"][0, :, :3], torch.tensor(RECORDED["soft_0"]), atol=1e-5)
    mixed = ref.reference_encode_image(state, images, torch18_keys=True)["image"]
    assert torch.allclose(mixed[:, :4], torch.tensor(RECORDED["image_torch18"]), atol=1e-5)
    text = ref.reference_encode_text(state, tokens)
    assert torch.allclose(text[:, :4], torch.tensor(RECORDED["text"]), atol=1e-5)
    assert ref.reference_mae_loss(state, images, noise).item() == pytest.approx(RECORDED["mae_loss"], abs=1e-5)
