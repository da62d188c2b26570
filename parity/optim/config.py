"""A Keras optimizer config, read and checked: every value comes from an untrusted file.

The config is what `keras.optimizers.serialize` writes and a `.keras` file's
`compile_config["optimizer"]` holds, `{"module": "keras.optimizers", "class_name": "Adam",
"config": {...}, "registered_name": null}` (the bare `{"class_name", "config"}` form, and a
class name alone, as `keras.optimizers.get` takes them, too). Class names are matched without
case, as `keras.optimizers.deserialize` matches built-in ones; nothing a config names is ever
imported or evaluated. Each field is checked for its type and range, and what this port does not
reproduce (gradient clipping, EMA, gradient accumulation, loss scaling, other classes, custom
objects) is refused: a `UserError` in one line, naming the field and what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parity.optim.checks import boolean, fail, header, number, unknown_field
from parity.optim.schedules import Schedule, parse_schedule

# Keras's class → its own arguments and defaults (keras/src/optimizers/<class>.py, __init__).
# learning_rate's default is each class's; AdamW's weight_decay defaults to 0.004.
CLASSES: dict[str, tuple[str, dict[str, object]]] = {
    "adam": ("Adam", {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                      "epsilon": 1e-7, "amsgrad": False}),
    "adamw": ("AdamW", {"learning_rate": 0.001, "weight_decay": 0.004, "beta_1": 0.9,
                        "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False}),
    "sgd": ("SGD", {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
    "rmsprop": ("RMSprop", {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0,
                            "epsilon": 1e-7, "centered": False}),
    "nadam": ("Nadam", {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                        "epsilon": 1e-7}),
    "adagrad": ("Adagrad", {"learning_rate": 0.001, "initial_accumulator_value": 0.1,
                            "epsilon": 1e-7}),
}
SUPPORTED = ", ".join(name for name, _ in CLASSES.values())

# The base class's arguments (keras/src/optimizers/base_optimizer.py, BaseOptimizer.__init__)
# that must keep their "off" value: each one changes the update in a way not reproduced here.
_OFF = {
    "clipnorm": "gradient clipping", "clipvalue": "gradient clipping",
    "global_clipnorm": "gradient clipping", "loss_scale_factor": "loss scaling",
    "gradient_accumulation_steps": "gradient accumulation",
}
_BASE = ("name", "learning_rate", "weight_decay", "use_ema", "ema_momentum",
         "ema_overwrite_frequency", "decay")


@dataclass(frozen=True)
class OptimizerSpec:
    """A checked config: Keras's class name, its hyper-parameters (Keras's argument names, each
    class's defaults filled in), and the learning rate: a float or a `Schedule`."""

    class_name: str
    learning_rate: float | Schedule
    weight_decay: float | None
    hyper: dict[str, float | bool] = field(default_factory=dict)


def _base_fields(inner: dict, where: str) -> None:
    """The base class's fields that must be off (or, for EMA's settings, are unused)."""
    for key, what in _OFF.items():
        if inner.get(key) is not None:
            raise fail(f"{where}.{key}", inner[key], f"null ({what} is not supported)")
    if inner.get("use_ema", False) is not False:
        raise fail(f"{where}.use_ema", inner["use_ema"], "false (EMA is not supported)")
    # Read by Keras only with use_ema=True, so they change nothing here; still checked.
    number(f"{where}.ema_momentum", inner.get("ema_momentum", 0.99), 0.0, 1.0)
    freq = inner.get("ema_overwrite_frequency")
    if freq is not None:
        number(f"{where}.ema_overwrite_frequency", freq, 1)
    if not isinstance(inner.get("name", ""), str | None):
        raise fail(f"{where}.name", inner["name"], "a string")
    # `decay` is popped and ignored by BaseOptimizer.__init__ (tf.keras 2 configs carry it).
    if inner.get("decay") is not None:
        number(f"{where}.decay", inner["decay"])


def _learning_rate(value: object, where: str) -> float | Schedule:
    """BaseOptimizer.__init__: a float (never an int: Keras refuses one) or a schedule."""
    if isinstance(value, dict):
        return parse_schedule(value, where)
    return number(where, value, 0.0, floats_only=True)


def parse_optimizer(config: object) -> OptimizerSpec:
    """A Keras optimizer config → an `OptimizerSpec`, or a one-line `UserError`."""
    if isinstance(config, str):
        config = {"class_name": config, "config": {}}  # as keras.optimizers.get takes a name
    name, inner = header(config, "keras.optimizers", "optimizer")
    entry = CLASSES.get(name.lower())
    if entry is None:
        raise fail("optimizer.class_name", name, f"one of {SUPPORTED}")
    class_name, defaults = entry
    where = f"{class_name}.config"
    unknown = [k for k in inner if k not in defaults and k not in _OFF and k not in _BASE]
    if unknown:
        raise unknown_field(where, unknown[0], inner[unknown[0]],
                            ", ".join(dict.fromkeys((*defaults, *_BASE))))
    _base_fields(inner, where)
    values = {**defaults, **inner}
    lr = _learning_rate(values["learning_rate"], f"{where}.learning_rate")
    wd = values.get("weight_decay")
    if wd is None and class_name == "AdamW":
        raise fail(f"{where}.weight_decay", wd, "a number ≥ 0 (AdamW needs one)")
    if wd is not None:
        wd = number(f"{where}.weight_decay", wd, 0.0)
    hyper: dict[str, float | bool] = {}
    for arg in defaults:
        if arg not in ("learning_rate", "weight_decay"):
            hyper[arg] = _hyper(class_name, arg, values[arg], f"{where}.{arg}")
    return OptimizerSpec(class_name, lr, wd, hyper)


def _hyper(class_name: str, key: str, value: object, where: str) -> float | bool:
    """One class argument, checked for type and range."""
    if key in ("amsgrad", "nesterov", "centered"):
        return boolean(where, value)
    if key in ("beta_1", "beta_2", "rho"):
        return number(where, value, 0.0, 1.0, hi_open=True)
    if key == "momentum":
        # SGD.__init__ takes only a float in [0, 1]; RMSprop is held to the same.
        return number(where, value, 0.0, 1.0, floats_only=class_name == "SGD")
    if key in ("epsilon", "initial_accumulator_value"):
        return number(where, value, 0.0)
    raise AssertionError(key)  # every key of CLASSES is handled above
