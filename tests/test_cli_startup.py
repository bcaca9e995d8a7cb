"""``cosegkit --help`` answers without importing the heavy libraries.

The start-up time itself is measured by ``benchmarks/cli_startup.py`` (a table, never a timed
test); these tests hold what makes it fast: no parser imports torch, open_clip, smp,
torchmetrics or any other heavy library, and ``import cosegkit`` loads none of them until a
name is used.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cosegkit
from cosegkit import _names
from cosegkit.cli import build_parser

HEAVY = (
    "torch",
    "torchvision",
    "numpy",
    "PIL",
    "open_clip",
    "segmentation_models_pytorch",
    "timm",
    "torchmetrics",
    "einops",
    "matplotlib",
    "tensorboard",
    "gradio",
    "huggingface_hub",
)

_PROBE = """
import json, sys
from cosegkit.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(argv: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _subcommands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


def test_every_subcommand_is_probed():
    assert {"demo", "train", "evaluate", "segment", "export", "pretrain-clip"} <= set(_subcommands())


@pytest.mark.parametrize("argv", [["--help"], ["--version"]] + [[c, "--help"] for c in _subcommands()])
def test_help_imports_no_heavy_library(argv):
    assert _heavy_after(argv) == [], f"'cosegkit {' '.join(argv)}' imported heavy libraries"


def test_import_cosegkit_is_light_until_a_name_is_used():
    code = (
        "import json, sys, cosegkit\n"
        f"before = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "cosegkit.LCCo\n"
        "print(json.dumps([before, 'torch' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, torch_after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == []
    assert torch_after


def test_lazy_names_are_the_modules_objects():
    from cosegkit.models.lcco import LCCo
    from cosegkit.zeroshot import ZeroShotCoseg

    assert cosegkit.LCCo is LCCo
    assert cosegkit.ZeroShotCoseg is ZeroShotCoseg
    assert set(cosegkit.__all__) <= set(dir(cosegkit))
    for name in cosegkit.__all__:
        assert getattr(cosegkit, name) is not None
    assert cosegkit.engine.train is __import__("cosegkit.engine", fromlist=["train"]).train
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cosegkit.nope  # noqa: B018


def test_cli_choices_match_what_the_modules_implement():
    from cosegkit.data.readers import READERS
    from cosegkit.demo import DEMO_WORLDS
    from cosegkit.engine import config
    from cosegkit.zeroshot import BOX_PRECISIONS, CAM_SCALINGS, caa, coseg
    from cosegkit.zeroshot.towers import POS_INTERPOLATIONS, check_pos_interpolation

    assert _names.READER_NAMES == tuple(READERS)
    assert config.DATASETS == ("synthetic", "composite", *READERS)
    assert config.GENERATED_DATASETS == _names.GENERATED_DATASETS
    assert BOX_PRECISIONS is caa.BOX_PRECISIONS == _names.BOX_PRECISIONS
    assert CAM_SCALINGS is coseg.CAM_SCALINGS == _names.CAM_SCALINGS
    assert POS_INTERPOLATIONS == _names.POS_INTERPOLATIONS
    for mode in POS_INTERPOLATIONS:
        assert check_pos_interpolation(mode) == mode
    demo = next(a for a in build_parser()._subparsers._group_actions[0].choices["demo"]._actions if a.dest == "world")
    assert tuple(demo.choices) == tuple(DEMO_WORLDS)
