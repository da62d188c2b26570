"""Adam with Keras 3's exact update rule, as a `torch.optim.Optimizer`.

Reference: keras/src/optimizers/adam.py (Keras 3.15.1), `Adam.update_step`; Kingma & Ba,
"Adam: A Method for Stochastic Optimization", the formula just before Section 2.1.

Keras, at step t = 1, 2, … (all in float32):

    m ← m + (g − m)·(1 − β1)
    v ← v + (g² − v)·(1 − β2)
    α ← lr · √(1 − β2^t) / (1 − β1^t)
    w ← w − (m·α) / (√v + ε)                 ε = 1e-7

`torch.optim.Adam` instead divides by (√v̂ + eps) with v̂ = v / (1 − β2^t) and eps = 1e-8:

    w ← w − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + eps)

Rewriting Keras's step in that form gives an effective torch eps of ε / √(1 − β2^t): Keras's
epsilon is the paper's "epsilon hat", added to the *uncorrected* √v. Early in training
(1 − β2^t small) it is far larger than torch's eps — 1e-7 / √0.001 ≈ 3.2e-6 at t = 1 — so the two
optimizers take measurably different first steps; the difference fades as t grows. Only this
class reproduces Keras's trajectory (see the parity tests).

The state is torch's: per parameter `step` (a CPU float32 scalar tensor, as torch.optim.Adam
keeps it), `exp_avg` (m) and `exp_avg_sq` (v), so `state_dict()` / `load_state_dict()` resume a
run exactly, and the file loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

KERAS_EPSILON = 1e-7  # keras.optimizers.Adam's default epsilon ("epsilon hat")


class KerasAdam(torch.optim.Optimizer):
    """Keras 3's Adam (lr 1e-3, β1 0.9, β2 0.999, ε 1e-7 on the uncorrected √v).

    The update runs as a handful of multi-tensor (`torch._foreach_*`) ops over all parameters of
    a group, because it runs every training step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = KERAS_EPSILON,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"invalid epsilon: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self._scratch: dict[int, list[torch.Tensor]] = {}

    @staticmethod
    def step_size(lr: float, beta1: float, beta2: float, t: int) -> float:
        """Keras's α = lr·√(1 − β2^t) / (1 − β1^t), evaluated in float32 as Keras evaluates it."""
        f32 = np.float32
        t32 = f32(t)
        one = f32(1.0)
        b1_power = np.power(f32(beta1), t32)
        b2_power = np.power(f32(beta2), t32)
        return float(f32(lr) * np.sqrt(one - b2_power) / (one - b1_power))

    def _scratch_for(self, group_index: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Work buffers shaped like `params`, kept between steps (not part of the state).

        Fresh temporaries of this size cost more than the arithmetic on them: every step would
        fault in new pages. Reusing one set keeps the update in cache.
        """
        scratch = self._scratch.get(group_index)
        if scratch is None or len(scratch) != len(params) or any(
            s.shape != p.shape or s.device != p.device or s.dtype != p.dtype
            for s, p in zip(scratch, params, strict=True)
        ):
            scratch = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
            self._scratch[group_index] = scratch
        return scratch

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group_index, group in enumerate(self.param_groups):
            params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("KerasAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    # The step lives on the CPU (as in torch.optim.Adam) so reading it needs no
                    # device synchronisation.
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            # Every parameter of a group steps together; they share t.
            t = int(self.state[params[0]]["step"].item())
            alpha = self.step_size(group["lr"], beta1, beta2, t)

            scratch = self._scratch_for(group_index, params)

            # m ← m + (g − m)·(1 − β1): lerp evaluates exactly this for weights below 0.5.
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            # v ← v + (g² − v)·(1 − β2)
            torch._foreach_copy_(scratch, grads)
            torch._foreach_mul_(scratch, grads)
            torch._foreach_lerp_(exp_avg_sqs, scratch, 1.0 - beta2)
            # w ← w − α·m / (√v + ε)
            torch._foreach_copy_(scratch, exp_avg_sqs)
            torch._foreach_sqrt_(scratch)
            torch._foreach_add_(scratch, group["eps"])
            torch._foreach_addcdiv_(params, exp_avgs, scratch, value=-alpha)
        return loss
