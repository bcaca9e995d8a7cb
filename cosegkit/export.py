"""LCCo inference for deployment: a ``torch.export`` program or an ONNX file, at a fixed set and image size.

The exported computation is :class:`InferenceGraph`: ``images (B, N, 3, S, S)`` RGB in
[0, 1] -> ``masks (B, N, 1, S, S)``, the per-pixel object probabilities (the sigmoid of
:attr:`LCCoOutput.masks <cosegkit.models.output.LCCoOutput>`), exactly what
:meth:`LCCo.predict <cosegkit.LCCo.predict>` returns for full sets. Everything the model needs
is inside: the encoder's normalisation, the CLIP image tower and the text bank (a constant;
the CLIP text tower is not exported). ``B``, ``N`` and ``S`` are fixed at export time.

ONNX needs the optional extra: ``pip install "cosegkit[export]"`` (onnx, onnxscript and
onnxruntime). From the command line::

    cosegkit export --model runs/pascal/model --out lcco.onnx --set-size 5 --image-size 224
    cosegkit export --model runs/pascal/model --out lcco.pt2 --set-size 5 --image-size 224   # torch.export

Running the ONNX file needs only onnxruntime and numpy::

    import onnxruntime as ort
    session = ort.InferenceSession("lcco.onnx", providers=["CPUExecutionProvider"])
    probs = session.run(["masks"], {"images": images})[0]   # images: float32 (1, 5, 3, 224, 224)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cosegkit.errors import CosegValueError
from cosegkit.models.lcco import refuse_class_oracle

__all__ = [
    "ExportReport",
    "InferenceGraph",
    "export_onnx",
    "export_program",
    "onnx_session",
    "run_onnx",
    "trained_size",
]

ONNX_INPUT, ONNX_OUTPUT = "images", "masks"
_EXTRA = 'pip install "cosegkit[export]"'


class InferenceGraph(nn.Module):
    """The computation that is exported: object probabilities of full sets.

    Example:
        >>> import torch
        >>> from cosegkit.export import InferenceGraph
        >>> from cosegkit.testing import tiny_model
        >>> model = tiny_model()
        >>> images = torch.rand(1, 3, 3, 32, 32)
        >>> graph = InferenceGraph(model)
        >>> torch.equal(graph(images), model.predict(images))
        True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images).masks)


DEFAULT_IMAGE_SIZE, DEFAULT_SET_SIZE = 224, 5


def trained_size(model: nn.Module, image_size: int | None = None, set_size: int | None = None) -> tuple[int, int]:
    """``(image_size, set_size)``: the given ones, else the model's own (:attr:`LCCo.image_size
    <cosegkit.LCCo.image_size>`, :attr:`LCCo.set_size <cosegkit.LCCo.set_size>`), else 224 and 5.

    Example:
        >>> from cosegkit.export import trained_size
        >>> from cosegkit.testing import tiny_model
        >>> model = tiny_model()
        >>> trained_size(model)  # a model that does not know how it was trained
        (224, 5)
        >>> model.image_size, model.set_size = 64, 4
        >>> trained_size(model), trained_size(model, image_size=96)
        ((64, 4), (96, 4))
    """
    stored_image, stored_set = (getattr(model, name, None) for name in ("image_size", "set_size"))
    if image_size is None:
        image_size = stored_image if isinstance(stored_image, int) else DEFAULT_IMAGE_SIZE
    if set_size is None:
        set_size = stored_set if isinstance(stored_set, int) else DEFAULT_SET_SIZE
    return image_size, set_size


def _example(batch_size: int, set_size: int, image_size: int, device: torch.device) -> torch.Tensor:
    for name, value in (("batch_size", batch_size), ("set_size", set_size), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CosegValueError(f"{name} must be a positive integer, got {value!r}")
    return torch.rand(batch_size, set_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(
        device
    )


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def export_program(
    model: nn.Module, *, set_size: int | None = None, image_size: int | None = None, batch_size: int = 1
) -> torch.export.ExportedProgram:
    """LCCo inference as a ``torch.export.ExportedProgram`` for ``(batch_size, set_size, 3, S, S)`` inputs.

    Save it with ``torch.export.save`` (a ``.pt2`` file), load it with ``torch.export.load``
    and call ``program.module()(images)``. ``image_size`` and ``set_size`` default to the
    model's own (the size it was trained at; :func:`trained_size`), else 224 and 5.

    Example:
        >>> import torch
        >>> from cosegkit.export import export_program
        >>> from cosegkit.testing import tiny_model
        >>> model = tiny_model()
        >>> program = export_program(model, set_size=3, image_size=32)
        >>> images = torch.rand(1, 3, 3, 32, 32)
        >>> bool(torch.allclose(program.module()(images), model.predict(images), atol=1e-5))
        True
    """
    refuse_class_oracle(model, "export a graph for new images")
    image_size, set_size = trained_size(model, image_size, set_size)
    example = _example(batch_size, set_size, image_size, _device_of(model))
    with torch.no_grad():
        return torch.export.export(InferenceGraph(model), (example,))


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how the file compares with the eager model.

    Attributes:
        path: the written file.
        input_shape: ``(B, N, 3, S, S)``, fixed.
        seconds: the export's wall time.
        size_mib: the file's size.
        max_abs_diff: the largest difference between onnxruntime's and eager PyTorch's
            probabilities on a random input, or ``None`` without verification.

    Example:
        >>> from pathlib import Path
        >>> from cosegkit.export import ExportReport
        >>> report = ExportReport(Path("lcco.onnx"), (1, 5, 3, 224, 224), 17.5, 469.0, 4e-7)
        >>> report.input_shape[1], report.max_abs_diff < 1e-4
        (5, True)
    """

    path: Path
    input_shape: tuple[int, ...]
    seconds: float
    size_mib: float
    max_abs_diff: float | None


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CosegValueError(f"ONNX export needs {', '.join(missing)}: {_EXTRA}")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    set_size: int | None = None,
    image_size: int | None = None,
    batch_size: int = 1,
    verify: bool = True,
    quiet: bool = True,
) -> ExportReport:
    """Write LCCo inference as an ONNX file (``torch.onnx.export`` through ``torch.export``).

    The graph has one input, ``images`` (float32 ``(batch_size, set_size, 3, S, S)`` in [0, 1]),
    and one output, ``masks`` (``(batch_size, set_size, 1, S, S)`` probabilities). Weights are
    stored in the file. With ``verify``, onnxruntime runs the file on a random input and
    the report's ``max_abs_diff`` is its largest difference from the eager model.

    Args:
        model: an :class:`~cosegkit.LCCo` (or any module whose output has ``.masks``).
        path: the ``.onnx`` file to write; its folder is created.
        set_size: images per set ``N`` (default: the model's :attr:`~cosegkit.LCCo.set_size`, else 5).
        image_size: the square side ``S`` (default: the model's :attr:`~cosegkit.LCCo.image_size`,
            the size it was trained at, else 224).
        batch_size: sets per call ``B``.
        verify: run the written file with onnxruntime and compare.
        quiet: hide the exporter's progress lines.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.export import export_onnx
        >>> from cosegkit.testing import tiny_model
        >>> report = export_onnx(tiny_model(), Path(tempfile.mkdtemp()) / "tiny.onnx", set_size=2, image_size=32)
        >>> report.input_shape, report.max_abs_diff < 1e-4
        ((1, 2, 3, 32, 32), True)
    """
    refuse_class_oracle(model, "export a graph for new images")
    _require_onnx()
    path = Path(path)
    if path.is_dir():
        raise CosegValueError(f"{str(path)!r} is a folder; pass the .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    image_size, set_size = trained_size(model, image_size, set_size)
    example = _example(batch_size, set_size, image_size, _device_of(model))
    graph = InferenceGraph(model)
    tic = time.perf_counter()
    with torch.no_grad(), _quiet_exporter(quiet):
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            external_data=False,
        )
        program.save(str(path))
    seconds = time.perf_counter() - tic
    diff = None
    if verify:
        with torch.no_grad():
            expected = graph(example).float().cpu()
        got = torch.from_numpy(run_onnx(onnx_session(path), example.float().cpu()))
        diff = float((got - expected).abs().max())
    return ExportReport(path, tuple(example.shape), seconds, path.stat().st_size / 2**20, diff)


@contextlib.contextmanager
def _quiet_exporter(quiet: bool):
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnx_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an exported file (``threads``: intra-op threads, default onnxruntime's).

    Example:
        A stand-in for an exported file: a one-node graph with the same input and output names.

        >>> import tempfile
        >>> from pathlib import Path
        >>> import onnx
        >>> from onnx import TensorProto, helper
        >>> from cosegkit.export import onnx_session
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Sigmoid", ["images"], ["masks"])], "stand-in",
        ...     [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2, 3, 8, 8])],
        ...     [helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, 2, 3, 8, 8])])
        >>> path = Path(tempfile.mkdtemp()) / "stand-in.onnx"
        >>> onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
        >>> session = onnx_session(path, threads=1)
        >>> [i.name for i in session.get_inputs()], session.get_inputs()[0].shape
        (['images'], [1, 2, 3, 8, 8])
    """
    _require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images: Any) -> Any:
    """Object probabilities from an onnxruntime session: ``images`` float32 ``(B, N, 3, S, S)`` (numpy or tensor).

    Raises:
        CosegValueError: the input's shape is not the one the file was exported for.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import onnx
        >>> import torch
        >>> from onnx import TensorProto, helper
        >>> from cosegkit.export import onnx_session, run_onnx
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Sigmoid", ["images"], ["masks"])], "stand-in",
        ...     [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2, 3, 8, 8])],
        ...     [helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, 2, 3, 8, 8])])
        >>> path = Path(tempfile.mkdtemp()) / "stand-in.onnx"
        >>> onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
        >>> session = onnx_session(path)
        >>> images = torch.zeros(1, 2, 3, 8, 8)
        >>> run_onnx(session, images).shape, float(run_onnx(session, images).max())
        ((1, 2, 3, 8, 8), 0.5)
        >>> run_onnx(session, torch.zeros(1, 4, 3, 8, 8))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: this ONNX file was exported for images of shape (1, 2, 3, 8, 8) ...
    """
    array = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else images
    expected = tuple(session.get_inputs()[0].shape)
    if tuple(array.shape) != expected:
        raise CosegValueError(
            f"this ONNX file was exported for images of shape {expected} (B, N, 3, S, S), got {tuple(array.shape)}; "
            f"export again with --set-size and --image-size for this input"
        )
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: array.astype("float32", copy=False)})[0]
