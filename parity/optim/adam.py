"""Keras's Adam family beyond `torch_impl.optim.KerasAdam`: AMSGrad, AdamW, Nadam.

References (Keras 3.15.1): keras/src/optimizers/adam.py `Adam.update_step`, adamw.py (AdamW is
Adam whose `weight_decay` the base class applies, see `parity.optim.base`), nadam.py
`Nadam._backend_update_step` and `Nadam.update_step`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from parity.optim.base import KerasOptimizer, sqrt
from parity.optim.schedules import Schedule
from torch_impl.optim import KERAS_EPSILON, KerasAdam, float_power

f32 = np.float32


def _moments(grads: list[torch.Tensor], m: list[torch.Tensor], v: list[torch.Tensor],
             one_minus_beta1: float, one_minus_beta2: float) -> None:
    """m ← m + (g − m)·(1 − β1); v ← v + (g² − v)·(1 − β2) (Adam's and Nadam's)."""
    s = torch._foreach_sub(grads, m)
    torch._foreach_mul_(s, one_minus_beta1)
    torch._foreach_add_(m, s)
    s = torch._foreach_mul(grads, grads)
    torch._foreach_sub_(s, v)
    torch._foreach_mul_(s, one_minus_beta2)
    torch._foreach_add_(v, s)


class KerasAdamW(KerasOptimizer):
    """Keras's Adam with `amsgrad`, a weight decay (Keras's AdamW) or a schedule.

    With none of them this is `KerasAdam`'s rule, and `from_keras` returns a `KerasAdam`. The
    state keys are KerasAdam's (torch.optim.Adam's), so one layout serves every Adam:

        α ← lr·√(1 − β2^t) / (1 − β1^t)           t = iterations + 1
        m ← m + (g − m)·(1 − β1)                  (1 − β1): a Python float, rounded once
        v ← v + (g² − v)·(1 − β2)
        v̂ ← max(v̂, v), used for v                 amsgrad only
        w ← w − (m·α) / (√v + ε)
    """

    SLOTS = (("exp_avg", "momentum"), ("exp_avg_sq", "velocity"),
             ("max_exp_avg_sq", "velocity_hat"))

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = KERAS_EPSILON,
                 amsgrad: bool = False, weight_decay: float | None = None,
                 schedule: Schedule | None = None) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "amsgrad": amsgrad,
                    "weight_decay": weight_decay}
        super().__init__(params, defaults, schedule)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, params, grads, states, iterations, lr):
        beta1, beta2 = group["betas"]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        alpha = KerasAdam.step_size(float(lr), beta1, beta2, iterations + 1)
        _moments(grads, m, v, 1.0 - beta1, 1.0 - beta2)
        if group["amsgrad"]:
            v_hat = [s["max_exp_avg_sq"] for s in states]
            torch._foreach_maximum_(v_hat, v)
            v = v_hat
        d = sqrt(v)
        torch._foreach_add_(d, group["eps"])
        s = torch._foreach_mul(m, alpha)
        torch._foreach_div_(s, d)
        torch._foreach_sub_(params, s)


class KerasNadam(KerasOptimizer):
    """Keras's Nadam: Adam with Dozat's momentum schedule μ_t = β1·(1 − ½·0.96^t) and its
    running product (Keras's `u_product`, one scalar for the whole optimizer, here kept equal in
    every parameter's state):

        u_product ← (u_product·β1)·(1 − 0.5·0.96^t)        once per step, before the updates
        u_t = β1·(1 − 0.5·0.96^t),  u_{t+1} = β1·(1 − 0.5·0.96^(t+1)),  t = iterations + 1
        m ← m + (g − m)·(1 − β1);  v ← v + (g² − v)·(1 − β2)    (1 − β1): float32's
        m̂ = (u_{t+1}·m) / (1 − u_product·u_{t+1}) + ((1 − u_t)·g) / (1 − u_product)
        v̂ = v / (1 − β2^t)
        w ← w − (m̂·lr) / (√v̂ + ε)

    β1 is read from the optimizer's defaults for `u_product`: groups may not change it.
    """

    SLOTS = (("momentum", "momentum"), ("velocity", "velocity"), ("u_product", "u_product"))

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = KERAS_EPSILON,
                 weight_decay: float | None = None, schedule: Schedule | None = None) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, schedule)
        self._u_product = f32(1.0)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["u_product"] = torch.tensor(1.0, dtype=torch.float32)

    @staticmethod
    def _mu(beta1: np.float32, t: np.float32) -> np.float32:
        """β1·(1 − 0.5·0.96^t), float32 (Nadam.update_step's u_t)."""
        return beta1 * (f32(1.0) - f32(0.5) * float_power(0.96, t))

    def _shared(self, iterations: int, source: dict | None) -> dict[str, np.float32]:
        """Nadam._backend_update_step: `u_product ← u_product·β1·(1 − 0.5·0.96^t)`."""
        beta1 = self.defaults["betas"][0]
        if any(g["betas"][0] != beta1 for g in self.param_groups):
            raise ValueError("KerasNadam: u_product is one for the optimizer, so is beta_1")
        previous = f32(1.0) if source is None else f32(source["u_product"].item())
        t = f32(iterations + 1)
        self._u_product = previous * f32(beta1) * (f32(1.0) - f32(0.5) * float_power(0.96, t))
        return {"u_product": self._u_product}

    def _update(self, group, params, grads, states, iterations, lr):
        beta1, beta2 = f32(group["betas"][0]), f32(group["betas"][1])
        one = f32(1.0)
        t, t_next = f32(iterations + 1), f32(iterations + 2)
        u_t, u_t_next = self._mu(beta1, t), self._mu(beta1, t_next)
        u_product = self._u_product
        u_product_next = u_product * u_t_next
        m = [s["momentum"] for s in states]
        v = [s["velocity"] for s in states]
        _moments(grads, m, v, float(one - beta1), float(one - beta2))
        # m̂ = (u_{t+1}·m) / (1 − u_product·u_{t+1}) + ((1 − u_t)·g) / (1 − u_product)
        m_hat = torch._foreach_mul(m, float(u_t_next))
        torch._foreach_div_(m_hat, float(one - u_product_next))
        s = torch._foreach_mul(grads, float(one - u_t))
        torch._foreach_div_(s, float(one - u_product))
        torch._foreach_add_(m_hat, s)
        # v̂ = v / (1 − β2^t);  w ← w − (m̂·lr) / (√v̂ + ε)
        v_hat = torch._foreach_div(v, float(one - float_power(beta2, t)))
        d = sqrt(v_hat)
        torch._foreach_add_(d, group["eps"])
        torch._foreach_mul_(m_hat, float(lr))
        torch._foreach_div_(m_hat, d)
        torch._foreach_sub_(params, m_hat)
