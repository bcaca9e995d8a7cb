"""The readings of LCCo's three set-aware modules, by name: one table for the layers and the model.

:class:`~cosegkit.ImageSetCorrespondence`, :class:`~cosegkit.ClipInteraction`,
:class:`~cosegkit.ClipRegularization` and the assembled :class:`~cosegkit.LCCo` all take
``variant=`` and read their settings from :data:`VARIANTS`, so a layer built alone with its
defaults is the layer that ``LCCo()`` builds. A setting given explicitly overrides the
variant's value, one by one.

Each setting keeps its name everywhere, with one exception that the layers' docstrings state:
the correspondence module has a single residual, so :class:`~cosegkit.ImageSetCorrespondence`
calls it ``residual``; the assembled model holds two module families with a residual each and
calls that one ``correspondence_residual``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SETTING_TYPES", "VARIANTS", "get_variant", "resolve_settings"]

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {
        "residual": True,
        "correspondence_residual": True,
        "unit_scale": True,
        "class_pool": "mean",
        "class_prior": 3.0,
    },
    "paper": {
        "residual": False,
        "correspondence_residual": False,
        "unit_scale": True,
        "class_pool": "max",
        "class_prior": 3.0,
    },
}
"""The readings of the three modules that :class:`~cosegkit.LCCo` and the layers can be built
with, by name.

``"paper"`` is eq. (2), (5), (7) and (8) as printed, with the two things they leave open (the
size of the CLIP vectors in eq. 5 and 8, the form of MLP_3) read as in the default;
``"default"`` is what trains best. The equations page gives each difference and the
measurement behind it. Which layer reads which setting:

- ``residual``: :class:`~cosegkit.ClipInteraction` and :class:`~cosegkit.ClipRegularization`
  (their ``residual``);
- ``correspondence_residual``: :class:`~cosegkit.ImageSetCorrespondence` (its ``residual``);
- ``unit_scale``: :class:`~cosegkit.ClipInteraction` and :class:`~cosegkit.ClipRegularization`;
- ``class_pool``, ``class_prior``: :class:`~cosegkit.ClipRegularization`.
"""

SETTING_TYPES: dict[str, type] = {
    "residual": bool,
    "correspondence_residual": bool,
    "unit_scale": bool,
    "class_pool": str,
    "class_prior": float,
}
"""The type of each setting of :data:`VARIANTS`."""


def get_variant(name: str) -> dict[str, Any]:
    """The module settings of a variant of :data:`VARIANTS` (a copy).

    Raises:
        KeyError: an unknown name; the message lists the valid ones.

    Example:
        >>> from cosegkit.layers.variants import get_variant
        >>> get_variant("paper")["class_pool"], get_variant("default")["class_pool"]
        ('max', 'mean')
        >>> get_variant("best")
        Traceback (most recent call last):
            ...
        KeyError: "unknown LCCo variant 'best'; choose one of ['default', 'paper']"
    """
    if name not in VARIANTS:
        raise KeyError(f"unknown LCCo variant {name!r}; choose one of {sorted(VARIANTS)}")
    return dict(VARIANTS[name])


def resolve_settings(variant: str, **given: Any) -> dict[str, Any]:
    """A variant's settings with every given one that is not ``None`` put in its place.

    Only the settings named in ``given`` are returned when any are named; with none, all of
    them. Each value is cast to its type in :data:`SETTING_TYPES`.

    Raises:
        KeyError: an unknown variant or setting name.

    Example:
        >>> from cosegkit.layers.variants import resolve_settings
        >>> resolve_settings("paper", class_pool="mean", class_prior=None)
        {'class_pool': 'mean', 'class_prior': 3.0}
        >>> resolve_settings("default", correspondence_residual=False)
        {'correspondence_residual': False}
    """
    settings = get_variant(variant)
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise KeyError(f"unknown variant settings {unknown}; valid ones are {sorted(settings)}")
    names = list(given) or list(settings)
    return {k: SETTING_TYPES[k](settings[k] if given.get(k) is None else given[k]) for k in names}
