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
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def writes_run_folder() -> bool:
    """Whether this process is the one that writes the run folder: a single process, or rank 0 under
    torchrun. Read from the environment, before the process group is joined."""
    return not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0


@dataclass
class World:
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (each is a sync point; the loop calls them per window or per epoch) ----------------
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's values, in place, on every rank."""
        dist.broadcast(tensor, src=0)
        return tensor

    def average_grads(self, params: list) -> None:
        """Average the gradients of ``params`` over the ranks in one collective (a missing one counts as zero,
        so every rank sends the same shape)."""
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

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
        _WORLD = World(dist.get_rank(), dist.get_world_size())
    return _WORLD


# What a collective raises when a peer is gone: gloo's RuntimeError names its transport ("Connection reset by
# peer", "Connection closed by peer", "Timed out waiting ... for recv"); NCCL and the store raise DistError.
_GLOO_TRANSPORT = re.compile(r"gloo/transport|Connection (reset|closed) by peer")
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*")   # gloo's "[/path/pair.cc:537] "


def lost_peer(exc: BaseException) -> str | None:
    """When ``exc`` is a collective failing because another process of the run is gone (its node lost,
    killed, or hung past the process group's timeout): what the transport said, in short. Else None."""
    if _WORLD is None:
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and _GLOO_TRANSPORT.search(text))):
        return None
    text = _SOURCE_PREFIX.sub("", text)
    return text.split(". ")[0].rstrip(".")


def shutdown() -> None:
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None


# --- our own torchrun launch (`converge train --nproc N`) -------------------------------------------------
_EXIT_FILE = "CONVERGE_EXIT_FILE"
_TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d")   # torchrun's own log lines (glog style)


def run_torchrun(arguments: list[str], nproc: int, *, debug: bool = False, env: dict | None = None) -> int:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node N ARGUMENTS`` and return the first
    process's exit status (torchrun itself answers 1 for any failure). Its own log lines and tracebacks are
    left out of stderr unless ``debug``. ``env``: more environment for the processes."""
    with tempfile.TemporaryDirectory() as scratch:
        exit_file = Path(scratch, "exit")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   *arguments]
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # torchrun handles Ctrl-C for its processes
        try:
            # OMP_NUM_THREADS: torchrun sets 1 when unset, with a warning; say it ourselves, quietly.
            env = {"OMP_NUM_THREADS": "1", **os.environ, **(env or {}), _EXIT_FILE: str(exit_file)}
            process = subprocess.Popen(command, env=env, stderr=None if debug else subprocess.PIPE, text=True)
            if process.stderr is not None:
                _pass_on_own_lines(process.stderr, first_ended=exit_file.exists)
            returncode = process.wait()
        finally:
            signal.signal(signal.SIGINT, previous)
        return int(exit_file.read_text()) if exit_file.exists() else returncode


def _pass_on_own_lines(stream, first_ended=lambda: False) -> None:
    """Copy the processes' stderr through, leaving out torchrun's own log lines and tracebacks (it prints
    both when told to stop); our one-line errors and warnings pass unchanged. Once the first process has
    ended with a status of its own (``first_ended()``: it left its exit status, after printing what it had to
    say), the others have lost contact with it and only their own dying words are left: a C++ runtime's
    "terminate called without an active exception" from a peer torn down inside a collective, left out
    like the rest (the command's status and error line are the first process's)."""
    torchrun_failed = ended = False
    for line in stream:
        # torchrun's traceback and failure report come last, when it stops; only our lines pass after it.
        torchrun_failed = torchrun_failed or line.startswith("Traceback (most recent call last):")
        ended = ended or first_ended()
        ours = line.startswith(("error: ", "warning: "))
        if ours or not (torchrun_failed or _TORCHRUN_LOG.match(line) or ended):
            sys.stderr.write(line)
            sys.stderr.flush()


def launched_rank() -> int | None:
    """This process's rank when run_torchrun started it, else None."""
    if not os.environ.get(_EXIT_FILE) or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"])


def first_process_ended() -> bool:
    """Under run_torchrun: the first process has ended with a status of its own (and said why, if it
    failed), so another process that lost contact with it has nothing to add."""
    return launched_rank() not in (None, 0) and Path(os.environ[_EXIT_FILE]).exists()


def tell_launcher(code: int) -> int:
    """Under run_torchrun, the first process leaves its exit status for the launcher. Returns ``code``."""
    if launched_rank() == 0:
        Path(os.environ[_EXIT_FILE]).write_text(str(code))
    return code
