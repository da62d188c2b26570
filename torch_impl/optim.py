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

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterable

import numpy as np
import torch

KERAS_EPSILON = 1e-7  # keras.optimizers.Adam's default epsilon ("epsilon hat")


@functools.cache
def _powf() -> Callable[[float, float], float] | None:
    """The C library's float32 `powf`, which TensorFlow's CPU kernels call for a scalar."""
    name = ctypes.util.find_library("m") or ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).powf
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, (ctypes.c_float, ctypes.c_float)
    return fn


def float_power(base: float, exponent: int) -> np.float32:
    """float32(base) ** float32(exponent) as TensorFlow computes it on the CPU: the C library's
    `powf`; where none can be loaded, the correctly rounded value (which `powf` gives but for
    rare near-ties, glibc's being within 0.82 ulp)."""
    powf = _powf()
    b = np.float32(base)
    if powf is not None:
        return np.float32(powf(float(b), float(np.float32(exponent))))
    return np.float32(float(b) ** exponent)


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
        self._scratch: dict[tuple[int, int], list[torch.Tensor]] = {}

    @staticmethod
    def step_size(lr: float, beta1: float, beta2: float, t: int) -> float:
        """Keras's α = lr·√(1 − β2^t) / (1 − β1^t), evaluated in float32 as Keras evaluates it.

        β^t is TensorFlow's float32 power of a scalar: the C library's `powf` (`float_power`).
        numpy's float32 power is not it (on AVX-512 it is SVML's: 0.9^4 = 0.65609998 against
        powf's 0.65609992), so a step would differ from Keras's in its last bits."""
        f32 = np.float32
        one = f32(1.0)
        b1_power = float_power(beta1, t)
        b2_power = float_power(beta2, t)
        return float(f32(lr) * np.sqrt(one - b2_power) / (one - b1_power))

    def _scratch_for(self, key: tuple[int, int], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Work buffers shaped like `params`, kept between steps (not part of the state).

        Fresh temporaries of this size cost more than the arithmetic on them: every step would
        fault in new pages. Reusing one set keeps the update in cache.
        """
        scratch = self._scratch.get(key)
        if scratch is None or len(scratch) != len(params) or any(
            s.shape != p.shape or s.device != p.device or s.dtype != p.dtype
            for s, p in zip(scratch, params, strict=True)
        ):
            scratch = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
            self._scratch[key] = scratch
        return scratch

    @staticmethod
    def _sqrt(values: list[torch.Tensor], out: list[torch.Tensor]) -> None:
        """out ← √values, correctly rounded (as TensorFlow's float32 square root is).

        On the CPU, torch's float32 sqrt goes through MKL's vector maths, which may be 1 ulp
        off (and differently so under each MKL_CBWR path); numpy's is the processor's own
        square-root instruction, exact by IEEE 754, and works in place on the same memory."""
        if values and values[0].device.type == "cpu":
            for v, o in zip(values, out, strict=True):
                np.sqrt(v.numpy(), out=o.numpy())
        else:  # CUDA's float32 sqrt is correctly rounded (IEEE 754)
            torch._foreach_copy_(out, values)
            torch._foreach_sqrt_(out)

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

            s = self._scratch_for((group_index, 0), params)
            d = self._scratch_for((group_index, 1), params)
            # Keras's operations, in Keras's order, each one rounded to float32 as TensorFlow
            # rounds it (no fused multiply-add, no reordering): given the same gradients and
            # state, the same bits (parity/tests/test_training_parity.py).
            # m ← m + (g − m)·(1 − β1)
            torch._foreach_copy_(s, grads)
            torch._foreach_sub_(s, exp_avgs)
            torch._foreach_mul_(s, 1.0 - beta1)
            torch._foreach_add_(exp_avgs, s)
            # v ← v + (g² − v)·(1 − β2)
            torch._foreach_copy_(s, grads)
            torch._foreach_mul_(s, grads)
            torch._foreach_sub_(s, exp_avg_sqs)
            torch._foreach_mul_(s, 1.0 - beta2)
            torch._foreach_add_(exp_avg_sqs, s)
            # w ← w − (m·α) / (√v + ε)
            self._sqrt(exp_avg_sqs, d)
            torch._foreach_add_(d, group["eps"])
            torch._foreach_copy_(s, exp_avgs)
            torch._foreach_mul_(s, alpha)
            torch._foreach_div_(s, d)
            torch._foreach_sub_(params, s)
        return loss
