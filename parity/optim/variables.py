"""Keras's optimizer variables, in the order Keras creates them, for a checked config and the
model's trainable variables (Keras 3.15.1: keras/src/optimizers/base_optimizer.py `__init__`,
`build`, `add_optimizer_variables`; each class's `build`).

This is the order of `optimizer.variables`, of a `.keras` file's `optimizer/vars/<i>` and of a
legacy `.h5`'s `optimizer_weights` `weight_names`:

    iteration        int64 ()       always
    learning_rate    float32 ()     a float learning rate (a schedule has no variable)
    then each `add_optimizer_variables` call in turn, model variable by model variable within
    one call (Adam's one call for two names gives m₀, v₀, m₁, v₁, …):
    Adam, AdamW      momentum, velocity (one call); velocity_hat (amsgrad)
    Nadam            momentum, velocity (one call); u_product, float32 () (one)
    SGD              momentum (momentum != 0)
    RMSprop          velocity; momentum (momentum > 0); average_gradient (centered)
    Adagrad          accumulator

Each per-parameter variable has the shape of its model variable; the PyTorch state key is
`SLOTS`' (`parity.optim`).
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.optim.adagrad import KerasAdagrad
from parity.optim.adam import KerasAdamW, KerasNadam
from parity.optim.config import OptimizerSpec
from parity.optim.rmsprop import KerasRMSprop
from parity.optim.schedules import Schedule
from parity.optim.sgd import KerasSGD

Shape = tuple[int, ...]
ITERATION, LEARNING_RATE, U_PRODUCT = "iteration", "learning_rate", "u_product"


@dataclass(frozen=True)
class OptVar:
    """One Keras optimizer variable: its Keras name (`momentum`, or an optimizer-wide
    `iteration`, `learning_rate`, `u_product`), the model variable it belongs to (an index into
    the trainable variables; None for an optimizer-wide one), shape and dtype."""

    name: str
    param: int | None
    shape: Shape
    dtype: str = "float32"

    @property
    def label(self) -> str:
        return self.name if self.param is None else f"{self.name}[{self.param}]"


def _calls(spec: OptimizerSpec) -> list[tuple[str, ...]]:
    """The per-parameter variables of each `add_optimizer_variables` call, in order."""
    h = spec.hyper
    if spec.class_name in ("Adam", "AdamW"):
        return [("momentum", "velocity")] + ([("velocity_hat",)] if h["amsgrad"] else [])
    if spec.class_name == "Nadam":
        return [("momentum", "velocity")]
    if spec.class_name == "SGD":
        return [("momentum",)] if h["momentum"] != 0 else []
    if spec.class_name == "RMSprop":
        calls = [("velocity",)]
        if h["momentum"] > 0:
            calls.append(("momentum",))
        if h["centered"]:
            calls.append(("average_gradient",))
        return calls
    if spec.class_name == "Adagrad":
        return [("accumulator",)]
    raise AssertionError(spec.class_name)  # parse_optimizer admits only the classes above


def keras_variables(spec: OptimizerSpec, shapes: list[Shape]) -> list[OptVar]:
    """`optimizer.variables` of Keras's optimizer for `spec`, built on trainable variables of
    `shapes` (in the model's order)."""
    found = [OptVar(ITERATION, None, (), "int64")]
    if not isinstance(spec.learning_rate, Schedule):
        found.append(OptVar(LEARNING_RATE, None, ()))
    for names in _calls(spec):
        for i, shape in enumerate(shapes):
            found += [OptVar(name, i, tuple(shape)) for name in names]
    if spec.class_name == "Nadam":
        found.append(OptVar(U_PRODUCT, None, ()))
    return found


_CLASSES = {"Adam": KerasAdamW, "AdamW": KerasAdamW, "Nadam": KerasNadam, "SGD": KerasSGD,
            "RMSprop": KerasRMSprop, "Adagrad": KerasAdagrad}


def state_key(spec: OptimizerSpec, keras_name: str) -> str:
    """The PyTorch optimizer's state key of a Keras per-parameter variable (`SLOTS`)."""
    return {k: s for s, k in _CLASSES[spec.class_name].SLOTS}[keras_name]


def serialize(spec: OptimizerSpec, learning_rate: float | None = None) -> dict:
    """The Keras config of a checked spec, rebuilt from the parsed fields only (as
    `keras.optimizers.serialize` writes it); a schedule is not written back (refused by the
    caller). `learning_rate`: the variable's value, where it differs from the config's."""
    if isinstance(spec.learning_rate, Schedule):
        raise ValueError("a learning-rate schedule is not written back")
    lr = spec.learning_rate if learning_rate is None else learning_rate
    config = {"name": spec.class_name.lower(), "learning_rate": float(lr),
              "weight_decay": spec.weight_decay, "clipnorm": None, "global_clipnorm": None,
              "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
              "ema_overwrite_frequency": None, "loss_scale_factor": None,
              "gradient_accumulation_steps": None, **spec.hyper}
    return {"module": "keras.optimizers", "class_name": spec.class_name, "config": config,
            "registered_name": None}
