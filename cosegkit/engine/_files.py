"""Atomic file writes for the run folder's caches: a reader never sees a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, then rename it into place.

    The temporary file is removed if ``write`` fails or the process is interrupted.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from cosegkit.engine._files import atomic_write
        >>> path = Path(tempfile.mkdtemp()) / "key.json"
        >>> atomic_write(path, lambda tmp: Path(tmp).write_text("{}"))
        >>> path.read_text(), [p.name for p in path.parent.iterdir()]
        ('{}', ['key.json'])
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
