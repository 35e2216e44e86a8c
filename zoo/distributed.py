"""Process-group plumbing shared by ``zoo fit`` and ``zoo eval``: the environment every multi-GPU run gets,
joining (or starting) a group of local processes, and the few collectives the zoo's own loops need.

Why at the zoo level: evaluation is not a recipe and must not import Lightning; the recipes' Lightning
pieces (FSDP policy, strategy names) live in zoo.recipes.distributed and import from here.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from zoo.errors import ConfigError

# NVLink multicast (NVLS) stays off on the lent H200 hosts: see the device notes. setdefault: a user's own
# value wins.
DISTRIBUTED_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def set_distributed_env() -> None:
    """Put DISTRIBUTED_ENV into os.environ where unset; call before Lightning or torchrun starts processes
    (children inherit it)."""
    for k, v in DISTRIBUTED_ENV.items():
        os.environ.setdefault(k, v)


def is_fsdp(strategy: Any) -> bool:
    """True for an FSDP strategy instance or one of its registry names (Lightning imported only for objects)."""
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(ds: Dataset | Sequence, rank: int, world_size: int) -> Dataset:
    """Samples rank, rank + world_size, ...: disjoint shards covering ``ds`` exactly once (no padding)."""
    return ds if world_size == 1 else Subset(ds, range(rank, len(ds), world_size))


def free_port() -> int:
    """A TCP port free on this host now, for a local group's MASTER_PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(rank: int, world_size: int, port: int, target: Callable[[list[str]], Any], argv: list[str]) -> None:
    """Entry of a process started by launch(): torchrun's environment, then ``target(argv)``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    target(argv)


def launch(target: Callable[[list[str]], Any], nproc: int, argv: list[str]) -> int:
    """Run ``target(argv)`` (a module-level function) in ``nproc`` fresh local processes, as torchrun would
    (spawned: no CUDA state is inherited). Refused inside a torchrun launch."""
    import torch.multiprocessing as mp

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError("--nproc inside a torchrun launch: use one or the other.")
    set_distributed_env()
    mp.start_processes(_spawned, args=(nproc, free_port(), target, argv), nprocs=nproc, start_method="spawn")
    return 0


def init_process_group(device: str) -> tuple[int, int, str]:
    """Join the process group torchrun (or launch()) described in the environment: (rank, world, device),
    the device being ``cuda:LOCAL_RANK`` (NCCL) on GPUs, gloo on the CPU. One process: nothing to join."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or (dist.is_available() and dist.is_initialized()):
        r, w = world()
        return r, w, device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce_values(values: list[float], op=None) -> list[float]:
    """``values`` reduced over the group (sum unless ``op``); unchanged in one process."""
    if world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's value of ``t`` (moved to the GPU and back for NCCL)."""
    buf = t.detach().clone()
    if dist.get_backend() == "nccl":
        buf = buf.cuda()
    dist.broadcast(buf, 0)
    return buf.to(t.device)
