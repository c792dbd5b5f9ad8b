"""Data-parallel training across processes and machines: torch's DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node 4 -m anmc train prior.anm videos -o runs/x            # one machine, 4 ranks
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m anmc train prior.anm videos -o runs/x   # on each of 2 machines

    ctx = setup("cpu")                       # reads RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, nccl on CUDA
    model = wrap(loss_module, ctx)           # DistributedDataParallel when world > 1
    for idx in rank_batches(order, batch, ctx): ...   # this rank's share of each global batch
    teardown(ctx)                            # destroy_process_group

The global batch of `batch` sequences is cut into `world` shares of batch / world; DDP averages the
ranks' gradients, which then equal the gradient of the whole batch's mean loss, so N ranks train as one
process with the same global batch (tests/test_distributed.py). Every rank seeds the same RNG and draws
the noise of the whole batch (`batch_noise`), keeping its own rows: the draws do not depend on the
number of ranks, and a checkpoint (rank 0's RNG, `rng_state`) resumes on any number of ranks.
See docs/scaling.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from anmc.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank of world, local_rank on its machine, and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and logs."""
        return self.rank == 0


def launched_world() -> int:
    """How many processes torchrun started (WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device | str) -> DistContext:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
    or a single-process context without one. On CUDA each rank takes GPU LOCAL_RANK and the backend is
    NCCL; on the CPU, gloo."""
    device = torch.device(device)
    world = launched_world()
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"rank {rank} is local rank {local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc_per_node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, dist.get_world_size(), local_rank, device)


def teardown(ctx: DistContext) -> None:
    """Leave the job (destroy_process_group) after every rank has arrived."""
    if ctx.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def wrap(module: torch.nn.Module, ctx: DistContext, find_unused: bool = False) -> torch.nn.Module:
    """`module` in DistributedDataParallel when there are several ranks (its construction broadcasts rank
    0's weights), else `module` itself. Only parameters that require grad at this moment are averaged:
    wrap again after changing which do (the trainer does, when the physical params unfreeze)."""
    if ctx.world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def check_batch(batch: int, ctx: DistContext) -> None:
    """The global batch must split evenly across the ranks (every rank's mean then weighs the same)."""
    if batch % ctx.world:
        raise UserError(f"--batch {batch} does not split across {ctx.world} ranks; use a multiple of {ctx.world}.")


def rank_rows(batch: int, ctx: DistContext) -> slice:
    """This rank's rows of a global batch of `batch`: a contiguous share of batch / world."""
    share = batch // ctx.world
    return slice(ctx.rank * share, (ctx.rank + 1) * share)


def batch_noise(shape: tuple[int, ...], batch: int, ctx: DistContext, device: torch.device) -> torch.Tensor:
    """Standard normal noise for this rank's rows of a global batch: shape[0] == batch / world rows of a
    draw of (batch, *shape[1:]) from the global RNG, which every rank advances alike. With one rank it is
    torch.randn(shape), the draw of randn_like on a contiguous tensor of that shape."""
    full = torch.randn((batch, *shape[1:]), device=device)
    return full[rank_rows(batch, ctx)]


def all_mean(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """The mean of each value over the ranks (each rank's number is the mean over its share)."""
    if ctx.world <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(list(values.values()), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return dict(zip(values, (t / ctx.world).tolist()))


def rng_state() -> dict:
    """Every random number generator training draws from: the CPU generator and each CUDA device's."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state) -> None:
    """Restore `rng_state()`'s dict (or a checkpoint's bare CPU state from before it); CUDA states only when
    this machine has as many devices (a checkpoint moved from a GPU to the CPU keeps its CPU stream)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training sequences in an epoch: a function of (seed, epoch) only, so resuming replays it
    on any number of ranks (the data order needs no RNG state in the checkpoint)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class RankBatches(torch.utils.data.Sampler):
    """This rank's share of each of an epoch's `steps` global batches of `batch` sequences (out of n):
    the epoch's order (`epoch_order`, repeated when the epoch needs more than n), cut into global batches,
    and `rank_rows` of each. A batch sampler for a DataLoader: what DistributedSampler does, with the
    global batch fixed whatever the number of ranks."""

    def __init__(self, n: int, batch: int, steps: int, seed: int, epoch: int, ctx: DistContext):
        self.n, self.batch, self.steps, self.seed, self.epoch, self.ctx = n, batch, steps, seed, epoch, ctx

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        needed = self.steps * self.batch
        order = epoch_order(self.n, self.seed, self.epoch).repeat(-(-needed // self.n))[:needed]
        rows = rank_rows(self.batch, self.ctx)
        for i in range(self.steps):
            yield order[i * self.batch : (i + 1) * self.batch][rows].tolist()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op alone)."""
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()
