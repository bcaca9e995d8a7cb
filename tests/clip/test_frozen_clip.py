"""Tests of :class:`cosegkit.clip.FrozenClip`: text bank, freezing, image encoding, loading, errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.clip import DEFAULT_VOCABULARY, FrozenClip
from cosegkit.errors import CosegShapeError, CosegValueError, WeightsUnavailableError
from cosegkit.losses import LCCoLoss
from tests._support import CLASSNAMES, TINY_CLIP, TINY_CLIP_RN, make_tiny_clip, tiny_lcco


def _unit_norm(x: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1], dtype=x.dtype), atol=atol)


# ---------------------------------------------------------------------------- text bank


def test_from_name_builds_a_normalised_text_bank(tiny_clip):
    bank = tiny_clip.text_bank
    assert bank.shape == (len(CLASSNAMES), 32)
    assert tiny_clip.num_prompts == len(CLASSNAMES)
    assert tiny_clip.embed_dim == 32
    assert tiny_clip.classnames == CLASSNAMES
    assert torch.isfinite(bank).all()
    assert _unit_norm(bank)
    # rows differ: one embedding per class name, not one broadcast vector
    assert not torch.allclose(bank[0], bank[1])


def test_text_bank_matches_the_encoded_prompts(tiny_clip):
    # a single template: the bank row is the normalised CLIP embedding of "a photo of a {name}."
    tokens = tiny_clip.tokenizer([f"a photo of a {c}." for c in CLASSNAMES])
    with torch.no_grad():
        expected = F.normalize(tiny_clip.model.encode_text(tokens).float(), dim=-1)
    torch.testing.assert_close(tiny_clip.text_bank, expected, atol=1e-5, rtol=1e-5)


def test_text_bank_averages_templates():
    templates = ("a photo of a {}.", "a drawing of a {}.")
    clip = make_tiny_clip(templates=templates)
    tokens = clip.tokenizer([t.format(c) for c in CLASSNAMES for t in templates])
    with torch.no_grad():
        emb = F.normalize(clip.model.encode_text(tokens).float(), dim=-1).view(len(CLASSNAMES), 2, -1)
    expected = F.normalize(emb.mean(dim=1), dim=-1)
    torch.testing.assert_close(clip.text_bank, expected, atol=1e-5, rtol=1e-5)


def test_text_bank_is_computed_once_and_reset_by_set_vocabulary():
    clip = make_tiny_clip()
    assert clip.text_bank_computations == 0
    first = clip.text_bank
    for _ in range(3):
        assert clip.text_bank is first
    images = torch.rand(1, 2, 3, 32, 32)
    for _ in range(3):
        clip.encode_images(images)
        clip.encode_images(images, dense=True)
    assert clip.text_bank_computations == 1

    clip.set_vocabulary(["cat", "dog", "horse"])
    assert clip.text_bank_computations == 1  # lazily: nothing recomputed yet
    bank = clip.text_bank
    assert clip.text_bank_computations == 2
    assert bank.shape == (3, 32)
    assert clip.num_prompts == 3
    assert clip.classnames == ("cat", "dog", "horse")
    # "cat" and "dog" keep their embeddings, the text bank really was recomputed from the new list
    torch.testing.assert_close(bank[:2], first[:2])
    assert clip.text_bank is bank
    assert clip.text_bank_computations == 2


# ---------------------------------------------------------------------------- frozen


def test_frozen_clip_exposes_no_parameters_nor_state(tiny_clip):
    assert list(tiny_clip.parameters()) == []
    assert len(tiny_clip.state_dict()) == 0
    clip_params = list(tiny_clip.model.parameters())
    assert len(clip_params) > 0
    assert all(not p.requires_grad for p in clip_params)
    assert len(tiny_clip.clip_state_dict()) == len(tiny_clip.model.state_dict()) > 0


def test_train_keeps_the_wrapped_model_in_eval_mode():
    clip = make_tiny_clip()
    clip.train()
    assert clip.training
    assert not clip.model.training
    assert not any(m.training for m in clip.model.modules())
    clip.eval()
    clip.train(True)
    assert not clip.model.training


def test_lcco_does_not_own_the_clip_weights():
    model = tiny_lcco()
    clip = model.clip
    assert clip is not None
    clip_ids = {id(p) for p in clip.model.parameters()}
    assert clip_ids
    assert not clip_ids & {id(p) for p in model.parameters()}
    assert not clip_ids & {id(p) for p in model.trainable_parameters()}

    state = model.state_dict()
    assert not [k for k in state if k.startswith("clip.")]
    clip_tensors = {v.data_ptr() for v in clip.model.state_dict().values()}
    assert not clip_tensors & {v.data_ptr() for v in state.values()}
    # the LCCo state dict is only the LCCo's own parameters and persistent buffers
    own = {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers() if k in state}
    assert set(state) == own

    model.train()
    assert not clip.model.training

    images = torch.rand(2, 3, 3, 64, 64)
    masks = (torch.rand(2, 3, 1, 64, 64) > 0.5).float()
    LCCoLoss()(model(images, masks=masks), masks).total.backward()
    assert all(p.grad is None for p in clip.model.parameters())
    assert any(p.grad is not None for p in model.parameters())


def test_to_double_moves_the_hidden_model_and_the_text_bank():
    clip = make_tiny_clip()
    images = torch.rand(1, 2, 3, 32, 32)
    reference = clip.encode_images(images)
    bank32 = clip.text_bank
    assert bank32.dtype == torch.float32
    assert next(clip.model.parameters()).dtype == torch.float32

    out = clip.to(torch.float64)
    assert out is clip
    assert all(p.dtype == torch.float64 for p in clip.model.parameters())
    assert clip.text_bank.dtype == torch.float64
    torch.testing.assert_close(clip.text_bank.float(), bank32)
    emb = clip.encode_images(images)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.float(), reference, atol=1e-4, rtol=1e-4)

    fresh = make_tiny_clip().double()  # bank computed after the move
    assert next(fresh.model.parameters()).dtype == torch.float64
    assert fresh.text_bank.dtype == torch.float64
    torch.testing.assert_close(fresh.text_bank.float(), bank32)

    back = clip.float()
    assert next(back.model.parameters()).dtype == torch.float32
    assert back.text_bank.dtype == torch.float32


def test_embeddings_and_text_bank_share_a_dtype_after_a_dtype_move():
    # cosine similarity between image embeddings and the text bank is what every user of the
    # CLIP computes (clip_similarity, set_class_targets, LCCo.forward): the two must agree
    clip = make_tiny_clip().to(torch.float64)
    images = torch.rand(1, 2, 3, 32, 32)
    emb, tokens = clip.encode_images(images, dense=True)
    assert emb.dtype == clip.text_bank.dtype, (emb.dtype, clip.text_bank.dtype)
    assert tokens.dtype == clip.text_bank.dtype, (tokens.dtype, clip.text_bank.dtype)
    similarity = emb @ clip.text_bank.T
    assert similarity.shape == (1, 2, len(CLASSNAMES))


def test_lcco_moves_its_clip():
    model = tiny_lcco(use_correspondence=False)
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.clip.model.parameters())
    assert model.clip.text_bank.dtype == torch.float64


def test_text_bank_first_computed_in_inference_mode_works_with_autograd():
    clip = make_tiny_clip()
    with torch.inference_mode():
        assert clip.text_bank.shape == (len(CLASSNAMES), 32)
    # later, outside inference mode, a trainable head scores against the cached bank
    query = torch.randn(3, 32, requires_grad=True)
    (query @ clip.text_bank.T).sum().backward()
    torch.testing.assert_close(query.grad, clip.text_bank.sum(dim=0).expand(3, -1))
    assert clip.text_bank_computations == 1


# ---------------------------------------------------------------------------- images


def test_encode_images_shapes_and_norm(tiny_clip):
    images = torch.rand(2, 3, 3, 32, 32)
    emb = tiny_clip.encode_images(images)
    assert emb.shape == (2, 3, 32)
    assert _unit_norm(emb)
    assert not emb.requires_grad


def test_dense_tokens_of_the_vit(tiny_clip):
    images = torch.rand(2, 3, 3, 32, 32)
    emb, tokens = tiny_clip.encode_images(images, dense=True)
    assert emb.shape == (2, 3, 32)
    assert tokens.shape == (2, 3, 32, 32 // 8, 32 // 8)
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(emb, tiny_clip.encode_images(images), atol=1e-5, rtol=0)


def test_dense_tokens_of_the_vit_are_the_projected_patch_tokens(tiny_clip):
    visual = tiny_clip.model.visual
    images = torch.rand(1, 2, 3, 32, 32)
    _, tokens = tiny_clip.encode_images(images, dense=True)
    x = tiny_clip.preprocess(images)
    captured = {}
    handle = visual.ln_post.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    try:
        with torch.no_grad():
            visual(x)
    finally:
        handle.remove()
    patches = captured["x"][:, 1:] @ visual.proj  # drop the class token, project to D
    expected = patches.view(2, 4, 4, 32).permute(0, 3, 1, 2).reshape(1, 2, 32, 4, 4)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_dense_tokens_of_the_resnet():
    clip = make_tiny_clip(model_name=TINY_CLIP_RN)
    assert clip.image_size == (64, 64)
    images = torch.rand(2, 2, 3, 40, 70)
    emb, tokens = clip.encode_images(images, dense=True)
    assert emb.shape == (2, 2, 32)
    assert tokens.shape == (2, 2, 32, 2, 2)
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(emb, clip.encode_images(images), atol=1e-5, rtol=0)
    assert _unit_norm(emb)


@pytest.mark.parametrize("size", [(17, 45), (32, 32), (1, 1), (100, 7)])
def test_any_input_size_works(tiny_clip, size):
    images = torch.rand(1, 2, 3, *size)
    emb = tiny_clip.encode_images(images)
    assert emb.shape == (1, 2, 32)
    assert torch.isfinite(emb).all()
    assert _unit_norm(emb)
    _, tokens = tiny_clip.encode_images(images, dense=True)
    assert tokens.shape == (1, 2, 32, 4, 4)


@given(n=st.integers(1, 4), b=st.integers(1, 2), seed=st.integers(0, 2**31 - 1))
def test_permuting_images_permutes_embeddings(tiny_clip, n, b, seed):
    torch.manual_seed(seed)
    images = torch.rand(b, n, 3, 20, 24)
    perm = torch.randperm(n)
    emb = tiny_clip.encode_images(images)
    emb_perm = tiny_clip.encode_images(images[:, perm])
    torch.testing.assert_close(emb_perm, emb[:, perm], atol=1e-5, rtol=1e-5)
    # sets of a batch are encoded independently
    torch.testing.assert_close(tiny_clip.encode_images(images[-1:]), emb[-1:], atol=1e-5, rtol=1e-5)


def test_images_change_the_embedding(tiny_clip):
    images = torch.rand(1, 2, 3, 32, 32)
    emb = tiny_clip.encode_images(images)
    assert not torch.allclose(emb[0, 0], emb[0, 1], atol=1e-4)


def test_preprocess_resizes_and_normalises(tiny_clip):
    mean = tiny_clip.mean.flatten()
    assert mean.shape == (3,)
    images = mean.view(1, 1, 3, 1, 1).expand(2, 3, 3, 20, 50).clone()
    x = tiny_clip.preprocess(images)
    assert x.shape == (6, 3, *tiny_clip.image_size)
    assert x.abs().max() < 1e-5

    ones = tiny_clip.preprocess(torch.ones(1, 1, 3, 32, 32))
    expected = ((1 - mean) / tiny_clip.std.flatten()).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(ones[0], expected)


def test_clip_statistics_default_to_openai(tiny_clip):
    torch.testing.assert_close(tiny_clip.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    torch.testing.assert_close(tiny_clip.std.flatten(), torch.tensor([0.26862954, 0.26130258, 0.27577711]))
    assert tiny_clip.image_size == (32, 32)


# ---------------------------------------------------------------------------- construction


@pytest.mark.parametrize("filename", ["w.pt", "w.safetensors"])
def test_local_weights_file(tiny_clip, tmp_path, filename):
    path = tmp_path / filename
    state = {k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)

    torch.manual_seed(99)  # a different random init than the fixture's, overwritten by the file
    loaded = FrozenClip.from_name(TINY_CLIP, pretrained=str(path), classnames=CLASSNAMES)
    assert loaded.source["pretrained"] == str(path)
    torch.testing.assert_close(loaded.text_bank, tiny_clip.text_bank, atol=0, rtol=0)
    images = torch.rand(2, 2, 3, 30, 40)
    torch.testing.assert_close(loaded.encode_images(images), tiny_clip.encode_images(images), atol=0, rtol=0)
    # a Path works as well as a str
    again = FrozenClip.from_name(TINY_CLIP, pretrained=path, classnames=CLASSNAMES)
    torch.testing.assert_close(again.text_bank, tiny_clip.text_bank, atol=0, rtol=0)


def test_random_weights_differ_from_a_loaded_file(tiny_clip):
    torch.manual_seed(99)
    other = FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=CLASSNAMES)
    assert not torch.allclose(other.text_bank, tiny_clip.text_bank)


def test_wrapping_an_open_clip_model():
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    model.train()
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    clip = FrozenClip(model, tokenizer, classnames=["cat", "dog"], model_name=TINY_CLIP)
    assert clip.model is model
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert clip.source["model_name"] == TINY_CLIP
    assert clip.image_size == (32, 32)
    assert clip.text_bank.shape == (2, 32)
    emb, tokens = clip.encode_images(torch.rand(1, 3, 3, 32, 32), dense=True)
    assert emb.shape == (1, 3, 32) and tokens.shape == (1, 3, 32, 4, 4)
    assert "coseg-test-tiny" in repr(clip)


def test_default_vocabulary():
    clip = FrozenClip.from_name(TINY_CLIP, pretrained=None)
    assert clip.classnames == DEFAULT_VOCABULARY
    assert clip.num_prompts == 92
    assert clip.text_bank.shape == (92, 32)


# ---------------------------------------------------------------------------- errors


def test_unknown_model_name():
    with pytest.raises(CosegValueError, match="no-such-model") as info:
        FrozenClip.from_name("no-such-model", pretrained=None, classnames=CLASSNAMES)
    assert isinstance(info.value, ValueError)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(CosegValueError, match="does not exist"):
        FrozenClip.from_name(TINY_CLIP, pretrained=str(missing), classnames=CLASSNAMES)
    with pytest.raises(CosegValueError, match="does not exist"):
        FrozenClip.from_name(TINY_CLIP, pretrained=str(tmp_path / "nested" / "weights"), classnames=CLASSNAMES)


def test_unknown_pretrained_tag():
    with pytest.raises(WeightsUnavailableError) as info:
        FrozenClip.from_name(TINY_CLIP, pretrained="no-such-tag", classnames=CLASSNAMES)
    message = str(info.value)
    assert "no-such-tag" in message
    assert "pretrained=None" in message
    assert "file" in message
    assert isinstance(info.value, RuntimeError)


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match=r"broken\.pt"):
        FrozenClip.from_name(TINY_CLIP, pretrained=str(path), classnames=CLASSNAMES)


@pytest.mark.parametrize(
    ("classnames", "templates", "match"),
    [
        ([], ("a photo of a {}.",), "empty"),
        (["cat"], [], "empty"),
        (["cat"], ["a photo of a cat."], "'a photo of a cat.'"),
        (["cat"], ["{} and {}"], r"\{\}"),
        (["cat", "dog", "cat"], ("a photo of a {}.",), "cat"),
        ("cat", ("a photo of a {}.",), "single string"),
        (["cat"], "a photo of a {}.", "single string"),
        (["cat", ""], ("a photo of a {}.",), "non-empty"),
        (["cat", 3], ("a photo of a {}.",), "3"),
    ],
)
def test_bad_vocabulary(classnames, templates, match):
    clip = make_tiny_clip()
    with pytest.raises(CosegValueError, match=match):
        clip.set_vocabulary(classnames, templates)
    # a rejected vocabulary leaves the old one in place
    assert clip.classnames == CLASSNAMES
    with pytest.raises(CosegValueError):
        FrozenClip.from_name(TINY_CLIP, pretrained=None, classnames=classnames, templates=templates)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.rand(3, 3, 32, 32), CosegShapeError, r"\(3, 3, 32, 32\)"),
        (torch.rand(3, 32, 32), CosegShapeError, r"\(3, 32, 32\)"),
        (torch.randint(0, 255, (1, 2, 3, 32, 32), dtype=torch.uint8), CosegValueError, "uint8"),
        (torch.full((1, 2, 3, 8, 8), float("nan")), CosegValueError, "NaN"),
        (torch.rand(1, 2, 3, 8, 8) * 255, CosegValueError, "255"),
        (torch.rand(1, 2, 1, 8, 8), CosegShapeError, r"\(1, 2, 1, 8, 8\)"),
        (torch.rand(1, 0, 3, 8, 8), CosegShapeError, r"\(1, 0, 3, 8, 8\)"),
        (torch.rand(0, 2, 3, 8, 8), CosegShapeError, r"\(0, 2, 3, 8, 8\)"),
    ],
)
def test_bad_images(tiny_clip, images, error, match):
    with pytest.raises(error, match=match):
        tiny_clip.encode_images(images)
    with pytest.raises(error):
        tiny_clip.encode_images(images, dense=True)


def test_bad_images_messages_give_a_fix(tiny_clip):
    with pytest.raises(CosegShapeError, match="unsqueeze"):
        tiny_clip.encode_images(torch.rand(3, 3, 32, 32))
    with pytest.raises(CosegValueError, match="255"):
        tiny_clip.encode_images(torch.randint(0, 255, (1, 2, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(CosegShapeError, match="got 1"):
        tiny_clip.encode_images(torch.rand(1, 2, 1, 8, 8))
