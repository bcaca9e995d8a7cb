"""Co-segmentation datasets: readers for the field's layouts, image-set sampling, a synthetic world."""

from cosegkit.data.sampling import Augmentation, EvalSets, TrainSets, collate_sets, eval_chunks
from cosegkit.data.types import DataError, Group

__all__ = ["Augmentation", "DataError", "EvalSets", "Group", "TrainSets", "collate_sets", "eval_chunks"]
