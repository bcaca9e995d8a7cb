"""Sphinx configuration for the cosegkit documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` after ``pip install -e ".[docs]"``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network

import cosegkit

sys.path.insert(0, str(Path(__file__).parent / "_ext"))
from external_inventories import write_inventories  # noqa: E402

project = "cosegkit"
author = "cosegkit developers"
copyright = "cosegkit developers"
version = release = cosegkit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax ships with the build: equations render without internet
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "_ext"]

# Every cross-reference must resolve (sphinx-build -W turns a dangling one into an error).
nitpicky = True
# Gradio (the optional app extra) publishes no Sphinx inventory to link its classes to
nitpick_ignore = [("py:class", "gradio.Blocks")]

# intersphinx reads inventories written here from docs/_ext/external_inventories.py, so the
# build needs no network; the links point at the real Python, PyTorch and NumPy pages.
intersphinx_mapping = write_inventories(Path(__file__).parent / "_build" / "inventories")

# autodoc: the package is installed (pip install -e .), nothing to mock
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True  # show DEFAULT_VOCABULARY, not the 92 names, in signatures
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False  # no torch.nn.Module.forward / train docstrings on overrides

# napoleon: Google style; attributes as :ivar: fields, so NamedTuple and dataclass fields are
# not described twice
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"cosegkit {release}"


def _public_bases(app, name, obj, options, bases):
    """Show a class's public ancestors instead of a private base (``_CosegScores``)."""
    resolved = []
    for base in bases:
        stack = [base]
        while stack:
            cls = stack.pop(0)
            if cls.__name__.startswith("_"):
                stack[:0] = list(cls.__bases__)
            elif cls not in resolved:
                resolved.append(cls)
    bases[:] = resolved


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
