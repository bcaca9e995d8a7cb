"""File writes: atomic (a reader never sees a half-written file), with the usual mode.

A temporary file is created beside the target with mode ``0o666`` minus the process's umask,
as :func:`open` creates files (``tempfile.mkstemp``, and safetensors' ``save_file``, would give
``0o600``), written, given that mode again, then renamed over the target. The run folder's
caches and checkpoints (:mod:`cosegkit.engine`) and :meth:`LCCo.save_pretrained
<cosegkit.LCCo.save_pretrained>` write through it.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def temporary_file(path: str | os.PathLike[str]) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path``: ``(descriptor, temporary path)``.

    Its name is ``.<name>.<random>.tmp`` in ``path``'s folder, so the rename that puts it in
    place stays on one file system; its mode is ``0o666`` minus the umask, the mode of a file
    that :func:`open` creates (not ``tempfile.mkstemp``'s ``0o600``).

    Example:
        >>> import os, stat, tempfile
        >>> from pathlib import Path
        >>> from cosegkit._files import temporary_file
        >>> old = os.umask(0o022)
        >>> fd, tmp = temporary_file(Path(tempfile.mkdtemp()) / "model.safetensors")
        >>> _ = os.umask(old)
        >>> os.close(fd)
        >>> tmp.name.startswith(".model.safetensors."), tmp.suffix, oct(stat.S_IMODE(tmp.stat().st_mode))
        (True, '.tmp', '0o644')
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp  # the kernel applies the umask, as for open()
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {str(path)!r}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, then rename it into place.

    The temporary file is removed if ``write`` fails or the process is interrupted. The file
    gets the usual mode (``0o666`` minus the umask), as a plain :func:`open` would give it.

    Example:
        >>> import os, stat, tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from safetensors.torch import save_file
        >>> from cosegkit._files import atomic_write
        >>> folder = Path(tempfile.mkdtemp())
        >>> old = os.umask(0o022)
        >>> atomic_write(folder / "key.json", lambda tmp: Path(tmp).write_text("{}"))
        >>> atomic_write(folder / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
        >>> _ = os.umask(old)
        >>> (folder / "key.json").read_text(), sorted(p.name for p in folder.iterdir())
        ('{}', ['key.json', 'w.safetensors'])
        >>> sorted(oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir())
        ['0o644', '0o644']
    """
    path = Path(path)
    fd, tmp = temporary_file(path)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 minus the umask, as the kernel applied it
    os.close(fd)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer that replaces the file (safetensors does) leaves 0o600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
