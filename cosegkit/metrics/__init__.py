"""Co-segmentation metrics: precision P and Jaccard index J."""

__all__: list[str] = []
