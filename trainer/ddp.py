"""Distributed data parallel glue: process group from torchrun's environment, collectives, rank 0.

``torchrun --nproc_per_node=N -m trainer FOLDER ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT; :func:`init_from_env` joins the group (NCCL on CUDA, gloo on CPU).  Without
those variables everything here degrades to single-process no-ops, so the loop has one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_info", "init_from_env", "cleanup", "all_reduce_sum", "all_reduce_mean",
           "any_rank", "barrier", "wrap_ddp"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's place in the group (0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment; no-op for a single process.

    Backend: NCCL when this process trains on CUDA, gloo otherwise.  On CUDA each process takes
    the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_initialized()):
        return dist_info()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist_info()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (returns ``t``).  Gloo cannot reduce CUDA int64 everywhere, so the
    tensor travels on the backend's device and comes back."""
    if not dist_info().distributed:
        return t
    dev = _backend_device()
    moved = t.to(dev)
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    t.copy_(moved.to(t.device))
    return t


def all_reduce_mean(value: float) -> float:
    info = dist_info()
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    return float(all_reduce_sum(t)[0]) / info.world


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (cancel and early-stop must agree)."""
    if not dist_info().distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(t)[0] > 0)


def barrier() -> None:
    if dist_info().distributed:
        dist.barrier()


def _backend_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else ``model`` itself.

    No buffer sync per forward: BN statistics are frozen or averaged by the loss anyway, and the
    extra collective per forward would deadlock validation, which runs on uneven shards.
    """
    if not dist_info().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    import inspect
    # torch >= 2.13 renamed the switch; syncing once at init is harmless (all ranks load one file).
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=ids, **no_sync)
