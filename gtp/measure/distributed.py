"""Running a measurement under `torchrun`: this process's place in the group and the few
collective operations `gtp.measure.evaluate` needs.

Under `torchrun` (WORLD_SIZE > 1) the process group is initialised from the environment (nccl
on CUDA, gloo on CPU). Images are cut into the same global batches as in one process and rank r
takes batches r, r + W, r + 2W, ... (no padding, no duplicates), so each image's outputs are
bit-identical to a one-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in a (possibly one-process) run."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owned: bool = False  # this module initialised the process group and must close it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device: Union[str, torch.device, None] = None) -> Dist:
    """Join a torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owned = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owned = True
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), dev, owned)
    return Dist(0, 1, dev, False)


def close_distributed(d: Dist) -> None:
    if d.owned and dist.is_initialized():
        dist.destroy_process_group()


def shard_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """The global batches [0..B-1], [B..2B-1], ... that rank `rank` runs: every world_size-th."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[rank::world_size]


def gather(obj: Any, d: Dist) -> list[Any]:
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_counts(values: Sequence[int], d: Dist) -> list[int]:
    t = torch.tensor(list(values), dtype=torch.int64, device=d.device)
    if d.active:
        dist.all_reduce(t)
    return t.tolist()
