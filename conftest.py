"""Test configuration: offline hubs, hypothesis profiles, the tiny test CLIPs, shared fixtures.

At the repository root so that the package's doctests see the tiny CLIP configs too.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup otherwise retries for ~45 s

import pytest
import torch
from hypothesis import settings

from tests._support import make_tiny_clip, register_tiny_clips

settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=10)
settings.register_profile("thorough", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

register_tiny_clips()

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per worker: workers x threads must not oversubscribe the cores
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_clip():
    """A random tiny ViT CLIP (D = 32) over eight class names, shared by the session."""
    return make_tiny_clip()
