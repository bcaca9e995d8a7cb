"""Fixtures of the zero-shot tests: small random CLIPs, built once per session.

``deep_vit`` is a 3-layer ViT registered here (its config in a temporary folder), so that
the zero-shot pass's split "every block but the last without grad, the last with grad" and
the averaging of several blocks' attention are exercised; the 1-layer ``coseg-test-tiny``
of :mod:`cosegkit.testing` has no earlier block. ``sharp_vit`` is the same CLIP with peaked
attention, for tests of the refined maps (see :func:`tests.zeroshot._support.sharpen_attention`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from cosegkit.clip import FrozenClip
from tests._support import TINY_CLIP, TINY_CLIP_RN
from tests.zeroshot._support import DEEP_VIT, DEEP_VIT_CONFIG, build_clip, register, sharpen_attention


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """One intra-op thread while these tests run: their tensors are tiny, and on a shared
    2-core machine a second thread's waiting makes each call 5 to 40 times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def register_config(tmp_path_factory) -> Callable[[str, dict], str]:
    """``register_config(name, config)``: register an open_clip config (once), in a temporary folder."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    return lambda name, config: register(folder, name, config)


@pytest.fixture(scope="session")
def deep_vit(register_config) -> FrozenClip:
    """A random 3-layer ViT CLIP over :data:`tests._support.CLASSNAMES` (token pooling)."""
    return build_clip(register_config(DEEP_VIT, DEEP_VIT_CONFIG))


@pytest.fixture(scope="session")
def sharp_vit(register_config) -> FrozenClip:
    """The 3-layer ViT with its attention logits scaled by 16, like a trained CLIP's peaked attention."""
    return sharpen_attention(build_clip(register_config(DEEP_VIT, DEEP_VIT_CONFIG)), 4.0)


@pytest.fixture(scope="session")
def tiny_vit() -> FrozenClip:
    """The random 1-layer ``coseg-test-tiny`` ViT over the same class names."""
    return build_clip(TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_rn() -> FrozenClip:
    """The random ``coseg-test-tiny-rn`` ModifiedResNet (64 px, a 2 x 2 ``layer4`` grid)."""
    return build_clip(TINY_CLIP_RN)
