"""The prompts of zero-shot co-segmentation: templates, synonyms and background words.

CLIP-ES scores an image against a text bank of foreground classes and background words and
takes a softmax over that bank, so that raising the target class lowers every other class
and the background. Each entry of the bank is one prompt: a template filled with a class
name, or with a comma-separated list of the class's synonyms ("synonym fusion": the list is
embedded as one text), L2-normalised, averaged over the templates and normalised again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from cosegkit.errors import CosegValueError

__all__ = [
    "BACKGROUND_WORDS",
    "CLIP_ES_TEMPLATES",
    "DEFAULT_SYNONYMS",
    "encode_prompts",
    "prompt_texts",
]

#: The template CLIP-ES uses for foreground classes and background words alike.
CLIP_ES_TEMPLATES: tuple[str, ...] = ("a clean origami {}.",)

#: CLIP-ES's 25 background words (its PASCAL-VOC list), scenery and things that sit around
#: objects. A word that is also a foreground class is dropped from the bank (see
#: :class:`~cosegkit.zeroshot.ZeroShotCoseg`).
BACKGROUND_WORDS: tuple[str, ...] = (
    "ground",
    "land",
    "grass",
    "tree",
    "building",
    "wall",
    "sky",
    "lake",
    "water",
    "river",
    "sea",
    "railway",
    "railroad",
    "keyboard",
    "helmet",
    "cloud",
    "house",
    "mountain",
    "ocean",
    "road",
    "rock",
    "street",
    "valley",
    "bridge",
    "sign",
)

#: Synonyms fused into one prompt, for names of the default vocabulary
#: (:data:`~cosegkit.clip.DEFAULT_VOCABULARY`), after CLIP-ES's prompt words for PASCAL-VOC
#: and COCO, which join synonyms with a comma (``"person with clothes,people,human"``) or a
#: space (``"bird avian"``, kept as one entry). A name not listed is its own prompt.
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person with clothes", "people", "human"),
    "bird": ("bird avian",),
    "chair": ("chair seat",),
    "tv": ("tvmonitor screen",),
    "backpack": ("backpack", "bag"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"),
    "tie": ("necktie",),
    "spoon": ("dessertspoon",),
    "remote": ("remote control",),
    "hair drier": ("hairdrier", "blowdrier"),
}


def _check_names(names: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise CosegValueError(f"the {what} must be a list of strings, not the single string {names!r}")
    names = tuple(names)
    if not names:
        raise CosegValueError(f"the {what} is empty; give at least one name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise CosegValueError(f"the {what} must hold non-empty strings, got {bad[:5]}")
    return names


def prompt_texts(
    names: Sequence[str],
    templates: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """The prompt strings, name-major: ``len(names) * len(templates)`` of them.

    Example:
        >>> from cosegkit.zeroshot.prompts import prompt_texts
        >>> prompt_texts(["cat", "person"], ["a clean origami {}."], {"person": ["person with clothes", "people"]})
        ['a clean origami cat.', 'a clean origami person with clothes,people.']
    """
    names = _check_names(names, "name list")
    templates = _check_names(templates, "template list")
    for t in templates:
        if t.count("{}") != 1:
            raise CosegValueError(f"each template needs exactly one '{{}}' for the class name, got {t!r}")
    synonyms = synonyms or {}
    words = [",".join(synonyms[n]) if synonyms.get(n) else n for n in names]
    return [t.format(w) for w in words for t in templates]


@torch.no_grad()
def encode_prompts(
    clip,
    names: Sequence[str],
    templates: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> torch.Tensor:
    """One L2-normalised embedding per name, ``(len(names), D)``, averaged over the templates.

    Args:
        clip: a :class:`~cosegkit.clip.FrozenClip`.
        names: class names or background words.
        templates: templates with one ``{}``.
        synonyms: names to replace by a comma-joined synonym list.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from cosegkit.testing import register_tiny_clips
        >>> from cosegkit.clip import FrozenClip
        >>> from cosegkit.zeroshot.prompts import encode_prompts
        >>> _ = register_tiny_clips()
        >>> clip = FrozenClip.from_name("coseg-test-tiny", pretrained=None, classnames=["cat", "dog"])
        >>> templates = ["a photo of a {}.", "a clean origami {}."]
        >>> bank = encode_prompts(clip, ["cat", "dog", "person"], templates, {"person": ["people", "human"]})
        >>> bank.shape, bank.norm(dim=-1).round(decimals=4).tolist()  # one unit vector per name
        (torch.Size([3, 32]), [1.0, 1.0, 1.0])

        Each template's embedding, averaged and normalised again; a synonym list is one text:

        >>> each = [encode_prompts(clip, ["cat"], [t]) for t in templates]
        >>> bool(torch.allclose(bank[:1], F.normalize(each[0] + each[1], dim=-1), atol=1e-6))
        True
        >>> bool(torch.allclose(bank[2:], encode_prompts(clip, ["people,human"], templates), atol=1e-6))
        True
    """
    texts = prompt_texts(names, templates, synonyms)
    emb = rearrange(clip.encode_text(texts), "(p t) d -> p t d", t=len(tuple(templates)))
    return F.normalize(emb.mean(dim=1), dim=-1)
