"""torchrun and DistributedDataParallel for `torch_impl.train`: the book's recipe on N processes.

    torchrun --nproc-per-node N -m torch_impl.train [--device cpu|cuda] …

The semantics are those of Keras's distribution strategies: `--batch-size` is the global batch.
The trainer's one epoch loop and step (`torch_impl.train.train_epoch`, `make_train_step`) take the
world as a parameter and call the hooks here; a plain run passes `ONE_PROCESS`, for which every
hook is the identity. Every rank draws the same permutation of the training set per epoch (the
trainer's seeded CPU generator) and takes its slice of each global batch (`shard`:
`tensor_split`, so slices differ by one image at most, a last partial batch included). Each
rank's loss is its slice's summed cross-entropy ÷ (global_batch / world_size); DDP averages the
gradients over the ranks, so the step is the single-process step on the mean loss of the global
batch, up to float summation order (tests/test_distributed.py checks 10 steps: the gradients
within float32 summation error of one process's, the optimizer's update from them bit for bit).
The epoch's metrics and the validation and test metrics are sums over disjoint shards that cover
every image once, all-reduced (`all_reduce_sums`, `evaluate`); the callbacks then decide from
the same val_loss on every rank, so all ranks stop at the same epoch.

Only rank 0 takes the output folder's lock, writes files and prints (the other ranks' stdout goes
to /dev/null); its failures to do so reach the other ranks through `on_main`, so all of them stop.

Dropout: rank 0 draws from the stream a single-process run draws from (seeded once, saved in
last.pt); rank r > 0 re-seeds its torch generator at the start of every epoch from (seed, rank,
epoch) — so `--resume` continues every rank exactly from last.pt's rank-0 state alone, and a
resumed run equals an uninterrupted one. last.pt records the world size; resuming with another
is refused.

Backends: gloo on the CPU, nccl on CUDA with one process per GPU (`LOCAL_RANK`). Rendezvous,
several nodes included, is torchrun's own (`--nnodes`, `--rdzv-backend`, `--rdzv-endpoint`); the
process group reads it from the environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fashion_cnn.errors import UserError
from torch_impl.device import resolve_device
from torch_impl.evaluate import EvalResult, evaluate_sums, result_from_sums
from torch_impl.evaluate import evaluate as evaluate_one
from torch_impl.model import EVAL_BATCH_SIZE

# A rank's dropout seed at an epoch: seed + STRIDE × (epoch × world_size + rank), mod 2^64.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class World:
    """This process's place in the run. `distributed` is False for a plain `python -m …` run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = World()  # a plain run: every hook below is then the identity


def world_from_env(env: dict | None = None) -> World:
    """The world torchrun describes in WORLD_SIZE, RANK and LOCAL_RANK; none → one process."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return ONE_PROCESS
    try:
        size, rank, local = (int(env.get(k, "0")) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers") from None
    if not (size >= 1 and 0 <= rank < size and local >= 0):
        raise UserError(f"RANK {rank} / WORLD_SIZE {size} / LOCAL_RANK {local} is no world")
    return World(rank=rank, size=size, local_rank=local, distributed=True)


def rank_device(world: World, spec: str) -> torch.device:
    """The device of this rank: `--device cuda`/`auto` with GPUs → cuda:LOCAL_RANK."""
    device = resolve_device(spec)
    if not world.distributed:
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise UserError(f"LOCAL_RANK {world.local_rank} has no GPU: this node has {count} "
                            f"(use --nproc-per-node {count} or fewer)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        return device
    if device.type != "cpu":
        raise UserError(f"device {spec!r}: torchrun runs on cpu (gloo) or cuda (nccl) only")
    return device


@contextmanager
def session(world: World, spec: str, init_method: str | None = None) -> Iterator[torch.device]:
    """The run's device; under torchrun also the process group (gloo on CPU, nccl on CUDA),
    destroyed at the end, with stdout silenced on ranks other than 0."""
    device = rank_device(world, spec)
    if not world.distributed:
        yield device
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=world.rank,
                            world_size=world.size,
                            device_id=device if device.type == "cuda" else None)
    try:
        with ExitStack() as stack:
            if not world.is_main:
                devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
                stack.enter_context(contextlib.redirect_stdout(devnull))
            yield device
    finally:
        dist.destroy_process_group()


class MainFailed(UserError):
    """Rank 0 failed at something every rank waits for; rank 0 says why."""


def on_main(world: World, fn: Callable[[], object]):
    """fn() on rank 0, its result (or its UserError) on every rank."""
    if not world.distributed:
        return fn()
    box: list = [None]
    if world.is_main:
        try:
            box[0] = (True, fn())
        except UserError as err:
            box[0] = (False, str(err))
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise UserError(value) if world.is_main else MainFailed(value)
    return value


@contextmanager
def main_only(world: World, make: Callable[[], contextlib.AbstractContextManager]):
    """Enter the context `make()` on rank 0 only (the output folder and its lock); every rank
    gets rank 0's value, or the error rank 0 met."""
    with ExitStack() as stack:
        yield on_main(world, lambda: stack.enter_context(make()))


def shard(items: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of `items`: disjoint, in order, covering them all; sizes differ by ≤ 1."""
    if not world.distributed:
        return items
    return items.tensor_split(world.size)[world.rank]


def reseed_dropout(world: World, seed: int, epoch: int) -> None:
    """Ranks > 0: a fresh dropout stream per epoch from (seed, rank, epoch) (see the module's
    docstring); rank 0 keeps the single-process stream."""
    if world.distributed and not world.is_main:
        torch.manual_seed((seed + SEED_STRIDE * (epoch * world.size + world.rank)) % 2**64)


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """DistributedDataParallel around `model` (its weights broadcast from rank 0)."""
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def all_reduce_sums(*sums: torch.Tensor | float, world: World) -> list[float]:
    """Sums over every rank, in float64 (on the CPU with gloo, on the GPU with nccl)."""
    device = next((s.device for s in sums if isinstance(s, torch.Tensor)), torch.device("cpu"))
    t = torch.stack([torch.as_tensor(s, dtype=torch.float64, device=device) for s in sums])
    if world.distributed:
        dist.all_reduce(t)
    return t.tolist()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, world: World,
             batch_size: int = EVAL_BATCH_SIZE) -> EvalResult:
    """`torch_impl.evaluate.evaluate` over N ranks: each evaluates its shard (in batches of
    `batch_size`, a last partial one included), the sums are all-reduced."""
    if not world.distributed:
        return evaluate_one(model, x, y, batch_size)
    loss_sum, correct = evaluate_sums(model, shard(x, world), shard(y, world), batch_size)
    total_loss, total_correct = all_reduce_sums(loss_sum, correct, world=world)
    return result_from_sums(total_loss, int(total_correct), len(y))
