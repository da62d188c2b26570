"""What every Keras optimizer shares: the step counter, the learning rate, weight decay.

Reference: keras/src/optimizers/base_optimizer.py (Keras 3.15.1), `BaseOptimizer.apply` and
`_backend_apply_gradients`, with the TensorFlow backend's `TFOptimizer._apply_weight_decay`
(keras/src/backend/tensorflow/optimizer.py). One Keras step is, in this order:

1. the learning rate at `iterations` (a float32 variable, or the schedule at `iterations`);
2. weight decay, where `weight_decay` is not None: `w ← w − (w·wd)·lr`, on every variable with
   a gradient, before any update (so AdamW's is "decoupled" and uses this step's lr);
3. each variable's `update_step(g, w, lr)` (the subclass's `_update`);
4. `iterations ← iterations + 1`.

Keras's `iterations` is one counter for the whole optimizer, from 0. Here it is each
parameter's `step` (a CPU float32 scalar tensor, as in torch.optim.Adam), kept equal across all
parameters: after each step every parameter with state gets `iterations + 1`, whether or not it
had a gradient this time (Keras skips a variable without one, but counts the step). Counts are
exact to 2**24 steps, float32's integers.

Elementwise arithmetic runs as torch `_foreach_*` operations over a group's parameters, each
rounded once to float32 as TensorFlow rounds it: a Python scalar operand is rounded to float32
first, as Keras's `ops` convert one, and no operation is fused or reordered.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterable

import numpy as np
import torch

from parity.optim.schedules import Schedule
from torch_impl.optim import KerasAdam

f32 = np.float32


def sqrt(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """√values, correctly rounded as TensorFlow's float32 square root is (`KerasAdam._sqrt`)."""
    out = [torch.empty_like(v) for v in values]
    KerasAdam._sqrt(values, out)
    return out


class KerasOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """A Keras 3 optimizer's step, as a `torch.optim.Optimizer` over float32 parameters.

    Subclasses name their per-parameter state in `SLOTS` (state key → Keras variable name, in
    the order Keras creates the variables) and implement `_init_state` and `_update`.
    `schedule`, when given, replaces each group's `lr` at every step (the group's `lr` then
    shows the value last used).
    """

    SLOTS: tuple[tuple[str, str], ...] = ()

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], defaults: dict,
                 schedule: Schedule | None = None) -> None:
        if not defaults["lr"] >= 0.0:
            raise ValueError(f"invalid learning rate: {defaults['lr']}")
        defaults.setdefault("weight_decay", None)
        super().__init__(params, defaults)
        self.schedule = schedule

    @abstractmethod
    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """Create `state`'s slots for `p` (Keras's `build`)."""

    @abstractmethod
    def _update(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor],
                states: list[dict], iterations: int, lr: np.float32) -> None:
        """Keras's `update_step` for every parameter of `group`, at `iterations` (before the
        increment), with this step's float32 learning rate."""

    def _shared(self, iterations: int, source: dict | None) -> dict[str, np.float32]:
        """Optimizer-wide scalars besides `step` (Nadam's u_product) for this step, computed
        once before any update (Keras's `_backend_update_step`), from `source`'s values."""
        return {}

    def _counter(self) -> tuple[int, dict | None]:
        """Keras's `iterations` (the steps taken), and a state that holds it (None at 0)."""
        best: tuple[int, dict | None] = (0, None)
        for state in self.state.values():
            if "step" in state and int(state["step"].item()) > best[0]:
                best = (int(state["step"].item()), state)
        return best

    @property
    def iterations(self) -> int:
        """Keras's `iterations`: the steps taken, shared by every parameter."""
        return self._counter()[0]

    def learning_rate(self, group: dict, iterations: int) -> np.float32:
        """The float32 learning rate of this step (BaseOptimizer._get_current_learning_rate)."""
        if self.schedule is None:
            return f32(group["lr"])
        lr = self.schedule(iterations)
        group["lr"] = float(lr)
        return lr

    @staticmethod
    def decay_weights(params: list[torch.Tensor], weight_decay: float, lr: np.float32) -> None:
        """TFOptimizer._apply_weight_decay: `variable.assign_sub(variable * wd * lr)`."""
        s = torch._foreach_mul(params, weight_decay)
        torch._foreach_mul_(s, float(lr))
        torch._foreach_sub_(params, s)

    def _gather(self, iterations: int) -> list[tuple[dict, list, list, list]]:
        work = []
        for group in self.param_groups:
            params, grads, states = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if p.dtype != torch.float32:
                    raise TypeError(f"{type(self).__name__} steps float32 parameters only, "
                                    f"not {p.dtype}")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(float(iterations), dtype=torch.float32)
                    self._init_state(p, state, group)
                params.append(p)
                grads.append(p.grad)
                states.append(state)
            work.append((group, params, grads, states))
        return work

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        iterations, source = self._counter()
        work = self._gather(iterations)
        if not any(params for _, params, _, _ in work):
            return loss  # Keras refuses a step without gradients; torch's optimizers skip it
        for key, value in self._shared(iterations, source).items():
            for state in self.state.values():
                state[key].fill_(float(value))
        for group, params, grads, states in work:
            if params:
                lr = self.learning_rate(group, iterations)
                if group["weight_decay"] is not None:
                    self.decay_weights(params, group["weight_decay"], lr)
                self._update(group, params, grads, states, iterations, lr)
        for state in self.state.values():
            state["step"].fill_(float(iterations + 1))
        return loss
