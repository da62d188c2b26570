"""The optimizer's state across the frameworks: a Keras file's optimizer variables ⇄ the
`state_dict` of the PyTorch optimizer `parity.optim.from_keras` builds for the same config.

One neutral form sits between the two, `KerasState`: the checked optimizer config and the values
of Keras's optimizer variables, in Keras's order and layout (`parity.optim.variables`). A slot
(Adam's m and v, SGD's momentum, …) is shaped as its parameter and crosses with that
parameter's row (`parity.build.Row`): the conv and dense transposes and the Flatten permutation
apply to each slot exactly as to the weight, because every update is elementwise.

Keras's trainable variables are the rows of trainable layers whose PyTorch tensor is a
parameter (a buffer, such as BatchNormalization's moving mean, is no optimizer's), in the rows'
order — the order of `model.trainable_variables` for the models the port builds. A frozen
layer (`trainable: false`, a fine-tuned model's base) has no optimizer variables in Keras, and
its parameters have `requires_grad` off here: the PyTorch optimizer is over the parameters that
require a gradient, in `module.parameters()` order, both ways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fashion_cnn.errors import UserError
from parity.build import Built, Row
from parity.optim import from_keras, parse_optimizer
from parity.optim.config import OptimizerSpec
from parity.optim.variables import (
    ITERATION,
    LEARNING_RATE,
    U_PRODUCT,
    OptVar,
    keras_variables,
    serialize,
    state_key,
)

MAX_ITERATIONS = 2**24  # PyTorch's `step` is a float32 scalar: whole numbers exact up to here
# The compile settings a written .keras may carry: only plain names Keras resolves itself.
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
          "mean_squared_error", "mse", "mean_absolute_error", "mae")
METRICS = ("accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "mae", "mse")
BOOK_COMPILE = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}


@dataclass
class KerasState:
    """An optimizer's state in Keras's terms: its checked config, `optimizer.variables` (the
    order) and their values (Keras layout), and the compile settings to write beside them."""

    spec: OptimizerSpec
    variables: list[OptVar]
    values: list[np.ndarray]
    compile: dict = field(default_factory=lambda: dict(BOOK_COMPILE))
    config: object = None  # the config it was parsed from (checked), for a schedule's sake

    @property
    def iterations(self) -> int:
        return int(self.values[0])

    def learning_rate(self) -> float | None:
        """The learning-rate variable's value (None for a schedule)."""
        for var, value in zip(self.variables, self.values, strict=True):
            if var.name == LEARNING_RATE:
                return float(value)
        return None

    def keras_config(self) -> dict:
        """The optimizer's Keras config, rebuilt from the checked fields, its learning rate the
        variable's (refused for a schedule, which is not written back)."""
        try:
            return serialize(self.spec, self.learning_rate())
        except ValueError as err:
            raise UserError(f"--with-optimizer: {err}") from None

    def compile_config(self) -> dict:
        return {"optimizer": self.keras_config(), "loss": self.compile.get("loss"),
                "loss_weights": None, "metrics": self.compile.get("metrics"),
                "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1,
                "jit_compile": False}


def trainable_params(built: Built) -> dict[str, torch.nn.Parameter]:
    """The parameters the optimizer holds, by name, in `module.parameters()` order: those that
    require a gradient (not a frozen layer's, nor a BatchNorm half that Keras does not have)."""
    return {n: p for n, p in built.module.named_parameters() if p.requires_grad}


def trainable_rows(built: Built) -> list[Row]:
    """The rows of the model's trainable variables, in Keras's order."""
    params = trainable_params(built)
    rows = [r for r in built.rows if r.trainable and r.torch in params]
    if {r.torch for r in rows} != set(params):  # build() covers the module: an internal error
        raise AssertionError("parameters without a Keras variable")
    return rows


def expected_variables(built: Built, config: object) -> tuple[OptimizerSpec, list[OptVar]]:
    """The checked config and the optimizer variables it implies for this model."""
    spec = parse_optimizer(config)
    return spec, keras_variables(spec, [r.keras_shape for r in trainable_rows(built)])


def compile_settings(compile_config: dict) -> dict:
    """The loss and metrics of a file's compile_config that are plain names of `LOSSES` and
    `METRICS` (anything else is left out: only what we parsed is handed to Keras)."""
    loss = compile_config.get("loss")
    metrics = compile_config.get("metrics")
    return {"loss": loss if isinstance(loss, str) and loss in LOSSES else None,
            "metrics": ([m for m in metrics if isinstance(m, str) and m in METRICS] or None)
            if isinstance(metrics, list) else None}


def check_values(variables: list[OptVar], values: list[np.ndarray], source: str) -> None:
    """Iterations a whole number in [0, MAX_ITERATIONS]; every float finite (the readers have
    checked each tensor's dtype and shape against `variables`)."""
    it = int(values[0])
    if not 0 <= it <= MAX_ITERATIONS:
        raise UserError(f"{source}: the optimizer's iterations is {it}, expected a whole number "
                        f"in [0, {MAX_ITERATIONS}]")
    for var, value in zip(variables[1:], values[1:], strict=True):
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise UserError(f"{source}: optimizer variable {var.label} holds {bad} NaN/Inf "
                            f"values")
        if var.name == LEARNING_RATE and not float(value) >= 0:
            raise UserError(f"{source}: the optimizer's learning_rate is {float(value)}, "
                            f"expected ≥ 0")


# --- Keras → PyTorch ----------------------------------------------------------------------------


def to_torch(state: KerasState, built: Built) -> torch.optim.Optimizer:
    """The PyTorch optimizer over the module's trainable parameters (`trainable_params`),
    holding Keras's state: each slot moved to the layout of its parameter by the parameter's
    row, `step` Keras's iterations, the learning rate Keras's variable."""
    rows = trainable_rows(built)
    params = trainable_params(built)
    config = state.config if state.config is not None else state.keras_config()
    optimizer = from_keras(config, list(params.values()))
    per_param: list[dict] = [{"step": torch.tensor(float(state.iterations))} for _ in rows]
    shared = {}
    for var, value in zip(state.variables, state.values, strict=True):
        if var.param is not None:
            row = rows[var.param]
            layout = np.array(row.transform.to_torch(value), np.float32, order="C")
            per_param[var.param][state_key(state.spec, var.name)] = torch.from_numpy(layout)
        elif var.name == U_PRODUCT:
            shared["u_product"] = value
    for i, row in enumerate(rows):
        for key, value in shared.items():
            per_param[i][key] = torch.tensor(float(value), dtype=torch.float32)
        optimizer.state[params[row.torch]] = per_param[i]
    lr = state.learning_rate()
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return optimizer


# --- PyTorch → Keras ----------------------------------------------------------------------------


def from_torch(built: Built, optimizer: dict, config: object, source: str) -> KerasState:
    """A PyTorch optimizer's `state_dict` (read from a file: every value checked here) for the
    module's parameters → KerasState. One param group over every trainable parameter
    (`trainable_params`), in `module.parameters()` order; each parameter's state Keras's slots
    and one shared `step`."""
    spec, variables = expected_variables(built, config)
    names = list(trainable_params(built))
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    states = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
            and groups[0].get("params") == list(range(len(names))) and isinstance(states, dict)):
        raise UserError(f"{source}: its optimizer is not one param group over the model's "
                        f"{len(names)} trainable parameters")
    lr = groups[0].get("lr")
    if isinstance(lr, bool) or not isinstance(lr, float | int) or not math.isfinite(lr) \
            or lr < 0:
        raise UserError(f"{source}: its optimizer's lr is {lr!r}, expected a finite number ≥ 0")
    rows = {r.torch: r for r in trainable_rows(built)}
    index = {r.torch: i for i, r in enumerate(trainable_rows(built))}
    steps, values = set(), {}
    for i, name in enumerate(names):
        found = states.get(i, {})
        got = _param_state(found, spec, variables, rows[name], index[name], f"{source}: "
                           f"optimizer.state[{i}] ({name})")
        steps.add(got.pop("step", None))
        values.update(got)
    if len(steps) != 1 or (None in steps and len(states) > 0):
        raise UserError(f"{source}: its optimizer's parameters have taken different numbers of "
                        f"steps ({sorted(s for s in steps if s is not None)}); Keras counts one")
    iterations = steps.pop() or 0
    out = []
    for var in variables:
        if var.name == ITERATION:
            out.append(np.array(iterations, np.int64))
        elif var.name == LEARNING_RATE:
            out.append(np.array(lr, np.float32))
        else:
            out.append(values.get((var.name, var.param), _initial(spec, var)))
    return KerasState(spec, variables, out, config=config)


def _initial(spec: OptimizerSpec, var: OptVar) -> np.ndarray:
    """A variable's value before the first step (Keras's initializer)."""
    fill = spec.hyper.get("initial_accumulator_value", 0.0) if var.name == "accumulator" else (
        1.0 if var.name == U_PRODUCT else 0.0)
    return np.full(var.shape, fill, np.float32)


def _param_state(found: object, spec: OptimizerSpec, variables: list[OptVar], row: Row,
                 param: int, where: str) -> dict:
    """One parameter's state → {"step": n, (Keras name, param): Keras-layout array}; {} for a
    parameter that has not stepped yet."""
    from torch_impl.checkpoint import tensor_problem

    if found == {}:
        return {}
    mine = [v for v in variables if v.param == param]
    keys = {state_key(spec, v.name): v for v in mine}
    shared = {"u_product"} if spec.class_name == "Nadam" else set()
    want = {"step", *keys, *shared}
    if not isinstance(found, dict) or set(found) != want:
        got = sorted(map(str, found)) if isinstance(found, dict) else type(found).__name__
        raise UserError(f"{where}: holds {got}, expected {sorted(want)}")
    out = {}
    for key, value in found.items():
        shape = () if key in ("step", *shared) else row.torch_shape
        problem = tensor_problem(f"{where}.{key}", value, torch.float32)
        if problem is None and tuple(value.shape) != shape:
            problem = f"{where}.{key} has shape {tuple(value.shape)}, expected {shape}"
        if problem is None and not bool(torch.isfinite(value).all()):
            problem = f"{where}.{key} holds NaN/Inf values"
        if problem is not None:
            raise UserError(problem if problem.startswith(where) else f"{where}: {problem}")
        array = value.detach().numpy()
        if key == "step":
            step = float(array)
            if not (step.is_integer() and 0 <= step <= MAX_ITERATIONS):
                raise UserError(f"{where}.step is {step}, expected a whole number in "
                                f"[0, {MAX_ITERATIONS}]")
            out["step"] = int(step)
        elif key not in shared:
            out[(keys[key].name, param)] = np.array(row.transform.to_keras(array), np.float32,
                                                    order="C")
        elif key == "u_product":
            out[(U_PRODUCT, None)] = np.array(array, np.float32)
    return out
