"""Data-parallel training with ``torch.distributed`` (started by ``torchrun --nproc_per_node=N``).

Every process samples the same global batch from the same seeded generators and trains on its own slice of
it; ``DistributedDataParallel`` averages the gradients, so N processes compute the same update as one
process with the whole batch (up to float rounding). Only rank 0 writes checkpoints, the manifest, metrics,
resume states and reports. Backend: NCCL on CUDA, gloo on CPU. Without ``torchrun`` all of this is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from progdistill.core.config import ConfigError


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over processes (itself when not distributed)."""
    if rank_world()[1] > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= rank_world()[1]
    return tensor


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every process (so that all processes take the same branch)."""
    if rank_world()[1] == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def local_slice(batch_size: int, field: str = "batch_size") -> slice:
    """This process's rows of a global batch. Raises ``ValueError`` naming both values (the batch as
    ``field``, e.g. "student.batch_size") when the batch does not split evenly over the processes."""
    rank, world = rank_world()
    if world > batch_size:
        raise ValueError(
            f"--nproc_per_node={world} is larger than the global {field}={batch_size}; "
            f"use at most {batch_size} processes"
        )
    if batch_size % world:
        raise ValueError(
            f"{field}={batch_size} does not divide across {world} processes; choose a batch "
            f"size that is a multiple of {world}"
        )
    share = batch_size // world
    return slice(rank * share, (rank + 1) * share)


def shutdown() -> None:
    """Leave the process group joined by :func:`init_from_env`, if any. A process that exits without it can
    abort in the collective library's threads at interpreter exit ("terminate called without an active
    exception"), failing a run that finished."""
    if dist.is_initialized():  # no barrier: after an error the other processes may never reach one
        dist.destroy_process_group()


def init_from_env(device: str = "auto") -> str:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); returns the device to use
    ("cuda:LOCAL_RANK" on GPUs, else ``device``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks CUDA when available, else CPU. Raises ``ConfigError`` for an unknown device string or a
    CUDA device on a machine (or torch build) without CUDA."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r} is invalid: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device!r}: CUDA is not available here (this torch build or machine has no GPU); use auto or cpu"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return resolved
