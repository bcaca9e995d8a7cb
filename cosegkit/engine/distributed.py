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

__all__ = ["DistInfo", "all_gather_cat", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world`` processes, on ``device``."""

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
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
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
    """Leave the process group, if one was joined."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-d tensor of any length from every process, in rank order."""
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
