"""The training loop of ``cosegkit train``: resumable, checkpointed, distributed through torchrun.

A run folder holds::

    config.json          the resolved TrainConfig (every default written out)
    metrics.jsonl        one JSON line per logged step (losses, learning rate, seconds)
    checkpoints/         step_XXXXXXXX.pt, written atomically; the newest few are kept
    model/               the final model (LCCo.save_pretrained), for evaluate and segment
    eval.json            the held-out evaluation at the end of the run, when there is one
    eval_photos.json     the composite dataset only: the evaluation on its held-out photos themselves
    tensorboard/         with log=["tensorboard"] (--log tensorboard): TensorBoard event files of the losses,
                         learning rate, class-choice accuracies, validation P and J and validation masks
    validation.jsonl     with eval_every (--eval-every K): one JSON line per validation (step, P, J, images, seconds)
    best/                with eval_every: the best model by validation J, a run folder of its own (best.json with
                         its step and J, config.json, checkpoints/ for --resume, model/); cosegkit.engine.watch
    pseudo_masks/        with pseudo_masks set: the cached zero-shot maps (cosegkit.engine.pseudo), of the
                         training groups, or of a generated world's pool of training sets
    superpixels/         with superpixel_weight > 0: the cached superpixel maps (cosegkit.data.superpixels)
    class_targets/       with class_targets="cached": each training image's masked CLIP embedding (eq. 12),
                         computed once (cosegkit.engine.class_targets)

With ``class_oracle`` each set's true class (its ``group``) is given to the model as
``common_class`` at every step and in the evaluation at the end: the class oracle.

Reproducibility: the model is initialised from the seed; the sets of step ``s`` are items
``(s * world + rank) * B ... + B - 1`` of a dataset whose items are a fixed function of their
index, so the data of a step depends on nothing but the step. A checkpoint holds the model,
optimizer and scheduler states, the fp16 gradient scaler's, the step and the RNG states; on the CPU a run that is killed
and resumed ends with the same weights as one that was not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from cosegkit.data.sampling import collate_sets
from cosegkit.engine import distributed
from cosegkit.engine.checkpoint import find_checkpoints, load_checkpoint, save_checkpoint
from cosegkit.engine.config import (
    GENERATED_DATASETS,
    TrainConfig,
    build_eval_sets,
    build_model,
    build_photo_eval_sets,
    build_train_sets,
)
from cosegkit.engine.evaluate import EvalResult, evaluate
from cosegkit.engine.watch import RunWatch
from cosegkit.errors import CosegError, CosegValueError

__all__ = ["StepBatches", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]

log = logging.getLogger(__name__)


class TrainingDiverged(CosegError, RuntimeError):
    """The loss became NaN or Inf; the message names the step and the last good checkpoint.

    Example:
        A learning rate far too high for a tiny random model sends the loss to NaN at the
        second step; the checkpoint of the first step is kept:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.engine import TrainConfig, find_checkpoints, load_checkpoint, train
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=2, batch_size=1, heads=2, top_k=1,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ...     steps=2, checkpoint_every=1, lr=1e8,
        ... )
        >>> run_dir = Path(tempfile.mkdtemp()) / "run"
        >>> train(config, run_dir, progress=False)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
            ...
        cosegkit.engine.trainer.TrainingDiverged: the loss became nan at step 2; the run stopped and the last good
        checkpoint is '.../run/checkpoints/step_00000001.pt'. Lower the learning rate (--lr) or check the data, then
        resume or restart

        It is a :class:`RuntimeError` and a :class:`~cosegkit.errors.CosegError`. The run folder
        keeps the checkpoints written before the loss went bad, and no final model:

        >>> [p.name for p in find_checkpoints(run_dir / "checkpoints")], (run_dir / "model").exists()
        (['step_00000001.pt'], False)
        >>> load_checkpoint(run_dir / "checkpoints" / "step_00000001.pt")["step"]
        1
    """


class TrainingInterrupted(CosegError, RuntimeError):
    """The run was stopped by a signal (SIGINT or SIGTERM) after saving a checkpoint.

    :func:`train` raises it once the step under way when the signal arrived is finished and
    checkpointed; the message names that step and the checkpoint folder, and
    ``train(None, run_dir, resume=True)`` continues the run from there. ``cosegkit train``
    exits with status 130 on it.

    Example:
        It is both a :class:`RuntimeError` and a :class:`~cosegkit.errors.CosegError` (a
        :class:`ValueError`), so catch it before either:

        >>> from cosegkit.engine import TrainingDiverged, TrainingInterrupted
        >>> from cosegkit.errors import CosegError
        >>> issubclass(TrainingInterrupted, RuntimeError), issubclass(TrainingInterrupted, CosegError)
        (True, True)
        >>> def exit_status(run):  # the exit statuses of ``cosegkit train``
        ...     try:
        ...         run()
        ...     except TrainingInterrupted as err:  # stopped cleanly: resume later
        ...         print(err)
        ...         return 130
        ...     except TrainingDiverged as err:
        ...         print("error:", err)
        ...         return 1
        ...     except CosegError as err:  # bad settings or data
        ...         print("error:", err)
        ...         return 2
        ...     return 0
        >>> def stopped_at_step_3():
        ...     raise TrainingInterrupted(
        ...         "stopped by a signal after step 3; checkpoint written to 'run/checkpoints'. Continue with --resume"
        ...     )
        >>> exit_status(stopped_at_step_3)
        stopped by a signal after step 3; checkpoint written to 'run/checkpoints'. Continue with --resume
        130
    """


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the steps done and the final evaluation.

    Attributes:
        run_dir: the run folder.
        steps: the optimizer steps of the run (``config.steps``).
        last_loss: the total loss of the last step run (NaN when a resumed run had no step left).
        evaluation: the held-out evaluation, or ``None`` when the run has no evaluation sets.
        photo_evaluation: on the composite dataset, the evaluation on the held-out photos
            themselves (:func:`~cosegkit.engine.build_photo_eval_sets`, also written to
            ``eval_photos.json``); ``None`` on every other dataset.

    Example:
        >>> from pathlib import Path
        >>> from cosegkit.engine import EvalResult, TrainResult
        >>> evaluation = EvalResult(P=0.9, J=0.75, images=40)
        >>> result = TrainResult(Path("runs") / "demo", steps=1000, last_loss=0.25, evaluation=evaluation)
        >>> (result.run_dir / "model").as_posix(), result.steps, result.last_loss
        ('runs/demo/model', 1000, 0.25)
        >>> result.evaluation.to_dict()
        {'P': 0.9, 'J': 0.75, 'images': 40, 'preset': 'ssnm', 'per_group': {}}
    """

    run_dir: Path
    steps: int
    last_loss: float
    evaluation: EvalResult | None
    photo_evaluation: EvalResult | None = None


class StepBatches(Sampler[list[int]]):
    """Batches of dataset indices by step: step ``s`` of rank ``r`` gets ``B`` fixed indices.

    Starting at ``start`` resumes the exact sequence of a run that stopped there.

    Example:
        >>> from cosegkit.engine import StepBatches
        >>> list(StepBatches(start=0, steps=3, batch_size=2))
        [[0, 1], [2, 3], [4, 5]]
        >>> list(StepBatches(start=2, steps=3, batch_size=2))  # resumed after step 2: the same last batch
        [[4, 5]]
        >>> [list(StepBatches(0, 2, 2, rank=r, world=2)) for r in (0, 1)]  # two processes share out the items
        [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]

        As the batch sampler of a data loader over the training sets:

        >>> from torch.utils.data import DataLoader
        >>> from cosegkit.data import collate_sets
        >>> from cosegkit.engine import TrainConfig, build_train_sets
        >>> sets = build_train_sets(TrainConfig(world_classes=4, image_size=32, set_size=3), length=6)
        >>> loader = DataLoader(sets, batch_sampler=StepBatches(0, 3, 2), collate_fn=collate_sets)
        >>> len(loader), [b["indices"].shape for b in loader]
        (3, [torch.Size([2, 3]), torch.Size([2, 3]), torch.Size([2, 3])])
        >>> next(iter(loader))["images"].shape
        torch.Size([2, 3, 3, 32, 32])
    """

    def __init__(self, start: int, steps: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.steps, self.batch_size, self.rank, self.world = start, steps, batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.steps):
            first = (s * self.world + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))


def planned_steps(config: TrainConfig, step: int) -> int:
    """The run length the schedule follows at ``step``: ``config.steps``, or, in an extended run, the plan of the time.

    An extension (``--resume --steps N``) that started at step ``s`` switched the plan from
    its ``from_steps`` to ``N`` for the steps from ``s`` on; the steps before ``s`` keep the
    plan they were run with, so a second resume recomputes the same learning rates.

    Example:
        >>> from cosegkit.engine import TrainConfig
        >>> from cosegkit.engine.trainer import planned_steps
        >>> config = TrainConfig(steps=8, extensions=[{"step": 4, "from_steps": 4, "to_steps": 8}])
        >>> [planned_steps(config, s) for s in range(8)]
        [4, 4, 4, 4, 8, 8, 8, 8]
    """
    total = config.extensions[0]["from_steps"] if config.extensions else config.steps
    for ext in config.extensions:
        if step >= ext["step"]:
            total = ext["to_steps"]
    return total


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if config.warmup and step < config.warmup:
            return (step + 1) / config.warmup
        span = max(1, planned_steps(config, step) - config.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - config.warmup) / span)))

    return factor


_AMP_DEVICES: tuple[str, ...] = ("cuda",)  # where --amp runs (tests widen it to exercise the scaler on the CPU)


def _mixed_precision(config: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """The autocast dtype of ``config.amp`` (``None``: fp32) and the gradient scaler (enabled for fp16 only).

    Refuses ``--amp`` on a device without it rather than training in fp32 unasked.
    """
    from cosegkit.engine.config import AMP_DTYPES

    if config.amp is None:
        return None, torch.amp.GradScaler(device.type if device.type in ("cuda", "cpu") else "cuda", enabled=False)
    if device.type not in _AMP_DEVICES:
        raise CosegValueError(
            f"--amp {config.amp} is mixed precision on a CUDA GPU, and this run's device is {device.type} "
            f"(--device {config.device}): drop --amp to train in fp32, or train on a GPU (--device cuda)"
        )
    return AMP_DTYPES[config.amp], torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")


def _newest_step(ckpt_dir: Path) -> int | None:
    """The step of the newest checkpoint, from its file name (nothing is loaded)."""
    checkpoints = find_checkpoints(ckpt_dir)
    return int(checkpoints[-1].name[len("step_") : -len(".pt")]) if checkpoints else None


def _resumed_config(saved: TrainConfig, config: TrainConfig | None, ckpt_dir: Path) -> TrainConfig:
    """The config a resume continues with: the saved one, or the saved one extended to ``config.steps``.

    Only ``steps`` may change, and only upwards: the extension is appended to ``extensions``
    with the step it starts at (the newest checkpoint's).
    """
    if config is None:
        return saved
    if config.init_from:  # as the run resolved it when it started
        from cosegkit.engine.finetune import inherit_architecture

        config = inherit_architecture(config)
    given, kept = config.to_dict(), saved.to_dict()
    diff = sorted(k for k, v in given.items() if kept.get(k) != v and k not in ("steps", "extensions"))
    if diff:
        raise CosegValueError(
            f"--resume continues the run as it was configured; these settings differ: {diff} (only --steps may "
            f"grow, to extend the run; other settings need a new run: a new --out)"
        )
    if config.steps == saved.steps:
        return saved
    if config.steps < saved.steps:
        raise CosegValueError(
            f"--steps {config.steps} is fewer than the run's {saved.steps} steps, and a run is not shortened: "
            f"resume without --steps, or with --steps larger than {saved.steps} to extend it"
        )
    start = _newest_step(ckpt_dir)
    if start is None:
        raise CosegValueError(f"nothing to resume: {str(ckpt_dir)!r} holds no checkpoint")
    extension = {"step": start, "from_steps": saved.steps, "to_steps": config.steps}
    return dataclasses.replace(saved, steps=config.steps, extensions=[*saved.extensions, extension])


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_replicas(model: torch.nn.Module, dist: distributed.DistInfo, run: Path) -> None:
    """Compare every rank's final weights (a SHA-256 of the state dict); write ``ddp.json``.

    DDP keeps the parameters equal; buffers such as BatchNorm's running statistics are
    updated by each rank's own last batch, so rank 0's are broadcast first, as DDP itself
    does before every forward pass.
    """
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
    digests: list[str | None] = [None] * dist.world
    torch.distributed.all_gather_object(digests, _weights_digest(model))
    if dist.is_main:
        (run / "ddp.json").write_text(json.dumps({"world": dist.world, "checksums": digests}, indent=2) + "\n")
    if len(set(digests)) != 1:
        raise CosegError(f"the {dist.world} processes ended with different weights (digests {digests}); see ddp.json")


def _class_choices(out: Any, classes: torch.Tensor | None = None) -> dict[str, float]:
    """Agreement of the model's set-level class choices with eq. (12)'s target on this batch.

    ``acc/istar`` is the module's own choice (the arg-max of its class probabilities), also
    when a class oracle's given class regularised the features. For UFO (``classes``, each
    set's class), ``acc/class``: how often its classification head ranks that class first.
    """
    if classes is not None:
        hits = out.class_logits.detach().argmax(dim=-1).cpu() == classes.cpu()
        return {"acc/class": float(hits.float().mean())}
    if getattr(out, "class_targets", None) is None:
        return {}
    from cosegkit.diagnostics import choice_agreement

    probs = getattr(out, "class_probs", None)
    own = out.common_class if probs is None else probs.argmax(dim=-1)
    choices = SimpleNamespace(common_class=own, topk_indices=getattr(out, "topk_indices", None))
    return {f"acc/{k}": v for k, v in choice_agreement(choices, out.class_targets).items()}


def _check_oracle_vocabulary(config: TrainConfig, model: torch.nn.Module) -> None:
    """A class oracle's sets name their class by index: the model's vocabulary must list the classes in that order."""
    from cosegkit.engine.config import oracle_class_names

    names = oracle_class_names(config)
    vocabulary = list(model.clip.classnames)
    if vocabulary != names:
        raise CosegValueError(
            f"the class oracle (--class-oracle) gives each set's class index to the CLIP regularization, so the "
            f"CLIP vocabulary must be the world's class names in class order; the vocabulary starts "
            f"{vocabulary[:4]}, the world's classes start {names[:4]}"
        )


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train LCCo as ``config`` says, writing the run folder ``run_dir``.

    Args:
        config: the settings; with ``resume=True`` it may be ``None`` (the run's own
            ``config.json`` is used) and otherwise must match it, but for a larger ``steps``,
            which extends the run to that many steps (recorded in ``config.extensions``; the
            learning rate of the new steps is that of a run planned for ``steps``). With
            ``config.init_from`` set, a new run starts from that trained model
            (:mod:`cosegkit.engine.finetune`).
        run_dir: the run folder (created).
        resume: continue from the newest checkpoint in ``run_dir/checkpoints``.
        progress: show a progress bar (on the main process).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: the loss became NaN or Inf.
        TrainingInterrupted: SIGINT or SIGTERM arrived; a checkpoint of the last finished
            step was written first, and ``resume=True`` continues from it.
        CosegValueError: bad settings: a resume with other settings or fewer steps, ``amp``
            on a device other than CUDA, a conflicting setting with ``init_from``.

    Example:
        Two steps of a tiny random model on the synthetic world (no weights are downloaded; a
        smoke test of the whole pipeline, not a useful model):

        >>> import json, math, tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from cosegkit import LCCo
        >>> from cosegkit.engine import TrainConfig, find_checkpoints, train
        >>> config = TrainConfig(
        ...     world_classes=4, image_size=32, set_size=2, batch_size=1, heads=2, top_k=1,
        ...     encoder="tu-test_convnext", encoder_weights=None, decoder_channels=[8, 8, 8, 8],
        ...     clip_model="coseg-test-tiny", clip_pretrained=None, device="cpu",
        ...     steps=2, checkpoint_every=1, log_every=1, eval_set_size=2, extra={"eval_sets": 2},
        ... )
        >>> run_dir = Path(tempfile.mkdtemp()) / "run"
        >>> result = train(config, run_dir, progress=False)
        >>> result.run_dir == run_dir, result.steps, math.isfinite(result.last_loss)
        (True, 2, True)
        >>> sorted(p.name for p in run_dir.iterdir())
        ['checkpoints', 'config.json', 'eval.json', 'metrics.jsonl', 'model']
        >>> [p.name for p in find_checkpoints(run_dir / "checkpoints")]
        ['step_00000001.pt', 'step_00000002.pt']
        >>> [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        [1, 2]
        >>> result.evaluation.images, 0 <= result.evaluation.J <= 1  # two sets of two images
        (4, True)

        The final model reloads from ``model/``:

        >>> model = LCCo.from_pretrained(run_dir / "model").eval()
        >>> images = torch.rand(1, 2, 3, 32, 32)
        >>> with torch.no_grad():
        ...     masks = model(images).masks
        >>> images.shape, masks.shape
        (torch.Size([1, 2, 3, 32, 32]), torch.Size([1, 2, 1, 32, 32]))

        A run folder is never overwritten; ``resume=True`` continues it from its newest
        checkpoint with its own ``config.json`` (here there is no step left to do):

        >>> train(config, run_dir, progress=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        cosegkit.errors.CosegValueError: '...run' already holds checkpoints; pass --resume to continue it, or a new ...
        >>> train(None, run_dir, resume=True, progress=False).steps
        2

        A larger ``steps`` extends the finished run (the lr of a 4-step plan from step 2 on):

        >>> import dataclasses
        >>> result = train(dataclasses.replace(config, steps=4), run_dir, resume=True, progress=False)
        >>> result.steps, json.loads((run_dir / "config.json").read_text())["extensions"]
        (4, [{'step': 2, 'from_steps': 2, 'to_steps': 4}])
    """
    run = Path(run_dir)
    ckpt_dir = run / "checkpoints"
    if run.exists() and not run.is_dir():
        raise CosegValueError(
            f"the run folder {str(run)!r} is a file; pass a folder as --out (a new one, or a run to resume)"
        )
    if resume:
        if not (run / "config.json").is_file():
            raise CosegValueError(
                f"{str(run)!r} is not a run folder (no config.json): --resume continues a run that "
                f"'cosegkit train --out {run}' started; start one without --resume"
            )
        config = _resumed_config(TrainConfig.load(run / "config.json"), config, ckpt_dir)
    elif config is None:
        raise CosegValueError("a new run needs a config")
    elif find_checkpoints(ckpt_dir):
        raise CosegValueError(f"{str(run)!r} already holds checkpoints; pass --resume to continue it, or a new --out")
    elif config.extensions:
        raise CosegValueError(
            "extensions records how a run was extended (--resume --steps N); a new run starts without any"
        )
    elif config.init_from:  # fine-tuning: the architecture is the source model's
        from cosegkit.engine.finetune import inherit_architecture

        config = inherit_architecture(config)

    dist = distributed.setup(config.device)
    try:
        return _train(config, run, ckpt_dir, dist, resume=resume, progress=progress and dist.is_main)
    finally:
        distributed.cleanup()


def _train(
    config: TrainConfig, run: Path, ckpt_dir: Path, dist: distributed.DistInfo, *, resume: bool, progress: bool
) -> TrainResult:
    from cosegkit.losses.lcco import LCCoLoss

    device = dist.device
    _check_watching(config, dist)
    amp_dtype, scaler = _mixed_precision(config, device)
    data_groups = None
    if config.dataset == "composite":  # every mask's size from the headers, then the photos are loaded
        from cosegkit.engine.config import check_mask_sizes, composite_groups

        check_mask_sizes(composite_groups(config), remedy="or leave their classes out (--classes)")
        config.world()
    elif config.dataset not in GENERATED_DATASETS:
        from cosegkit.engine.config import train_groups

        data_groups = train_groups(config)  # read once; a missing data folder fails here, before weights are fetched
        _check_sizes(config, data_groups)  # every pair, from the headers: not at the step that samples it
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        if not resume:
            config.save(run / "config.json")
        elif config.to_dict() != TrainConfig.load(run / "config.json").to_dict():  # extended: its extensions
            from cosegkit._files import atomic_write

            atomic_write(run / "config.json", config.save)  # other processes may be reading it
    model = build_model(config, data_groups).to(device)
    if config.class_oracle:
        _check_oracle_vocabulary(config, model)
    store = None
    if config.pseudo_masks:
        store = _pseudo_masks(config, data_groups, model, run, device, dist, progress)
    encoder_params = {id(p) for p in model.encoder.parameters()}
    groups = [
        {
            "params": [p for p in model.trainable_parameters() if id(p) in encoder_params],
            "lr": config.encoder_lr if config.encoder_lr is not None else config.lr,
        },
        {"params": [p for p in model.trainable_parameters() if id(p) not in encoder_params], "lr": config.lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    start = 0
    rng = None
    last_good: Path | None = None
    if resume:
        checkpoints = find_checkpoints(ckpt_dir)
        if not checkpoints:
            raise CosegValueError(f"nothing to resume: {str(ckpt_dir)!r} holds no checkpoint")
        last_good = checkpoints[-1]
        state = load_checkpoint(last_good, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]  # restored just before the first step (see below)
        start = int(state["step"])
        # the learning rate of the next step, from this config's schedule: the saved one when the
        # run is resumed as planned, the extended plan's when --steps grew (LambdaLR's own formula)
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    net: torch.nn.Module = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(net) if config.compile else net
    ufo = config.model == "ufo"
    if ufo:  # UFO's own loss: its mask terms and the BCE of the set's class (its group)
        from cosegkit.losses.ufo import UFOLoss

        criterion = UFOLoss()
    else:
        criterion = LCCoLoss(
            lambda1=config.lambda1,
            lambda2=config.lambda2,
            superpixel_weight=config.superpixel_weight,
            grouping_weight=config.grouping_weight,
            distortion_weight=config.distortion_weight,
        )

    dataset = build_train_sets(
        config, length=config.steps * config.batch_size * dist.world, pseudo_masks=store, groups=data_groups
    )
    if config.superpixel_weight > 0:  # computed here, in the data pipeline, and cached in the run folder
        from cosegkit.data.superpixels import SuperpixelCache, SuperpixelSets

        dataset = SuperpixelSets(dataset, SuperpixelCache(run / "superpixels", config.superpixel_method))
    targets = _class_target_cache(config, model, dataset, data_groups, store, run, dist)
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatches(start, config.steps, config.batch_size, dist.rank, dist.world),
        collate_fn=collate_sets,
        num_workers=config.workers,
        persistent_workers=False,
    )

    def checkpoint(step: int, folder: Path = ckpt_dir, keep: int | None = config.keep_checkpoints) -> Path | None:
        if targets is not None:
            targets.save()  # every rank its own file
        if not dist.is_main:
            return None
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),  # empty unless fp16
            "rng": _rng_state(device),
            "config": config.to_dict(),
        }
        return save_checkpoint(state, folder, step, keep=keep)

    bar = _progress(config.steps, start, progress, "train")
    log = (run / "metrics.jsonl").open("a") if dist.is_main else None
    watch = RunWatch(config, run, dist, start=start, resume=resume)
    step, loss_value, tic = start, math.nan, time.perf_counter()
    try:
        with _StopFlag() as stop:
            model.train()
            batches = iter(loader)  # draws the loader's base seed from the global RNG
            if rng is not None:  # so the RNG is restored after it, as it was before this step in the first run
                _set_rng_state(rng, device)
            for step, batch in enumerate(batches, start=start):
                images = batch["images"].to(device, non_blocking=True)
                masks = batch["masks"].to(device, non_blocking=True)
                valid = batch["valid"].to(device, non_blocking=True)
                given = {"masks": masks}
                if targets is not None:  # eq. (12)'s target from the cache: no second CLIP pass
                    given = {"class_targets": targets.targets(batch["group"], batch["indices"], batch["valid"])}
                if config.class_oracle:  # each set's true class replaces the model's own choice i*
                    given["common_class"] = batch["group"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = forward(images, valid=valid, **given)
                extra = {}
                if "weights" in batch:  # pseudo masks: unconfident pixels do not count
                    extra["weight"] = batch["weights"].to(device, non_blocking=True)
                if "superpixels" in batch:
                    extra["superpixels"] = batch["superpixels"].to(device, non_blocking=True)
                if ufo:
                    extra["classes"] = batch["group"].to(device, non_blocking=True)
                losses = criterion(out, masks, **extra)
                # a non-finite loss is divergence under any precision; non-finite fp16 gradients of a
                # finite loss are the scaler's to handle (it skips that step and lowers its scale)
                finite = torch.isfinite(losses.total.detach()).float()
                if dist.world > 1:
                    torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
                if not bool(finite):
                    where = (
                        f"the last good checkpoint is {str(last_good)!r}" if last_good else "no checkpoint was written"
                    )
                    raise TrainingDiverged(
                        f"the loss became {float(losses.total.detach()):.4g} at step {step + 1}; the run stopped and "
                        f"{where}. Lower the learning rate (--lr) or check the data, then resume or restart"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses.total).backward()  # unscaled unless fp16
                scaler.step(optimizer)
                scaler.update()
                with warnings.catch_warnings():  # a step the scaler skipped still moves the schedule on
                    warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before")
                    scheduler.step()
                loss_value = float(losses.total.detach())
                done = step + 1
                if log is not None and (done % config.log_every == 0 or done == config.steps):
                    record = {
                        "step": done,
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": round(time.perf_counter() - tic, 3),
                    }
                    record.update({k: float(v.detach()) for k, v in losses._asdict().items() if v is not None})
                    record.update(_class_choices(out, batch["group"] if ufo else None))
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    watch.log_step(record)
                if watch.due(done):  # before the step's checkpoint: a run stopped between them validates again
                    watch.validate(model, done, checkpoint)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                stopping = stop.signal is not None
                if dist.world > 1:
                    flag = torch.tensor([float(stopping)], device=device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    stopping = bool(flag)
                if done % config.checkpoint_every == 0 or done == config.steps or stopping:
                    last_good = checkpoint(done) or last_good
                    if dist.world > 1:
                        torch.distributed.barrier()
                if stopping:
                    raise TrainingInterrupted(
                        f"stopped by a signal after step {done}; checkpoint written to {str(ckpt_dir)!r}. "
                        f"Continue with --resume"
                    )
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        watch.close()

    if dist.world > 1:
        _check_replicas(model, dist, run)
    evaluation = photo_evaluation = None
    if dist.is_main:
        model.save_pretrained(run / "model")
    if (config.dataset in GENERATED_DATASETS or config.eval_classes) and _can_evaluate(config, dist):
        eval_sets = build_eval_sets(config, config.eval_classes)
        names = [g.name for g in getattr(eval_sets, "groups", [])] or None
        if config.dataset in GENERATED_DATASETS:
            names = config.held_out_world().class_names
        evaluation = evaluate(
            model,
            eval_sets,
            preset=config.eval_preset,
            group_names=names,
            device=device,
            dist=dist,
            class_oracle=config.class_oracle,
        )
        if dist.is_main:
            (run / "eval.json").write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
    if config.dataset == "composite":  # the held-out photos themselves, as a benchmark distributes them
        photos = build_photo_eval_sets(config)
        photo_evaluation = evaluate(
            model,
            photos,
            preset=config.eval_preset,
            group_names=[g.name for g in photos.groups],
            device=device,
            dist=dist,
            class_oracle=config.class_oracle,
        )
        if dist.is_main:
            (run / "eval_photos.json").write_text(json.dumps(photo_evaluation.to_dict(), indent=2) + "\n")
    return TrainResult(run, config.steps, loss_value, evaluation, photo_evaluation)


def _check_sizes(config: TrainConfig, groups) -> None:
    """Refuse, before the first step, a training or held-out mask whose size is not its image's."""
    from cosegkit.engine.config import _read_groups, _select, check_mask_sizes, labelled_eval_groups

    checked = list(groups)
    if config.eval_classes:
        if config.pseudo_masks and config.dataset == "folder":
            checked += labelled_eval_groups(config, config.eval_classes)[0]
        else:
            checked += _select(_read_groups(config), config.eval_classes, "evaluation classes (--eval-classes)")
    check_mask_sizes(checked, remedy="or leave their groups out (--classes / --eval-classes; TrainConfig.classes)")


def _class_target_cache(config: TrainConfig, model, dataset, groups, store, run: Path, dist):
    """The run's eq. (12) embedding cache, or ``None`` where the target is computed per set.

    Per set: ``class_targets="per-set"``, a model without the regularization module (no target),
    and the generated worlds (synthetic, composite), whose images are all new (nothing to reuse).
    """
    if config.class_targets != "cached" or not getattr(model, "use_regularization", False) or groups is None:
        return None
    from cosegkit.engine.class_targets import ClassTargetCache, cache_key

    key, description = cache_key(config, model.clip, groups, store)
    return ClassTargetCache(model.clip, dataset, run / "class_targets" / key, description=description, rank=dist.rank)


def _pseudo_masks(config: TrainConfig, groups, model: torch.nn.Module, run: Path, device, dist, progress: bool):
    """The run's pseudo masks, computed once before training (cached in ``run/pseudo_masks``).

    A reader's groups give a :class:`~cosegkit.engine.pseudo.PseudoMaskStore`; a generated
    world a :class:`~cosegkit.engine.pseudo.PseudoPool` of its training sets.
    """
    from cosegkit.clip.frozen import FrozenClip
    from cosegkit.engine.pseudo import prepare_pseudo_masks, prepare_pseudo_pool

    clip = getattr(model, "clip", None)
    if clip is None:  # a model without the CLIP modules: the config's CLIP all the same
        classnames, templates = config.vocabulary()
        kwargs = {k: v for k, v in (("classnames", classnames), ("templates", templates)) if v is not None}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            clip = FrozenClip.from_name(config.clip_model, pretrained=config.clip_pretrained, **kwargs).to(device)
    if config.dataset in GENERATED_DATASETS:
        return prepare_pseudo_pool(
            config, config.world(), clip, run / "pseudo_masks", device=device, dist=dist, progress=progress
        )
    return prepare_pseudo_masks(config, groups, clip, run / "pseudo_masks", device=device, dist=dist, progress=progress)


def _check_watching(config: TrainConfig, dist: distributed.DistInfo) -> None:
    """Refuse, before anything is built, --log tensorboard without tensorboard and --eval-every with nothing to score."""
    if config.log and "tensorboard" in config.log:
        from cosegkit.engine.watch import require_tensorboard

        require_tensorboard()
    if config.eval_every and not _can_evaluate(config, dist):
        raise CosegValueError(
            "--eval-every scores the held-out groups during training, and none of them has masks: name labelled "
            "groups with --eval-classes, or drop --eval-every"
        )


def _can_evaluate(config: TrainConfig, dist: distributed.DistInfo) -> bool:
    """False (with a log line) when a run on pseudo masks has no held-out masks to score against."""
    if not (config.pseudo_masks and config.dataset == "folder"):
        return True
    from cosegkit.engine.config import labelled_eval_groups

    groups, unlabelled = labelled_eval_groups(config, config.eval_classes)
    if dist.is_main and unlabelled:
        what = "skipping the held-out evaluation" if not groups else "evaluating the others only"
        log.info("held-out groups without masks: %s; %s (evaluation needs masks)", unlabelled, what)
    return bool(groups)
