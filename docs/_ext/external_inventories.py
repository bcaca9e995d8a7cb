"""Offline intersphinx inventories for the external names the documentation links to.

The docs must build with no network (``sphinx-build -W`` in CI, ``nitpicky = True``), so
intersphinx cannot download ``objects.inv`` from docs.python.org, pytorch.org, numpy.org or
lightning.ai. Instead, :data:`EXTERNAL` lists every external object the documentation refers
to, with the page that documents it upstream, and :func:`write_inventories` writes one Sphinx (version 2)
inventory per project from it at build time. Intersphinx then reads those files and links to
the real upstream pages.

Type hints make autodoc refer to some objects under the module that defines them rather than
the name their documentation uses (``torch.nn.modules.module.Module`` for ``torch.nn.Module``,
``numpy.random._generator.Generator`` for ``numpy.random.Generator``). Each entry is
imported, and its defining-module name is added as an alias to the same page, so both
spellings resolve.

To link a new external name: add it to :data:`EXTERNAL`. ``tests/test_docs.py`` imports every
entry, so a misspelt name fails the test suite rather than producing a dead link.
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

PROJECTS: dict[str, tuple[str, str, str]] = {
    # key: (project name, version, base URL); the base URL ends with "/"
    "python": ("Python", "3", "https://docs.python.org/3/"),
    "torch": ("PyTorch", "stable", "https://docs.pytorch.org/docs/stable/"),
    "numpy": ("NumPy", "stable", "https://numpy.org/doc/stable/"),
    "torchmetrics": ("PyTorch-Metrics", "stable", "https://lightning.ai/docs/torchmetrics/stable/"),
}

# (project, role, name, page). "$" in a page stands for the name (Sphinx's inventory shorthand).
EXTERNAL: list[tuple[str, str, str, str]] = [
    # Python: built-in types and exceptions
    ("python", "class", "int", "library/functions.html#$"),
    ("python", "class", "float", "library/functions.html#$"),
    ("python", "class", "bool", "library/functions.html#$"),
    ("python", "class", "str", "library/stdtypes.html#$"),
    ("python", "class", "bytes", "library/stdtypes.html#$"),
    ("python", "class", "tuple", "library/stdtypes.html#$"),
    ("python", "class", "list", "library/stdtypes.html#$"),
    ("python", "class", "dict", "library/stdtypes.html#$"),
    ("python", "class", "set", "library/stdtypes.html#$"),
    ("python", "class", "object", "library/functions.html#$"),
    ("python", "data", "None", "library/constants.html#$"),
    ("python", "exception", "Exception", "library/exceptions.html#$"),
    ("python", "exception", "ValueError", "library/exceptions.html#$"),
    ("python", "exception", "TypeError", "library/exceptions.html#$"),
    ("python", "exception", "RuntimeError", "library/exceptions.html#$"),
    ("python", "exception", "KeyError", "library/exceptions.html#$"),
    ("python", "exception", "OSError", "library/exceptions.html#$"),
    ("python", "exception", "FileNotFoundError", "library/exceptions.html#$"),
    ("python", "exception", "KeyboardInterrupt", "library/exceptions.html#$"),
    # Python: standard library
    ("python", "class", "pathlib.Path", "library/pathlib.html#$"),
    ("python", "class", "os.PathLike", "library/os.html#$"),
    ("python", "class", "collections.abc.Sequence", "library/collections.abc.html#$"),
    ("python", "class", "collections.abc.Mapping", "library/collections.abc.html#$"),
    ("python", "class", "collections.abc.Callable", "library/collections.abc.html#$"),
    ("python", "class", "collections.abc.Iterator", "library/collections.abc.html#$"),
    ("python", "class", "collections.abc.Iterable", "library/collections.abc.html#$"),
    ("python", "class", "typing.NamedTuple", "library/typing.html#$"),
    ("python", "class", "typing.Any", "library/typing.html#$"),
    # PyTorch
    ("torch", "class", "torch.Tensor", "tensors.html#$"),
    ("torch", "class", "torch.device", "tensor_attributes.html#$"),
    ("torch", "class", "torch.dtype", "tensor_attributes.html#$"),
    ("torch", "class", "torch.Generator", "generated/$.html#$"),
    ("torch", "function", "torch.topk", "generated/$.html#$"),
    ("torch", "function", "torch.compile", "generated/$.html#$"),
    ("torch", "class", "torch.autocast", "amp.html#$"),
    ("torch", "class", "torch.nn.Module", "generated/$.html#$"),
    ("torch", "method", "torch.nn.Module.parameters", "generated/torch.nn.Module.html#$"),
    ("torch", "method", "torch.nn.Module.state_dict", "generated/torch.nn.Module.html#$"),
    ("torch", "method", "torch.nn.Module.load_state_dict", "generated/torch.nn.Module.html#$"),
    ("torch", "class", "torch.nn.Conv2d", "generated/$.html#$"),
    ("torch", "class", "torch.nn.Linear", "generated/$.html#$"),
    ("torch", "class", "torch.nn.LayerNorm", "generated/$.html#$"),
    ("torch", "function", "torch.nn.functional.scaled_dot_product_attention", "generated/$.html#$"),
    ("torch", "function", "torch.nn.functional.interpolate", "generated/$.html#$"),
    ("torch", "function", "torch.nn.functional.binary_cross_entropy", "generated/$.html#$"),
    ("torch", "class", "torch.nn.parallel.DistributedDataParallel", "generated/$.html#$"),
    ("torch", "class", "torch.optim.Optimizer", "optim.html#$"),
    ("torch", "class", "torch.utils.data.Dataset", "data.html#$"),
    ("torch", "class", "torch.utils.data.Sampler", "data.html#$"),
    ("torch", "class", "torch.utils.data.DataLoader", "data.html#$"),
    # NumPy
    ("numpy", "class", "numpy.ndarray", "reference/generated/$.html#$"),
    ("numpy", "class", "numpy.random.Generator", "reference/random/generator.html#$"),
    (
        "numpy",
        "class",
        "numpy.random.SeedSequence",
        "reference/random/bit_generators/generated/$.html#$",
    ),
    # torchmetrics (MetricCollection's own entry is ``:noindex:`` upstream: link the page)
    ("torchmetrics", "class", "torchmetrics.Metric", "references/metric.html#$"),
    ("torchmetrics", "class", "torchmetrics.MetricCollection", "references/collection.html"),
]

_ROLE_PREFIX = {"class": "py:class", "exception": "py:exception", "function": "py:function",
                "method": "py:method", "data": "py:data"}


def resolve(name: str) -> object:
    """Import the object that ``name`` (a dotted path, or a builtin's name) refers to."""
    import builtins

    if "." not in name:
        if name == "None":
            return None
        return getattr(builtins, name)
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {name!r}")


def _defining_name(name: str, obj: object) -> str | None:
    """The ``module.qualname`` spelling autodoc uses for ``obj``, if it differs from ``name``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "builtins":
        return None
    alias = f"{module}.{qualname}"
    return alias if alias != name else None


def entries(project: str) -> list[tuple[str, str, str]]:
    """``(name, domain:role, page)`` rows of one project's inventory, aliases included."""
    rows: list[tuple[str, str, str]] = []
    for proj, role, name, page in EXTERNAL:
        if proj != project:
            continue
        page = page.replace("$", name)
        rows.append((name, _ROLE_PREFIX[role], page))
        alias = _defining_name(name, resolve(name)) if role in ("class", "exception") else None
        if alias is not None:
            rows.append((alias, _ROLE_PREFIX[role], page))
    return rows


def write_inventories(folder: str | Path) -> dict[str, tuple[str, str]]:
    """Write ``<project>.inv`` for every project into ``folder``.

    Returns:
        An ``intersphinx_mapping`` that points each project's base URL at its local file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, tuple[str, str]] = {}
    for key, (project, version, base) in PROJECTS.items():
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {project}\n"
            f"# Version: {version}\n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        body = "".join(f"{name} {role} 1 {page} -\n" for name, role, page in entries(key))
        path = folder / f"{key}.inv"
        path.write_bytes(header.encode() + zlib.compress(body.encode()))
        mapping[key] = (base, str(path))
    return mapping
