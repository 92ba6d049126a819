"""torch.distributed for `train` under torchrun: one process per GPU (NCCL) or per CPU slot (gloo).

Outside torchrun (no WORLD_SIZE > 1 in the environment) everything here is a no-op for one process."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from mura_cli import environment


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes; NCCL when this run uses CUDA, else gloo."""
    env = environment.current()
    if env.world_size <= 1:
        return DistInfo()
    info = DistInfo(env.rank, env.world_size, env.local_rank)
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def device_for(info: DistInfo, device: str) -> str:
    """Each process takes its own GPU: cuda:LOCAL_RANK."""
    if info.active and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return device


def gather(obj, info: DistInfo) -> list:
    """Every rank's object, on every rank."""
    if not info.active:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def mean_across(value: float, weight: int, info: DistInfo) -> float:
    if not info.active:
        return value
    pairs = gather((value * weight, weight), info)
    return sum(v for v, _ in pairs) / max(sum(w for _, w in pairs), 1)


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
