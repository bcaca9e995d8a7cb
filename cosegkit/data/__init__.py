"""Co-segmentation datasets: readers for the field's layouts, image-set sampling, a synthetic world."""

from cosegkit.data.types import DataError, Group

__all__ = ["DataError", "Group"]
