"""Multi-process training with PyTorch's own engine: torchrun + DistributedDataParallel.

    torchrun --nproc_per_node 4 -m mlpot train CONFIG.yaml          # one machine
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 4 -m mlpot train ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; :func:`context` reads
them and joins the process group (gloo on CPU, NCCL on GPUs, one GPU per local rank). Every
process draws the same shuffled order of the training set each epoch (same seed); each global
batch of ``batch_size`` structures is split across the processes (a distributed sampler over
batches: process r takes structures r, r + W, r + 2W, … of it), DDP averages the gradients,
so the step is the one a single process takes on the whole global batch (the loss is a mean
per observation: equal for equal-sized shards of equal-sized structures). Every process
validates on the whole validation set, so schedule and early-stopping decisions agree; only
rank 0 writes checkpoints, logs, models and progress bars.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands: rank among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context(device: torch.device) -> Context:
    """The torchrun environment (joining the process group once), or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank)


def shard(indices: list[int], ctx: Context) -> list[int]:
    """This process's share of a global batch."""
    return indices[ctx.rank::ctx.world_size]


def mean_over_processes(value: float, ctx: Context, device: torch.device) -> float:
    """The mean of ``value`` over all processes (``value`` itself in a single process)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ctx.world_size
