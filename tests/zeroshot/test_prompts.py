"""Prompts of the zero-shot bank: synonym fusion, template averaging, CLIP-ES's word lists."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cosegkit.clip import DEFAULT_VOCABULARY
from cosegkit.zeroshot import (
    BACKGROUND_WORDS,
    CLIP_ES_TEMPLATES,
    DEFAULT_SYNONYMS,
    ZeroShotCoseg,
    encode_prompts,
    prompt_texts,
)
from tests.zeroshot._support import build_clip

TOL = dict(atol=1e-5, rtol=1e-5)

#: CLIP-ES's ``BACKGROUND_CATEGORY`` (clip_text.py, its PASCAL-VOC list), in its order
CLIP_ES_BACKGROUND = (
    "ground land grass tree building wall sky lake water river sea railway railroad keyboard helmet "
    "cloud house mountain ocean road rock street valley bridge sign"
).split()


def by_hand(clip, texts: list[str], templates: int) -> torch.Tensor:
    """open_clip's text tower on the texts; each L2-normalised, averaged per name, normalised again."""
    emb = clip.model.encode_text(clip.tokenizer(texts))
    emb = F.normalize(emb, dim=-1).view(len(texts) // templates, templates, -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def test_prompt_texts_are_name_major_with_fused_synonyms() -> None:
    names = ["cat", "person", "tv"]
    templates = ["a photo of a {}.", "a {} in the scene"]
    synonyms = {"person": ["person with clothes", "people", "human"], "tv": ("tv monitor", "screen"), "dog": ["hound"]}
    assert prompt_texts(names, templates, synonyms) == [
        "a photo of a cat.",
        "a cat in the scene",
        "a photo of a person with clothes,people,human.",
        "a person with clothes,people,human in the scene",
        "a photo of a tv monitor,screen.",
        "a tv monitor,screen in the scene",
    ]
    assert prompt_texts(names, templates) == prompt_texts(names, templates, {})  # no synonyms: the names
    assert prompt_texts(["cat"], ["{}"], {"cat": []}) == ["cat"]  # an empty synonym list keeps the name


@given(
    names=st.lists(st.text("abcdefgh ", min_size=1, max_size=6).filter(str.strip), min_size=1, max_size=4),
    templates=st.lists(st.sampled_from(["a {}.", "{} here", "the {} on a table", "{}"]), min_size=1, max_size=3),
)
def test_prompt_texts_count_and_order(names: list[str], templates: list[str]) -> None:
    texts = prompt_texts(names, templates)
    assert texts == [t.format(n) for n in names for t in templates]


@pytest.mark.parametrize(
    "templates", [("a clean origami {}.",), ("a photo of a {}.", "a rendering of a weird {}.", "{}")]
)
def test_encode_prompts_averages_normalised_template_embeddings(tiny_vit, templates) -> None:
    names = ["cat", "person", "tie"]
    out = encode_prompts(tiny_vit, names, templates, DEFAULT_SYNONYMS)
    words = ["cat", "person with clothes,people,human", "necktie"]
    texts = [t.format(w) for w in words for t in templates]
    torch.testing.assert_close(out, by_hand(tiny_vit, texts, len(templates)), **TOL)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), **TOL)
    assert not out.requires_grad
    if len(templates) > 1:  # the average is not any one template's embedding
        single = encode_prompts(tiny_vit, names, templates[:1], DEFAULT_SYNONYMS)
        assert not torch.allclose(out, single, atol=1e-3)


def test_synonym_fusion_changes_the_embedding(tiny_vit) -> None:
    fused = encode_prompts(tiny_vit, ["person"], CLIP_ES_TEMPLATES, DEFAULT_SYNONYMS)
    plain = encode_prompts(tiny_vit, ["person"], CLIP_ES_TEMPLATES, {})
    torch.testing.assert_close(plain, by_hand(tiny_vit, ["a clean origami person."], 1), **TOL)
    expected = by_hand(tiny_vit, ["a clean origami person with clothes,people,human."], 1)
    torch.testing.assert_close(fused, expected, **TOL)
    assert not torch.allclose(fused, plain, atol=1e-3)


def test_zero_shot_banks_are_the_encoded_prompts(tiny_vit) -> None:
    classnames = ["cat", "person", "bird", "sky"]
    zs = ZeroShotCoseg(tiny_vit, classnames=classnames)  # "sky" is a class here: out of the background
    assert zs.classnames == tuple(classnames)
    assert zs.templates == CLIP_ES_TEMPLATES and zs.synonyms == DEFAULT_SYNONYMS
    assert zs.background == tuple(w for w in BACKGROUND_WORDS if w != "sky") and len(zs.background) == 24
    torch.testing.assert_close(
        zs.foreground_bank, encode_prompts(tiny_vit, classnames, CLIP_ES_TEMPLATES, DEFAULT_SYNONYMS), **TOL
    )
    texts = [f"a clean origami {w}." for w in ["cat", "person with clothes,people,human", "bird avian", "sky"]]
    torch.testing.assert_close(zs.foreground_bank, by_hand(tiny_vit, texts, 1), **TOL)
    background = by_hand(tiny_vit, [f"a clean origami {w}." for w in zs.background], 1)
    torch.testing.assert_close(zs.background_bank, background, **TOL)
    # synonyms={} turns fusion off; custom templates reach both banks
    none = ZeroShotCoseg(tiny_vit, classnames=classnames, synonyms={}, templates=["a {}.", "the {}"])
    texts = [t.format(w) for w in classnames for t in ("a {}.", "the {}")]
    torch.testing.assert_close(none.foreground_bank, by_hand(tiny_vit, texts, 2), **TOL)
    texts = [t.format(w) for w in none.background for t in ("a {}.", "the {}")]
    torch.testing.assert_close(none.background_bank, by_hand(tiny_vit, texts, 2), **TOL)


def test_default_vocabulary_is_the_clips() -> None:
    clip = build_clip("coseg-test-tiny", classnames=["cat", "dog"])
    assert ZeroShotCoseg(clip, background=["sky"]).classnames == ("cat", "dog")


def test_default_synonyms_name_default_vocabulary_classes() -> None:
    missing = sorted(set(DEFAULT_SYNONYMS) - set(DEFAULT_VOCABULARY))
    assert not missing, missing
    for name, words in DEFAULT_SYNONYMS.items():
        assert isinstance(words, tuple) and words and all(isinstance(w, str) and w.strip() for w in words), name


def test_background_words_are_clip_es_25() -> None:
    assert list(BACKGROUND_WORDS) == CLIP_ES_BACKGROUND
    assert len(BACKGROUND_WORDS) == len(set(BACKGROUND_WORDS)) == 25


def test_clip_es_template() -> None:
    assert CLIP_ES_TEMPLATES == ("a clean origami {}.",)
