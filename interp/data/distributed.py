"""``torch.distributed`` for corpus scans: who am I, how many are we, and the few collectives scans need.

A scan is one process unless a process group is initialised (``torchrun`` sets ``RANK``/``WORLD_SIZE``;
:func:`init_from_env` then starts the group: NCCL on CUDA, gloo on the CPU). Every helper here is the
identity in a single process, so scan code reads the same with one rank or many.

NCCL only moves CUDA tensors, gloo CPU tensors: :func:`comm_device` says which, and the helpers move
tensors there and back.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_",
    "broadcast_object",
    "comm_device",
    "init_from_env",
    "is_main",
    "rank_world",
]


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Start the process group torchrun describes in the environment; True when one is running.

    Does nothing (and returns False) outside torchrun (``WORLD_SIZE`` unset or 1) and nothing when a
    group already exists. On CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU otherwise."""
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``t`` over ranks (``op``: sum | min | max); returns a new tensor on ``t``'s device."""
    if not _active():
        return t
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    buf = t.to(comm_device(), copy=True)
    dist.all_reduce(buf, op=ops[op])
    return buf.to(t.device)


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order, on ``t``'s device."""
    if not _active():
        return [t]
    buf = t.to(comm_device()).contiguous()
    out = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(out, buf)
    return [o.to(t.device) for o in out]


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` in place with rank ``src``'s values."""
    if _active():
        buf = t.detach().to(comm_device(), copy=True)
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            t.copy_(buf.to(t.device))
    return t


def barrier() -> None:
    if _active():
        dist.barrier()
