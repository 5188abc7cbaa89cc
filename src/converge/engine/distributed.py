"""Data-parallel training on torch.distributed: started by torchrun (ours via `--nproc`, or the user's,
multi-node included), gloo on CPU and NCCL on CUDA.

The design keeps every decision identical on every rank without trusting floating point to agree:

* each global batch (the same on every rank: same seed, same order) is cut into one contiguous slice per
  rank, so the world together takes exactly the single-process batch;
* DistributedDataParallel averages the gradients, so every rank applies the same update;
* what decisions read is made common before it is read: the epoch's training loss and the divergence
  guard's loss window are summed over ranks, validation and test values are broadcast from rank 0, and
  stop requests and checkpoint times are agreed at the guard's window boundaries;
* only rank 0 writes the run folder and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (each is a sync point; the loop calls them per window or per epoch) ----------------
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_flags(self, flags: list[bool], device: torch.device) -> list[bool]:
        """True for a flag that is true on any rank."""
        values = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def from_main(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's numbers, on every rank."""
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def object_from_main(self, value):
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        dist.barrier()

    # --- data ------------------------------------------------------------------------------------------
    def slice_of(self, size: int) -> slice:
        """This rank's contiguous part of a global batch of ``size`` samples (sizes differ by at most one)."""
        return slice(size * self.rank // self.size, size * (self.rank + 1) // self.size)


_WORLD: World | None = None


def current_world(device: torch.device | None = None) -> World | None:
    """The process group this process belongs to, joined on first call under torchrun (NCCL when
    ``device`` is a GPU, else gloo); None for a single process."""
    global _WORLD
    if _WORLD is None and launched_by_torchrun():
        if not dist.is_initialized():
            cuda = device is not None and device.type == "cuda"
            dist.init_process_group(backend="nccl" if cuda else "gloo",
                                    device_id=device if cuda else None)
        _WORLD = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None
