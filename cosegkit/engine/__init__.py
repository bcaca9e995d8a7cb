"""Training, evaluation and checkpoints: what the ``cosegkit`` command runs."""

from cosegkit.engine.checkpoint import CheckpointError, find_checkpoints, load_checkpoint, save_checkpoint
from cosegkit.engine.config import (
    DATASETS,
    TrainConfig,
    build_eval_sets,
    build_model,
    build_photo_eval_sets,
    build_train_sets,
)
from cosegkit.engine.evaluate import EvalResult, evaluate
from cosegkit.engine.trainer import StepBatches, TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = [
    "DATASETS",
    "CheckpointError",
    "EvalResult",
    "StepBatches",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_eval_sets",
    "build_model",
    "build_photo_eval_sets",
    "build_train_sets",
    "evaluate",
    "find_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
