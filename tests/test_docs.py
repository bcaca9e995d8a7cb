"""The documentation covers the public API, and its offline link inventories are sound.

The docs build itself (``sphinx-build -W`` with ``nitpicky``) runs in CI after the tests; these
checks need no Sphinx and fail fast when a public name is added without documentation.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import re
import zlib
from pathlib import Path

import pytest

import cosegkit

DOCS = Path(__file__).resolve().parents[1] / "docs"

# Every package whose ``__all__`` is public API, as the API reference presents it.
PUBLIC_PACKAGES = [
    "cosegkit",
    "cosegkit.layers",
    "cosegkit.losses",
    "cosegkit.clip",
    "cosegkit.data",
    "cosegkit.metrics",
    "cosegkit.engine",
]

_DIRECTIVE = re.compile(
    r"^\.\. (?:py:)?(?P<kind>module|currentmodule|automodule|autoclass|autofunction|autodata|"
    r"class|function|data|exception|type)::\s*(?P<name>\S+)\s*$"
)
_OPTION = re.compile(r"^\s+:(?P<key>[\w-]+):\s*(?P<value>.*)$")


@functools.cache
def _load_inventories_module():
    spec = importlib.util.spec_from_file_location("external_inventories", DOCS / "_ext" / "external_inventories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_objects(rst: Path) -> tuple[list[object], set[str]]:
    """The objects an API page documents (by identity) and their qualified names.

    Reads ``.. module::``/``.. currentmodule::`` context, the autodoc directives, plain
    ``.. data::``/``.. py:type::`` entries, and ``automodule``'s ``:members:`` list (all of
    the module's ``__all__`` when the list is empty, none under ``:no-members:``).
    """
    objects: list[object] = []
    names: set[str] = set()
    module = ""
    lines = rst.read_text().splitlines()
    for i, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        kind, name = match["kind"], match["name"]
        options: dict[str, str] = {}
        for follow in lines[i + 1 :]:
            opt = _OPTION.match(follow)
            if not opt:
                break
            options[opt["key"]] = opt["value"]
        if kind in ("module", "currentmodule"):
            module = name
            continue
        qualified = name if "." in name and name.split(".")[0] == "cosegkit" else f"{module}.{name}"
        if kind == "automodule":
            module_obj = importlib.import_module(name)
            if "no-members" in options:
                members: list[str] = []
            elif options.get("members"):
                members = [m.strip() for m in options["members"].split(",")]
            else:
                members = list(getattr(module_obj, "__all__", []))
            for member in members:
                objects.append(getattr(module_obj, member))
                names.add(f"{name}.{member}")
            continue
        names.add(qualified)
        with contextlib.suppress(ImportError, AttributeError):  # e.g. a ``py:type`` alias
            objects.append(_load_inventories_module().resolve(qualified))
    return objects, names


def public_names() -> list[tuple[str, str, object]]:
    out = []
    for package in PUBLIC_PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            if name != "__version__":
                out.append((package, name, getattr(module, name)))
    return out


def test_public_names_are_found() -> None:
    names = [(package, name) for package, name, _ in public_names()]
    assert ("cosegkit", "LCCo") in names and ("cosegkit.engine", "train") in names
    assert len(names) > 100


def test_every_public_name_is_in_the_api_reference() -> None:
    objects, names = documented_objects(DOCS / "api.rst")
    ids = {id(obj) for obj in objects}
    missing = [
        f"{package}.{name}"
        for package, name, obj in public_names()
        if id(obj) not in ids and f"{package}.{name}" not in names
    ]
    assert not missing, f"public names missing from docs/api.rst: {missing}"


def test_the_api_check_notices_a_missing_name(tmp_path) -> None:
    page = tmp_path / "api.rst"
    page.write_text(".. module:: cosegkit.losses\n\n.. autofunction:: iou_loss\n")
    objects, names = documented_objects(page)
    assert cosegkit.iou_loss in objects and "cosegkit.losses.iou_loss" in names
    assert cosegkit.IoULoss not in objects


def test_every_public_class_and_function_has_a_runnable_example() -> None:
    """The public names and everything else the API reference documents (module members)."""
    documented, _ = documented_objects(DOCS / "api.rst")
    candidates = [(f"{p}.{n}", obj) for p, n, obj in public_names()]
    candidates += [
        (f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}", obj) for obj in documented
    ]
    without = sorted(
        {
            name
            for name, obj in candidates
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and ">>>" not in (inspect.getdoc(obj) or "")
        }
    )
    assert not without, f"public classes and functions without a >>> example: {without}"


def test_every_page_is_in_the_table_of_contents() -> None:
    index = (DOCS / "index.rst").read_text()
    toc = index.split(".. toctree::", 1)[1]
    entries = {line.strip() for line in toc.splitlines()[1:] if line.strip() and not line.strip().startswith(":")}
    pages = {p.stem for p in DOCS.glob("*.rst")} - {"index"}
    assert pages == entries


@pytest.mark.parametrize("entry", _load_inventories_module().EXTERNAL, ids=lambda e: e[2])
def test_external_link_targets_exist(entry) -> None:
    inv = _load_inventories_module()
    project, _role, name, page = entry
    assert project in inv.PROJECTS
    inv.resolve(name)  # raises if the name is misspelt
    assert not page.startswith(("http", "/"))


def test_inventories_are_readable(tmp_path) -> None:
    inv = _load_inventories_module()
    mapping = inv.write_inventories(tmp_path)
    assert set(mapping) == set(inv.PROJECTS)
    for base, path in mapping.values():
        header, _, compressed = Path(path).read_bytes().partition(b"compressed using zlib.\n")
        assert header.startswith(b"# Sphinx inventory version 2\n")
        rows = [line.split(" ") for line in zlib.decompress(compressed).decode().splitlines()]
        assert rows and all(len(r) == 5 and r[1].startswith("py:") for r in rows)
        assert base.startswith("https://") and base.endswith("/")
    torch_rows = zlib.decompress(Path(mapping["torch"][1]).read_bytes().split(b"zlib.\n", 1)[1]).decode()
    # autodoc spells torch.nn.Module by its defining module; both spellings link to one page
    assert "torch.nn.Module py:class 1 generated/torch.nn.Module.html#torch.nn.Module -" in torch_rows
    assert "torch.nn.modules.module.Module py:class 1 generated/torch.nn.Module.html#torch.nn.Module -" in torch_rows


def _offline_check():
    spec = importlib.util.spec_from_file_location("offline_check", DOCS / "_ext" / "offline_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_offline_check_finds_pages_that_load_from_other_hosts(tmp_path, capsys) -> None:
    """CI runs docs/_ext/offline_check.py on the built HTML; here it is shown to catch a CDN script."""
    check = _offline_check()
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="_static/furo.css"><link rel="canonical" href="https://example.org/">'
        '<script src="_static/mathjax/tex-chtml.js"></script><a href="https://pytorch.org">torch</a>'
    )
    assert check.main([str(tmp_path)]) == 0
    (tmp_path / "sub" / "equations.html").write_text(
        '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.com/a.css">'
    )
    assert check.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "sub/equations.html" in out and "cdn.jsdelivr.net" in out and "fonts.example.com" in out
    assert check.main([str(tmp_path / "missing")]) == 2


def test_the_docs_ship_their_own_mathjax() -> None:
    """The docs build copies MathJax into the pages (the docs extra installs it); no CDN."""
    conf = (DOCS / "conf.py").read_text()
    assert '"sphinx-mathjax-offline"' in conf
    pyproject = (DOCS.parent / "pyproject.toml").read_text()
    assert "sphinx-mathjax-offline" in pyproject.split("docs = [", 1)[1].split("]", 1)[0]
    assert "offline_check.py" in (DOCS.parent / ".ci" / "run").read_text()
