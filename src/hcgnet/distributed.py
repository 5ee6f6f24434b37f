"""Process-group set-up for torchrun (DDP): gloo on CPU, NCCL on GPU; one process works without it. Also the
DataLoader workers' own OS process group, which keeps a group-wide signal for the main process to handle."""
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from hcgnet.errors import HCGNetError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK...).

    The device is the local GPU when there is one (``device="auto"``), else the CPU; ``"cuda:N"`` names the GPU of
    a single process (under torchrun each process takes its local rank's).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    index = torch.device(device).index if use_cuda and device != "auto" and world_size == 1 else None
    dev = torch.device("cuda", local_rank if index is None else index) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        values = values.to(d.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Give every rank rank 0's buffers (BN running statistics drift apart after DDP's last forward)."""
    if d.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """True on every rank if it is true on any rank (e.g. 'stop: a loss is NaN')."""
    return bool(max_int(int(flag), d))


def rank0_first(d: Dist, work: Callable[[], T], what: str) -> T:
    """``work()`` on rank 0 and then, once it has succeeded there, on the other ranks: for work that writes what
    they all read (a dataset downloaded or extracted into one folder), which ranks doing it at once would
    corrupt. When it fails on rank 0, the other ranks stop with a one-line :class:`HCGNetError` instead of waiting
    (``what`` says what failed)."""
    if not d.enabled:
        return work()
    if d.is_main:
        try:
            result = work()
        except BaseException:
            broadcast_flag(True, d)
            raise
        broadcast_flag(False, d)
        return result
    if broadcast_flag(False, d):
        raise HCGNetError(f"{what} failed on rank 0 (its error says why)")
    return work()


def gather_objects(obj, d: Dist):
    """Every rank's ``obj`` as a list on every rank (just ``obj`` without DDP)."""
    if not d.enabled:
        return obj
    gathered = [None] * d.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def parameters_match_rank0(model: torch.nn.Module, d: Dist) -> bool:
    """Whether every process holds rank 0's parameters, bit for bit (trivially true for one process)."""
    if not d.enabled:
        return True
    same = True
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        same &= torch.equal(reference, p.detach())
    return not broadcast_flag(not same, d)


def max_int(value: int, d: Dist) -> int:
    """The largest of every rank's ``value``."""
    if not d.enabled:
        return value
    t = torch.tensor([int(value)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a terminal's Ctrl-C, ``timeout`` and ``kill -- -PGID`` signal the whole
    process group. A worker in a group of its own is left out: the main process finishes the step, saves and
    then shuts it down (a worker killed by SIGTERM mid-step would break the run with a traceback instead).
    Workers still end by themselves when the main process dies (torch watches the parent)."""
    if hasattr(os, "setpgrp"):  # POSIX only
        os.setpgrp()
