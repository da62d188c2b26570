"""Keras's SGD, with its momentum and Nesterov momentum as Keras writes them.

Reference: keras/src/optimizers/sgd.py (Keras 3.15.1), `SGD.update_step`. Keras keeps the
velocity with the learning rate already in it, and adds it to the weights:

    m ← m·μ − g·lr;  w ← w + m                      (nesterov: w ← w + (m·μ − g·lr))
    w ← w − g·lr                                     (momentum 0: no slot at all)

torch.optim.SGD instead keeps b ← μ·b + g (b ← g on its first step) and steps w ← w − lr·b,
which is the same sum only in exact arithmetic with a constant learning rate, and rounds
differently in float32 (see parity/tests/test_keras_optimizers.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from parity.optim.base import KerasOptimizer
from parity.optim.schedules import Schedule


class KerasSGD(KerasOptimizer):
    """Keras's SGD (lr 0.01, momentum 0, nesterov False by default)."""

    SLOTS = (("momentum", "momentum"),)

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.01,
                 momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float | None = None, schedule: Schedule | None = None) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "weight_decay": weight_decay}
        super().__init__(params, defaults, schedule)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        if group["momentum"] != 0:  # SGD.build: a momentum variable only for momentum ≠ 0
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, params, grads, states, iterations, lr):
        g_lr = torch._foreach_mul(grads, float(lr))
        momentum = group["momentum"]
        if momentum == 0:
            torch._foreach_sub_(params, g_lr)
            return
        m = [s["momentum"] for s in states]
        torch._foreach_mul_(m, momentum)  # m ← m·μ − g·lr
        torch._foreach_sub_(m, g_lr)
        if group["nesterov"]:  # w ← w + (m·μ − g·lr)
            s = torch._foreach_mul(m, momentum)
            torch._foreach_sub_(s, g_lr)
            torch._foreach_add_(params, s)
        else:
            torch._foreach_add_(params, m)
