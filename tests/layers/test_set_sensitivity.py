"""At initialisation every set-aware module's output depends on the other images of its set.

The measure is the one of :func:`cosegkit.diagnostics.set_sensitivity`: keep image 0 of a set,
replace the others, and take the relative change of image 0's output,
``||out_0(set) - out_0(swapped)|| / ||out_0(set)||``.

The floor, ``1e-4``: a module that ignores the rest of its set scores 0 up to float32 round-off
(below ``1e-6`` here: the tests check that a single-image module does); freshly initialised
modules on unit-variance inputs score ``3e-3`` (ISFC with its residual, the weakest) to
``2e-2`` (CLIP interaction), the assembled default LCCo about ``0.3`` at its mask logits. A
floor of ``1e-4`` is two orders of magnitude above round-off and an order below the weakest
working module, so a change that silences a module fails and a change of initialisation does
not.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cosegkit import ClipInteraction, ClipRegularization, ImageSetCorrespondence, LCCo
from cosegkit.data.synthetic import SyntheticWorld
from cosegkit.diagnostics import set_sensitivity
from cosegkit.models import VARIANTS

FLOOR = 1e-4
MASK_FLOOR = 1e-5
C, D, P = 16, 16, 10


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a[:, 0] - b[:, 0]).norm() / a[:, 0].norm())


def swap_others(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    y = x.clone()
    y[:, 1:] = torch.randn(y[:, 1:].shape, generator=generator)
    return y


@given(n=st.integers(2, 5), seed=st.integers(0, 2**16), residual=st.booleans())
def test_correspondence_depends_on_the_rest_of_the_set(n: int, seed: int, residual: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = ImageSetCorrespondence(C, heads=2, residual=residual).eval()
    x = torch.randn(2, n, C, 3, 4, generator=g)
    with torch.no_grad():
        assert relative_change(module(x), module(swap_others(x, g))) > FLOOR


@given(n=st.integers(2, 5), seed=st.integers(0, 2**16), variant=st.sampled_from(sorted(VARIANTS)))
def test_interaction_depends_on_the_rest_of_the_set(n: int, seed: int, variant: str) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = ClipInteraction(C, D, top_k=3, heads=4, variant=variant).eval()
    feats, emb, text = torch.randn(2, n, C, 3, 4, generator=g), torch.randn(2, n, D, generator=g), torch.randn(P, D)
    with torch.no_grad():
        # only the other images' CLIP embeddings change: image 0's own inputs are the same
        assert relative_change(module(feats, emb, text).features, module(feats, swap_others(emb, g), text).features) > FLOOR


def regularization(variant: str, seed: int) -> ClipRegularization:
    torch.manual_seed(seed)
    return ClipRegularization(C, D, P, variant=variant).eval()


@given(n=st.integers(2, 5), seed=st.integers(0, 2**16), variant=st.sampled_from(sorted(VARIANTS)))
def test_regularization_depends_on_the_rest_of_the_set(n: int, seed: int, variant: str) -> None:
    """The class scores move with the other images; the features move whenever i* does."""
    g = torch.Generator().manual_seed(seed)
    module = regularization(variant, seed)
    feats, sim, text = torch.randn(2, n, C, 3, 4, generator=g), torch.randn(2, n, P, generator=g), torch.randn(P, D)
    with torch.no_grad():
        a, b = module(feats, sim, text), module(feats, swap_others(sim, g), text)
    assert float((a.class_probs - b.class_probs).norm() / a.class_probs.norm()) > FLOOR
    for s in range(2):
        if a.common_class[s] != b.common_class[s]:
            assert relative_change(a.features[s : s + 1], b.features[s : s + 1]) > FLOOR


@given(n=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_default_regularization_follows_the_set_when_it_agrees(n: int, seed: int) -> None:
    """With CLIP's ranking in eq. (7), other images that all point at one class move i* there."""
    g = torch.Generator().manual_seed(seed)
    module = regularization("default", seed)
    feats, text = torch.randn(1, n, C, 3, 4, generator=g), torch.randn(P, D)
    sim = 0.05 * torch.randn(1, n, P, generator=g)
    first, second = sim.clone(), sim.clone()
    first[:, :, 2] += 0.3  # every image looks like class 2
    second[:, 1:, 7] += 0.3  # image 0 unchanged, the others look like class 7
    second[:, 0, 2] += 0.3
    with torch.no_grad():
        a, b = module(feats, first, text), module(feats, second, text)
    assert int(a.common_class) == 2
    if n >= 3:  # the others outvote image 0
        assert int(b.common_class) == 7
        assert relative_change(a.features, b.features) > FLOOR


def synthetic_sets(seeds: range) -> torch.Tensor:
    world = SyntheticWorld(num_classes=8, image_size=64, seed=0)
    return torch.stack([world.sample_set(4, seed=s).images for s in seeds])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_assembled_model_passes_the_set_on_at_every_module(variant: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = LCCo(
        encoder_name="tu-test_convnext",
        encoder_weights=None,
        clip_model="coseg-test-tiny",
        clip_pretrained=None,
        decoder_channels=(32, 32, 16, 16),
        heads=4,
        clip_heads=4,
        top_k=3,
        variant=variant,
    ).eval()
    sens = set_sensitivity(model, synthetic_sets(range(2)), synthetic_sets(range(10, 12)))
    assert sens["correspondence.in"] == 0.0  # the encoder sees one image at a time
    # regularization's own dependence on the set goes through i* alone (the tests above): here
    # i* rarely moves, so its output carries what the earlier modules added
    for key in ("correspondence.out", "interaction.out", "regularization.in"):
        assert sens[key] > FLOOR, (key, sens)
    if variant == "default":
        # the mask logits, three decoder blocks further on: 2e-5 to 3e-2 over seeds. Eq. (8) with
        # the raw CLIP vectors (unit_scale=False) outputs little more than FFN_5's bias at
        # initialisation, and its masks score about 2e-7 (see the equations page), below this floor.
        assert sens["masks"] > MASK_FLOOR, sens


def test_single_image_model_scores_zero() -> None:
    torch.manual_seed(0)
    model = LCCo(
        encoder_name="tu-test_convnext",
        encoder_weights=None,
        decoder_channels=(32, 32, 16, 16),
        use_correspondence=False,
        use_interaction=False,
        use_regularization=False,
    ).eval()
    images, others = torch.rand(1, 3, 3, 32, 32), torch.rand(1, 3, 3, 32, 32)
    assert set_sensitivity(model, images, others) == {"masks": 0.0}
