"""Sphinx configuration for the cosegkit documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` after ``pip install -e ".[docs]"``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network

import cosegkit

project = "cosegkit"
author = "cosegkit developers"
copyright = "cosegkit developers"
version = release = cosegkit.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
nitpicky = False

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
