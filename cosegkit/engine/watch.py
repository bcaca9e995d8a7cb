"""Watching a run: TensorBoard logging, validation during training and the best model.

What ``cosegkit train --log tensorboard --eval-every K`` adds to the run folder::

    tensorboard/         event files: every metrics.jsonl quantity, validation P and J, validation masks
    validation.jsonl     one JSON line per validation: step, P, J, images, seconds
    best/                the model of the best validation J so far, as a run folder of its own:
        best.json          its step, P, J, images and preset
        config.json        the run's config
        checkpoints/       the checkpoint of that step (``--resume`` continues from it)
        model/             the model of that step (LCCo.from_pretrained, cosegkit evaluate / segment)

The validation scores the held-out sets of the end-of-run evaluation (``validation_sets`` of
them, spread evenly, when set) with its preset, on the model in eval mode without gradients,
and puts the model back in train mode. It draws nothing from the random number generators
(their states are restored), so a run with ``eval_every`` trains exactly as one without, and
a stopped-and-resumed run still ends with the uninterrupted run's weights. A resumed run
reads the best J so far back from ``best/best.json``.

Example:
    A validation every 2 steps of a 4-step tiny run (random weights, nothing downloaded):

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from cosegkit import LCCo
    >>> from cosegkit.engine import TrainConfig, train
    >>> config = TrainConfig(
    ...     world_classes=4, image_size=32, set_size=2, batch_size=1, heads=2, top_k=1,
    ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
    ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
    ...     steps=4, eval_set_size=2, extra={"eval_sets": 2}, eval_every=2,
    ... )
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> _ = train(config, run, progress=False)
    >>> [json.loads(line)["step"] for line in (run / "validation.jsonl").read_text().splitlines()]
    [2, 4]
    >>> sorted(p.name for p in (run / "best").iterdir())
    ['best.json', 'checkpoints', 'config.json', 'model']
    >>> json.loads((run / "best" / "best.json").read_text())["step"] in (2, 4)
    True
    >>> type(LCCo.from_pretrained(run / "best" / "model")).__name__
    'LCCo'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from cosegkit.engine import distributed
from cosegkit.engine.config import GENERATED_DATASETS, TrainConfig, build_eval_sets
from cosegkit.engine.evaluate import EvalResult, evaluate, mask_probs
from cosegkit.errors import CosegValueError

__all__ = [
    "GRID_IMAGES",
    "GRID_SETS",
    "GRID_TILE",
    "RunWatch",
    "TensorBoardLog",
    "mask_grid",
    "require_tensorboard",
    "spread",
]

GRID_SETS = 3
"""How many validation sets the TensorBoard image ``validation/masks`` shows."""

GRID_IMAGES = 5
"""At most this many images of each set in ``validation/masks``."""

GRID_TILE = 96
"""The side of each tile of ``validation/masks``, in pixels."""


def require_tensorboard() -> None:
    """Refuse ``--log tensorboard`` when the ``tensorboard`` package is missing, naming the fix.

    Raises:
        CosegValueError: ``tensorboard`` cannot be imported.

    Example:
        >>> from cosegkit.engine.watch import require_tensorboard
        >>> require_tensorboard()  # installed here: nothing to say
    """
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise CosegValueError(
            f'--log tensorboard needs the tensorboard package ({err}): pip install "cosegkit[tensorboard]", '
            f"or drop --log tensorboard (metrics.jsonl is written either way)"
        ) from None


def spread(total: int, count: int) -> list[int]:
    """``count`` indices of ``range(total)`` spread evenly, first included (all of them when ``count >= total``).

    Example:
        >>> from cosegkit.engine.watch import spread
        >>> spread(40, 4), spread(3, 5), spread(10, 1)
        ([0, 10, 20, 30], [0, 1, 2], [0])
    """
    if count >= total:
        return list(range(total))
    return [i * total // count for i in range(count)]


@contextlib.contextmanager
def _same_rng(device: torch.device) -> Iterator[None]:
    """Run the block and restore the torch random number generators (CPU, and ``device``'s if CUDA)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@torch.inference_mode()
def mask_grid(model: torch.nn.Module, items: list[Mapping[str, Any]], *, class_oracle: bool = False) -> torch.Tensor:
    """One image of a few sets: per set a row of images, of ground-truth masks, of predicted mask probabilities.

    Each tile is :data:`~cosegkit.engine.watch.GRID_TILE` pixels square; at most :data:`~cosegkit.engine.watch.GRID_IMAGES` images of a set.
    The model runs as it is (put it in eval mode first) on its parameters' device.

    Args:
        model: an :class:`~cosegkit.LCCo` or :class:`~cosegkit.UFO` (anything :func:`~cosegkit.engine.evaluate` scores).
        items: evaluation sets (dicts with ``images``, ``masks``, ``valid``, ``group``).
        class_oracle: give the model each set's ``group`` as ``common_class``.

    Returns:
        A ``(3, H, W)`` float image in ``[0, 1]``.

    Shape:
        - each item: ``images`` ``(N, 3, H, W)``, ``masks`` ``(N, 1, H', W')``, ``valid`` ``(N,)``.
        - output: ``(3, rows * (T + 2) + 2, columns * (T + 2) + 2)`` with ``rows = 3 * len(items)``,
          ``columns`` the largest set's image count (at most :data:`~cosegkit.engine.watch.GRID_IMAGES`) and ``T`` :data:`~cosegkit.engine.watch.GRID_TILE`.

    Example:
        >>> from cosegkit.engine import TrainConfig, build_eval_sets, build_model
        >>> from cosegkit.engine.watch import mask_grid
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=2, eval_set_size=2, heads=2, top_k=1,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ... )
        >>> sets = build_eval_sets(config, sets=2)
        >>> mask_grid(build_model(config).eval(), [sets[0], sets[1]]).shape  # 6 rows of 2 tiles of 96 px
        torch.Size([3, 590, 198])
    """
    from torchvision.utils import make_grid

    device = next(model.parameters()).device
    tiles: list[torch.Tensor] = []
    columns = min(GRID_IMAGES, max(int(item["valid"].sum()) for item in items))

    def row(images: torch.Tensor) -> list[torch.Tensor]:
        images = torch.nn.functional.interpolate(images.float(), size=(GRID_TILE, GRID_TILE), mode="bilinear")
        images = images.expand(-1, 3, -1, -1).clamp(0, 1).cpu()
        blank = torch.ones(columns - images.shape[0], 3, GRID_TILE, GRID_TILE)
        return [*images, *blank]

    for item in items:
        n = min(columns, int(item["valid"].sum()))
        images = item["images"][None].to(device)
        valid = item["valid"][None].to(device)
        given = {"common_class": torch.as_tensor(item["group"])[None].to(device)} if class_oracle else {}
        probs = mask_probs(model(images, valid, **given))[0]
        tiles += row(item["images"][:n]) + row(item["masks"][:n]) + row(probs[:n])
    return make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=1.0)


class TensorBoardLog:
    """TensorBoard event files of a run (``<run>/tensorboard``), through ``torch.utils.tensorboard``.

    Tags: ``loss/<term>`` (every loss term), ``lr``, ``acc/<name>`` (the class-choice
    accuracies of ``metrics.jsonl``), ``validation/P``, ``validation/J`` and the image
    ``validation/masks`` (:func:`mask_grid`).

    Args:
        folder: where the event files go (created).
        purge_step: a resumed run's first step: events of this step and later, written
            before the run stopped, are hidden by TensorBoard, so no step shows twice.

    Example:
        >>> import tempfile
        >>> from cosegkit.engine.watch import TensorBoardLog
        >>> board = TensorBoardLog(tempfile.mkdtemp())
        >>> board.scalars({"step": 1, "lr": 1e-4, "seconds": 0.5, "total": 1.25, "acc/istar": 0.5})
        ['lr', 'loss/total', 'acc/istar']
        >>> board.close()
    """

    def __init__(self, folder: str | os.PathLike[str], purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    @staticmethod
    def tag(key: str) -> str:
        """The TensorBoard tag of a ``metrics.jsonl`` key: ``lr`` and ``acc/...`` as they are, a loss term under ``loss/``."""
        return key if key == "lr" or key.startswith("acc/") else f"loss/{key}"

    def scalars(self, record: Mapping[str, Any]) -> list[str]:
        """Log one ``metrics.jsonl`` record (all but ``step`` and ``seconds``) at its step; returns the tags."""
        step = int(record["step"])
        tags = []
        for key, value in record.items():
            if key in ("step", "seconds"):
                continue
            tags.append(self.tag(key))
            self.writer.add_scalar(tags[-1], float(value), step)
        self.writer.flush()
        return tags

    def validation(self, step: int, result: EvalResult, grid: torch.Tensor | None = None) -> None:
        """Log a validation's P and J, and its masks' image when given."""
        self.writer.add_scalar("validation/P", result.P, step)
        self.writer.add_scalar("validation/J", result.J, step)
        if grid is not None:
            self.writer.add_image("validation/masks", grid, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


Checkpointer = Callable[[int, Path, int], Path | None]
"""The trainer's checkpoint writer: ``(step, folder, keep)`` to the path written (``None`` off rank 0)."""


class RunWatch:
    """What the trainer does for ``log`` and ``eval_every``: TensorBoard, validation.jsonl and best/.

    Built after the checkpoint is loaded (``start``, the steps done), it makes nothing when
    neither setting is on. Rank 0 writes every file; every rank takes part in a validation
    (each scores its share of the sets, as the end-of-run evaluation does).

    Args:
        config: the run's settings.
        run: the run folder.
        dist: the process group.
        start: the steps done when the run (re)started.
        resume: whether the run was resumed: validation.jsonl loses the lines of steps after
            ``start`` (they are run again) and the best J so far is read from ``best/best.json``.

    Example:
        The trainer's calls, by hand (``checkpoint`` is the trainer's writer of a step's
        checkpoint into a folder; here one that writes nothing):

        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.engine import TrainConfig, build_model
        >>> from cosegkit.engine.distributed import DistInfo
        >>> from cosegkit.engine.watch import RunWatch
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=2, eval_set_size=2, heads=2, top_k=1,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ...     extra={"eval_sets": 2}, eval_every=10, log=["tensorboard"],
        ... )
        >>> run = Path(tempfile.mkdtemp())
        >>> watch = RunWatch(config, run, DistInfo(), start=0, resume=False)
        >>> watch.due(5), watch.due(10)
        (False, True)
        >>> model = build_model(config).train()
        >>> result = watch.validate(model, 10, checkpoint=lambda step, folder, keep: None)
        >>> watch.close()
        >>> result.images, model.training, sorted(p.name for p in run.iterdir())
        (4, True, ['best', 'tensorboard', 'validation.jsonl'])
    """

    def __init__(
        self,
        config: TrainConfig,
        run: str | os.PathLike[str],
        dist: distributed.DistInfo,
        *,
        start: int,
        resume: bool,
    ) -> None:
        run = Path(run)
        self.config, self.run, self.dist, self.device = config, run, dist, dist.device
        self.board: TensorBoardLog | None = None
        if config.log and "tensorboard" in config.log and dist.is_main:
            self.board = TensorBoardLog(run / "tensorboard", purge_step=start + 1 if resume and start else None)
        self.sets = None
        self.best_j = -math.inf
        if not config.eval_every:
            return
        with _same_rng(self.device):
            sets = build_eval_sets(config, config.eval_classes)
        self.names = [g.name for g in getattr(sets, "groups", [])] or None
        if config.dataset in GENERATED_DATASETS:
            self.names = config.held_out_world().class_names
        if config.validation_sets is not None and config.validation_sets < len(sets):
            sets = torch.utils.data.Subset(sets, spread(len(sets), config.validation_sets))
        self.sets = sets
        best = run / "best" / "best.json"
        if resume and best.is_file():
            self.best_j = float(json.loads(best.read_text())["J"])
        if dist.is_main:
            shutil.rmtree(run / "best.partial", ignore_errors=True)  # a save cut short
            lines = run / "validation.jsonl"
            if resume and lines.is_file():
                kept = [line for line in lines.read_text().splitlines() if json.loads(line)["step"] <= start]
                lines.write_text("".join(line + "\n" for line in kept))

    def due(self, step: int) -> bool:
        """Whether ``step`` (steps done) is a validation step."""
        return self.sets is not None and step % self.config.eval_every == 0

    def log_step(self, record: Mapping[str, Any]) -> None:
        """Send one ``metrics.jsonl`` record to TensorBoard (when on)."""
        if self.board is not None:
            self.board.scalars(record)

    def validate(self, model: torch.nn.Module, step: int, checkpoint: Checkpointer) -> EvalResult:
        """Score the held-out sets at ``step``; log them, and keep the model in ``best/`` when its J is the best.

        The model is scored in eval mode without gradients and left in train mode; the random
        number generators are as they were.
        """
        if self.dist.world > 1:  # every rank scores rank 0's model, as the end-of-run check does
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        tic = time.perf_counter()
        with _same_rng(self.device):
            result = evaluate(
                model,
                self.sets,
                preset=self.config.eval_preset,
                group_names=self.names,
                device=self.device,
                dist=self.dist,
                class_oracle=self.config.class_oracle,
            )
            seconds = time.perf_counter() - tic
            grid = None
            if self.board is not None:
                items = [self.sets[i] for i in spread(len(self.sets), GRID_SETS)]
                grid = mask_grid(model, items, class_oracle=self.config.class_oracle)
        model.train()
        if self.dist.is_main:
            line = {"step": step, "P": result.P, "J": result.J, "images": result.images, "seconds": round(seconds, 3)}
            with (self.run / "validation.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")
        if self.board is not None:
            self.board.validation(step, result, grid)
        if not math.isnan(result.J) and self.best_j < result.J:
            self.best_j = result.J
            self._save_best(model, step, result, checkpoint)
        return result

    def _save_best(self, model: torch.nn.Module, step: int, result: EvalResult, checkpoint: Checkpointer) -> None:
        """Write ``best/`` whole (through ``best.partial/``), so a stop never leaves half of it."""
        partial, best = self.run / "best.partial", self.run / "best"
        checkpoint(step, partial / "checkpoints", 1)  # every rank: each saves its own caches
        if not self.dist.is_main:
            return
        model.save_pretrained(partial / "model")
        self.config.save(partial / "config.json")
        record = {"step": step, "P": result.P, "J": result.J, "images": result.images, "preset": result.preset}
        (partial / "best.json").write_text(json.dumps(record, indent=2) + "\n")
        old = self.run / "best.old"
        shutil.rmtree(old, ignore_errors=True)
        if best.exists():
            best.rename(old)
        partial.rename(best)
        shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        """Close the TensorBoard event file."""
        if self.board is not None:
            self.board.close()
