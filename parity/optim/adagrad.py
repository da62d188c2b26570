"""Keras's Adagrad.

Reference: keras/src/optimizers/adagrad.py (Keras 3.15.1), `Adagrad.build` (the accumulator
starts at `initial_accumulator_value`, float32) and `Adagrad.update_step`:

    a ← a + g²
    w ← w − (lr·g) / √(a + ε)

torch.optim.Adagrad adds its eps outside the square root (√a + eps) and starts a at its
`initial_accumulator_value`, 0 by default against Keras's 0.1.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from parity.optim.base import KerasOptimizer, sqrt
from parity.optim.schedules import Schedule
from torch_impl.optim import KERAS_EPSILON


class KerasAdagrad(KerasOptimizer):
    """Keras's Adagrad (lr 1e-3, initial accumulator 0.1, ε 1e-7 by default)."""

    SLOTS = (("accumulator", "accumulator"),)

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 initial_accumulator_value: float = 0.1, eps: float = KERAS_EPSILON,
                 weight_decay: float | None = None, schedule: Schedule | None = None) -> None:
        defaults = {"lr": lr, "initial_accumulator_value": initial_accumulator_value,
                    "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, schedule)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["accumulator"] = torch.full_like(
            p, group["initial_accumulator_value"], memory_format=torch.preserve_format)

    def _update(self, group, params, grads, states, iterations, lr):
        a = [s["accumulator"] for s in states]
        torch._foreach_add_(a, torch._foreach_mul(grads, grads))
        d = torch._foreach_add(a, group["eps"])
        d = sqrt(d)
        increment = torch._foreach_mul(grads, float(lr))
        torch._foreach_div_(increment, d)
        torch._foreach_sub_(params, increment)
