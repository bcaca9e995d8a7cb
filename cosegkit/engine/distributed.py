"""Distributed training through PyTorch's own engine: ``torchrun`` and ``torch.distributed``.

``torchrun --nproc-per-node K -m cosegkit train ...`` starts K processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them and joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU). A plain ``cosegkit train`` is a world of one, with no
process group at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as torch_dist

from cosegkit.errors import CosegValueError

__all__ = ["DistInfo", "all_gather_cat", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world`` processes, on ``device``.

    Example:
        >>> import torch
        >>> from cosegkit.engine.distributed import DistInfo
        >>> DistInfo()  # a plain, single-process run
        DistInfo(rank=0, world=1, local_rank=0, device=device(type='cpu'))
        >>> second = DistInfo(rank=1, world=2, local_rank=1, device=torch.device("cpu"))
        >>> DistInfo().is_main, second.is_main  # only rank 0 writes files and prints
        (True, False)
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CosegValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:<index> (--device on the command line)") from err
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CosegValueError(
                f"device {device!r}: no CUDA device is available here (torch.cuda.is_available() is False); "
                f"use --device cpu, or auto"
            )
        if dev.index >= count:
            raise CosegValueError(f"device {str(dev)!r}: this machine has {count} CUDA device(s), 0 to {count - 1}")
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Args:
        device: ``"auto"`` (CUDA at ``LOCAL_RANK`` when available, else the CPU), or a device
            such as ``"cpu"``, ``"cuda"`` (at ``LOCAL_RANK``) or ``"cuda:1"``.

    Returns:
        This process's :class:`DistInfo`.

    Example:
        Started without ``torchrun`` (no ``WORLD_SIZE`` in the environment), the process is a
        world of one and joins no process group:

        >>> import torch.distributed
        >>> from cosegkit.engine.distributed import setup
        >>> info = setup("cpu")
        >>> info
        DistInfo(rank=0, world=1, local_rank=0, device=device(type='cpu'))
        >>> info.is_main, torch.distributed.is_initialized()
        (True, False)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Leave the process group, if one was joined.

    Example:
        A one-process ``gloo`` group, left again; without a group it does nothing:

        >>> import tempfile
        >>> import torch.distributed as dist
        >>> from cosegkit.engine.distributed import cleanup
        >>> store = f"file://{tempfile.mkdtemp()}/store"
        >>> dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        >>> dist.is_initialized()
        True
        >>> cleanup()
        >>> dist.is_initialized()
        False
        >>> cleanup()  # no group: nothing to leave
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-d tensor of any length from every process, in rank order.

    Needs an initialised process group (see :func:`setup`). With K processes holding
    ``n_0, ..., n_{K-1}`` elements, every process gets the same ``(n_0 + ... + n_{K-1},)``
    tensor; the lengths may differ between processes.

    Example:
        In a one-process ``gloo`` group the result is the input itself:

        >>> import tempfile
        >>> import torch
        >>> import torch.distributed as dist
        >>> from cosegkit.engine.distributed import all_gather_cat, cleanup
        >>> store = f"file://{tempfile.mkdtemp()}/store"
        >>> dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        >>> scores = torch.tensor([0.25, 0.5, 0.75])
        >>> gathered = all_gather_cat(scores)
        >>> gathered.shape, gathered.dtype, gathered.tolist()
        (torch.Size([3]), torch.float32, [0.25, 0.5, 0.75])
        >>> cleanup()  # leave the group again
        >>> dist.is_initialized()
        False
    """
    world = torch_dist.get_world_size()
    n = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch_dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
    padded[: x.numel()] = x
    out = [torch.zeros_like(padded) for _ in range(world)]
    torch_dist.all_gather(out, padded)
    return torch.cat([o[: int(s)] for o, s in zip(out, sizes, strict=True)])
