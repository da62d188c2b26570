"""Keras's RMSprop, plain, with momentum, and centered.

Reference: keras/src/optimizers/rmsprop.py (Keras 3.15.1), `RMSprop.update_step`:

    v ← ρ·v + (1 − ρ)·g²                        (1 − ρ): a Python float, rounded once
    ḡ ← ρ·ḡ + (1 − ρ)·g                         centered only
    d = (v − ḡ²) + ε  if centered, else  v + ε  (ε inside the square root)
    Δ = (lr·g) / √d
    m ← μ·m + Δ;  w ← w − m                     momentum > 0; else w ← w − Δ

torch.optim.RMSprop adds its eps outside the square root (√v + eps) and, with momentum, keeps
the buffer without the learning rate (b ← μ·b + g/(√v + eps); w ← w − lr·b).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from parity.optim.base import KerasOptimizer, sqrt
from parity.optim.schedules import Schedule
from torch_impl.optim import KERAS_EPSILON


class KerasRMSprop(KerasOptimizer):
    """Keras's RMSprop (lr 1e-3, ρ 0.9, momentum 0, ε 1e-7, not centered by default)."""

    SLOTS = (("velocity", "velocity"), ("momentum", "momentum"),
             ("average_gradient", "average_gradient"))

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 rho: float = 0.9, momentum: float = 0.0, eps: float = KERAS_EPSILON,
                 centered: bool = False, weight_decay: float | None = None,
                 schedule: Schedule | None = None) -> None:
        defaults = {"lr": lr, "rho": rho, "momentum": momentum, "eps": eps,
                    "centered": centered, "weight_decay": weight_decay}
        super().__init__(params, defaults, schedule)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["average_gradient"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _average(avg: list[torch.Tensor], values: list[torch.Tensor], rho: float) -> None:
        """avg ← ρ·avg + (1 − ρ)·values."""
        torch._foreach_mul_(avg, rho)
        torch._foreach_mul_(values, 1.0 - rho)
        torch._foreach_add_(avg, values)

    def _update(self, group, params, grads, states, iterations, lr):
        rho = group["rho"]
        v = [s["velocity"] for s in states]
        self._average(v, torch._foreach_mul(grads, grads), rho)
        d = [x.clone() for x in v]
        if group["centered"]:
            avg = [s["average_gradient"] for s in states]
            self._average(avg, [g.clone() for g in grads], rho)
            torch._foreach_sub_(d, torch._foreach_mul(avg, avg))
        torch._foreach_add_(d, group["eps"])
        d = sqrt(d)
        increment = torch._foreach_mul(grads, float(lr))
        torch._foreach_div_(increment, d)
        if group["momentum"] > 0:
            m = [s["momentum"] for s in states]
            torch._foreach_mul_(m, group["momentum"])
            torch._foreach_add_(m, increment)
            increment = m
        torch._foreach_sub_(params, increment)
