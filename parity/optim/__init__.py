"""Keras 3's optimizers, exactly, as PyTorch optimizers: `from_keras(config, params)`.

`config` is a Keras optimizer config, as `keras.optimizers.serialize` writes it and a `.keras`
file's `compile_config["optimizer"]` holds it; `from_keras` checks it (`parity.optim.config`:
every value comes from an untrusted file) and returns a `torch.optim.Optimizer` whose step is
Keras 3.15.1's, operation for operation in float32, on float32 parameters:

- Adam (no amsgrad, no weight decay, a float learning rate): `torch_impl.optim.KerasAdam`;
- Adam otherwise, and AdamW: `KerasAdamW` (`parity.optim.adam`);
- Nadam: `KerasNadam`; SGD: `KerasSGD`; RMSprop: `KerasRMSprop`; Adagrad: `KerasAdagrad`;
- `weight_decay` for each (the base class's `w ← w − (w·wd)·lr`, `parity.optim.base`);
- the learning rate: a float, or an ExponentialDecay, CosineDecay or PiecewiseConstantDecay
  schedule evaluated at Keras's `iterations` (`parity.optim.schedules`).

Gradient clipping, EMA, gradient accumulation, loss scaling and other classes are refused.

State, and Keras's optimizer variables
--------------------------------------

Every parameter's state holds `step`: Keras's `iterations` (the steps taken, one counter for
the whole optimizer; a CPU float32 scalar tensor as in torch.optim.Adam). KerasAdam, for a plain
Adam, counts per parameter as torch.optim.Adam does: the same numbers as long as every parameter
has a gradient at every step (Keras counts a step for a variable without one). A float learning
rate is each param group's `lr` (Keras's `learning_rate` variable, float32); a schedule's is
not a variable in either. The other keys, per parameter (the shape of the parameter unless
said), and the Keras variable each one is:

    class         state key        Keras variable         when
    Adam, AdamW   exp_avg          <var>_momentum
                  exp_avg_sq       <var>_velocity
                  max_exp_avg_sq   <var>_velocity_hat     amsgrad
    SGD           momentum         <var>_momentum         momentum != 0
    RMSprop       velocity         <var>_velocity
                  momentum         <var>_momentum         momentum > 0
                  average_gradient <var>_average_gradient centered
    Nadam         momentum         <var>_momentum
                  velocity         <var>_velocity
                  u_product        u_product (0-d, one for the optimizer, named "variable";
                                   the same value in every parameter's state)
    Adagrad       accumulator      <var>_accumulator

A `.keras` file's `optimizer/vars` lists them in the order Keras creates them
(`optimizer.variables`): `iteration` (int64) first, then `learning_rate` (float lr only), then
each `add_optimizer_variables` call in turn, and within one call the variables model variable
by model variable (in the order the optimizer was built on, the model's trainable variables)
— Adam: m₀, v₀, m₁, v₁, …, then v̂₀, v̂₁, … (amsgrad); RMSprop: every
velocity, every momentum, every average_gradient; Nadam: m₀, v₀, m₁, v₁, …, then u_product.
`SLOTS` (class → ((state key, Keras variable name), …)) says the same for code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from parity.optim.adagrad import KerasAdagrad
from parity.optim.adam import KerasAdamW, KerasNadam
from parity.optim.config import OptimizerSpec, parse_optimizer
from parity.optim.rmsprop import KerasRMSprop
from parity.optim.schedules import Schedule
from parity.optim.sgd import KerasSGD
from torch_impl.optim import KerasAdam

__all__ = ["SLOTS", "KerasAdagrad", "KerasAdam", "KerasAdamW", "KerasNadam", "KerasRMSprop",
           "KerasSGD", "OptimizerSpec", "from_keras", "parse_optimizer"]

SLOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "Adam": KerasAdamW.SLOTS, "AdamW": KerasAdamW.SLOTS, "SGD": KerasSGD.SLOTS,
    "RMSprop": KerasRMSprop.SLOTS, "Nadam": KerasNadam.SLOTS, "Adagrad": KerasAdagrad.SLOTS,
}


def build(spec: OptimizerSpec, params: list) -> torch.optim.Optimizer:
    """The PyTorch optimizer for a checked config (see `from_keras`)."""
    h = spec.hyper
    schedule = spec.learning_rate if isinstance(spec.learning_rate, Schedule) else None
    # A schedule's groups show, until the first step, its value at step 0.
    lr = spec.learning_rate if schedule is None else float(schedule(0))
    common = {"lr": lr, "weight_decay": spec.weight_decay, "schedule": schedule}
    if spec.class_name in ("Adam", "AdamW"):
        betas, eps = (h["beta_1"], h["beta_2"]), h["epsilon"]
        if spec.weight_decay is None and not h["amsgrad"] and schedule is None:
            return KerasAdam(params, lr=lr, betas=betas, eps=eps)
        return KerasAdamW(params, betas=betas, eps=eps, amsgrad=h["amsgrad"], **common)
    if spec.class_name == "Nadam":
        return KerasNadam(params, betas=(h["beta_1"], h["beta_2"]), eps=h["epsilon"], **common)
    if spec.class_name == "SGD":
        return KerasSGD(params, momentum=h["momentum"], nesterov=h["nesterov"], **common)
    if spec.class_name == "RMSprop":
        return KerasRMSprop(params, rho=h["rho"], momentum=h["momentum"], eps=h["epsilon"],
                            centered=h["centered"], **common)
    if spec.class_name == "Adagrad":
        return KerasAdagrad(params, initial_accumulator_value=h["initial_accumulator_value"],
                            eps=h["epsilon"], **common)
    raise AssertionError(spec.class_name)  # parse_optimizer admits only the classes above


def _group(group: dict) -> dict:
    """A param group with its `params` as a list (a generator would be read only once)."""
    p = group.get("params", [])
    return {**group, "params": [p] if isinstance(p, torch.Tensor) else list(p)}


def from_keras(config: object,
               params: Iterable[torch.Tensor] | Iterable[dict]) -> torch.optim.Optimizer:
    """A Keras optimizer config → a PyTorch optimizer over `params` with Keras's update rule.

    `params` are float32 tensors (or torch param groups of them). Raises `UserError` (one
    line, naming the field) for a config that is malformed or asks for what is not supported.
    """
    spec = parse_optimizer(config)
    params = [_group(g) if isinstance(g, dict) else g for g in params]
    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
    wrong = sorted({str(t.dtype) for t in tensors if t.dtype != torch.float32})
    if wrong:
        raise TypeError(f"Keras's optimizers are reproduced for float32 parameters, not {wrong}")
    return build(spec, params)
