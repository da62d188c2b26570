"""One training epoch of the book's recipe, its step and the bar over its batches, for one
process and for N.

One loop and one step, with the world as a parameter: under torchrun its hooks
(`torch_impl.distributed`: `shard`, `all_reduce_sums`, and DDP's gradient mean inside
`loss.backward()`) make them the distributed epoch; for one process (`ONE_PROCESS`) every hook is
the identity. `torch_impl.train` runs them, with validation and Keras's callbacks around them.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from torch_impl import distributed as ddp


def train_epoch(
    model: nn.Module,
    step_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: torch.Generator,
    world: ddp.World = ddp.ONE_PROCESS,
    progress=None,
) -> tuple[float, float]:
    """One pass over (x, y) in a fresh random order; returns Keras's (loss, accuracy).

    `batch_size` is the global batch, `step_fn` a `make_train_step` step. Under torchrun every
    rank draws the same order and steps on its shard of each batch (`ddp.shard`), and the epoch's
    sums are all-reduced; for one process both hooks are the identity.

    Keras reports the running mean over the epoch's batches in training mode (dropout on):
    loss weighted by batch size, accuracy over examples. Both are summed on the device and read
    once at the end: no host synchronisation per step.
    """
    model.train()
    n = len(x)
    # Shuffle by index over the whole training set (one tensor on the device); the order comes
    # from a CPU generator of our own, so it is the same on every device and every rank.
    order = torch.randperm(n, generator=shuffle).to(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        mine = ddp.shard(idx, world)
        loss, batch_correct = step_fn(x[mine], y[mine], len(idx))
        # The batch's mean loss (for N ranks: their mean of it) → this rank's part of its sum.
        loss_sum += loss * (len(idx) / world.size)
        correct += batch_correct
        # Reading the loss syncs with the device: not every step; and a rank holds only its share.
        if progress is not None:
            progress.update(1)
            if progress.n % 50 == 0 and not world.distributed:
                seen = min(start + batch_size, n)
                progress.set_postfix_str(f"loss: {loss_sum.item() / seen:.4f}")
    total_loss, total_correct = ddp.all_reduce_sums(loss_sum, correct, world=world)
    return total_loss / n, total_correct / n


def make_train_step(forward: nn.Module, optimizer: torch.optim.Optimizer,
                    world: ddp.World = ddp.ONE_PROCESS):
    """The training step on this process's slice of a global batch of `global_n` images:
    forward, cross-entropy on logits, backward, Keras's Adam update.

    The loss is the slice's summed cross-entropy ÷ (global_n / world size). For one process that
    is the batch's mean by F.cross_entropy's own float32 operations (the same sum, one division
    by n: the same value and gradients, bit for bit on the CPU; tests/test_train.py). Under DDP,
    which averages the ranks' gradients, the ranks' mean of it is the global batch's mean loss,
    however unequal the slices (a plain mean per rank would weight 5 + 4 images of a last batch
    of 9 alike). Returns that loss and the slice's count of correct predictions, on the device.
    """

    def step(xb: torch.Tensor, yb: torch.Tensor, global_n: int):
        logits = forward(xb)  # (b, 10), b = this process's slice
        loss = F.cross_entropy(logits, yb, reduction="sum") / (global_n / world.size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == yb).sum()

    return step


@contextmanager
def progress_bar(total: int, enabled: bool):
    """A tqdm bar over the epoch's batches on a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="batch", leave=False, dynamic_ncols=True, file=sys.stdout)
    try:
        yield bar
    finally:
        bar.close()
