"""The layers used alone are the layers of the assembled model: one variant table, the same names.

Each layer built with its defaults (only the sizes that ``LCCo`` passes given) must be the
sub-module that ``LCCo()`` builds: the same settings and, with the same weights, the same
outputs. The same for ``variant="paper"`` and for settings that override a variant.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import cosegkit.models.lcco as lcco_module
from cosegkit import ClipInteraction, ClipRegularization, CosegValueError, ImageSetCorrespondence
from cosegkit.layers import variants
from tests._support import tiny_lcco

#: LCCo's own defaults for the sizes the layers share with it
HEADS, CLIP_HEADS, TOP_K = 8, 8, 5


def model(**settings):
    return tiny_lcco(heads=HEADS, clip_heads=CLIP_HEADS, top_k=TOP_K, **settings).eval()


def layers_alone(m, **layer_settings) -> dict[str, torch.nn.Module]:
    """The three layers built alone with the sizes ``m`` gives them and the settings given here."""
    # LCCo's ``residual`` is the CLIP modules'; ISFC's own residual is LCCo's ``correspondence_residual``
    isfc_settings = {k: v for k, v in layer_settings.items() if k == "variant"}
    if "correspondence_residual" in layer_settings:
        isfc_settings["residual"] = layer_settings["correspondence_residual"]
    clip_settings = {k: v for k, v in layer_settings.items() if k != "correspondence_residual"}
    d, p = m.clip.embed_dim, m.clip.num_prompts
    inter_settings = {k: v for k, v in clip_settings.items() if k not in ("class_pool", "class_prior")}
    return {
        "correspondence": ImageSetCorrespondence(m.correspondence.channels, **isfc_settings),
        "interaction": ClipInteraction(m.interaction.channels, d, **inter_settings),
        "regularization": ClipRegularization(m.regularization.channels, d, p, **clip_settings),
    }


def assert_same_modules(m, alone: dict[str, torch.nn.Module]) -> None:
    """Same settings and structure (the repr holds every setting), and the same outputs with the same weights."""
    g = torch.Generator().manual_seed(0)
    d, p = m.clip.embed_dim, m.clip.num_prompts
    text = torch.randn(p, d, generator=g)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    for name, layer in alone.items():
        inside = getattr(m, name)
        assert repr(layer) == repr(inside), name
        layer.load_state_dict(inside.state_dict())
        layer.eval()
        feats = torch.randn(2, 3, inside.channels, 3, 4, generator=g)
        if name == "correspondence":
            args = (feats,)
        elif name == "interaction":
            args = (feats, torch.randn(2, 3, d, generator=g), text)
        else:
            args = (feats, torch.randn(2, 3, p, generator=g), text)
        with torch.no_grad():
            ours, theirs = layer(*args, valid), inside(*args, valid)
        as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
        for a, b in zip(as_tuple(ours), as_tuple(theirs), strict=True):
            assert torch.equal(a, b), name


def test_layers_with_their_defaults_are_the_modules_of_lcco() -> None:
    m = model()
    alone = layers_alone(m)
    assert_same_modules(m, alone)
    default = variants.VARIANTS["default"]
    assert alone["correspondence"].residual is default["correspondence_residual"] is True
    assert alone["interaction"].residual and alone["interaction"].unit_scale
    reg = alone["regularization"]
    assert (reg.residual, reg.unit_scale, reg.class_pool, reg.class_prior) == (True, True, "mean", 3.0)
    assert alone["interaction"].top_k == TOP_K and alone["interaction"].heads == CLIP_HEADS


def test_paper_variant_of_the_layers_is_the_paper_variant_of_lcco() -> None:
    m = model(variant="paper")
    alone = layers_alone(m, variant="paper")
    assert_same_modules(m, alone)
    assert not alone["correspondence"].residual and not alone["interaction"].residual
    assert alone["regularization"].class_pool == "max" and not alone["regularization"].residual
    # and it is not what the defaults build
    assert repr(alone["regularization"]) != repr(layers_alone(m)["regularization"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"variant": "paper", "residual": True},
        {"variant": "paper", "class_pool": "mean", "correspondence_residual": True},
        {"residual": False, "correspondence_residual": False},
        {"unit_scale": False, "class_prior": 0.0},  # False and 0 override, they are not "unset"
        {"variant": "paper", "unit_scale": False, "class_prior": 0.0},  # the printed form at its most literal
    ],
)
def test_settings_override_the_variant_one_by_one_as_in_lcco(overrides: dict) -> None:
    m = model(**overrides)
    alone = layers_alone(m, **overrides)
    assert_same_modules(m, alone)
    expected = variants.get_variant(overrides.get("variant", "default"))
    expected.update({k: v for k, v in overrides.items() if k != "variant"})
    reg = alone["regularization"]
    assert alone["correspondence"].residual == expected["correspondence_residual"]
    assert (alone["interaction"].residual, alone["interaction"].unit_scale) == (
        expected["residual"],
        expected["unit_scale"],
    )
    assert (reg.residual, reg.unit_scale, reg.class_pool, reg.class_prior) == (
        expected["residual"],
        expected["unit_scale"],
        expected["class_pool"],
        expected["class_prior"],
    )


def test_one_table_for_the_layers_and_the_model() -> None:
    assert lcco_module.VARIANTS is variants.VARIANTS
    assert lcco_module.get_variant is variants.get_variant
    from cosegkit.models import VARIANTS, get_variant

    assert VARIANTS is variants.VARIANTS and get_variant("paper") == variants.VARIANTS["paper"]


def test_unknown_variant_and_setting_values_are_refused() -> None:
    for build in (
        lambda: ImageSetCorrespondence(8, heads=2, variant="best"),
        lambda: ClipInteraction(8, 16, heads=4, variant="best"),
        lambda: ClipRegularization(8, 16, 10, variant="best"),
    ):
        with pytest.raises(KeyError, match=r"unknown LCCo variant 'best'; choose one of \['default', 'paper'\]"):
            build()
    with pytest.raises(CosegValueError, match=r"class_pool must be one of \['max', 'mean'\], got 'median'"):
        ClipRegularization(8, 16, 10, class_pool="median")
    with pytest.raises(CosegValueError, match="class_prior must be non-negative, got -1.0"):
        ClipRegularization(8, 16, 10, class_prior=-1)
    with pytest.raises(KeyError, match="unknown variant settings"):
        variants.resolve_settings("default", pool="max")


@pytest.mark.parametrize(("old", "new", "value"), [("pool", "class_pool", "max"), ("prior", "class_prior", 1.5)])
def test_deprecated_keyword_names_warn_and_still_work(old: str, new: str, value) -> None:
    with pytest.warns(DeprecationWarning, match=f"ClipRegularization's '{old}' is deprecated.*use '{new}'"):
        module = ClipRegularization(8, 16, 10, **{old: value})
    assert getattr(module, new) == value  # the old keyword sets the setting
    torch.manual_seed(0)
    renamed = ClipRegularization(8, 16, 10, **{new: value})
    assert repr(renamed) == repr(module)
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated.*use '{new}'"):
        assert getattr(module, old) == value  # and the old attribute reads it
    with pytest.raises(CosegValueError, match=f"got both {old}=.* and {new}=.*; pass {new} only"):
        ClipRegularization(8, 16, 10, **{old: value, new: value})


def test_the_new_names_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = ClipRegularization(8, 16, 10, class_pool="max", class_prior=0.0, variant="paper")
        ImageSetCorrespondence(8, heads=2, variant="paper", residual=True)
        ClipInteraction(8, 16, heads=4, variant="paper", unit_scale=False)
        model(variant="paper", class_pool="mean")
    assert module.class_pool == "max" and module.class_prior == 0.0
