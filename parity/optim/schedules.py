"""Keras's learning-rate schedules, evaluated in float32 exactly as Keras evaluates them.

Reference: keras/src/optimizers/schedules/learning_rate_schedule.py (Keras 3.15.1). The
optimizer calls its schedule at `iterations` before the increment (BaseOptimizer.
_get_current_learning_rate: `self._learning_rate(self._iterations)`), so step t = 1, 2, … of
training uses the schedule's value at t − 1. Each schedule below is that `__call__`, one float32
rounding per Keras operation, in Keras's order. A float initial learning rate becomes a float32
tensor (`ops.convert_to_tensor`), which fixes the dtype of every later operation.

Powers and cosines are TensorFlow's float32 ones of a scalar: the C library's `powf` and `cosf`
(TensorFlow's CPU kernels call them through Eigen for one element); numpy's are not (its
float32 cosine is SVML's on AVX-512 and differs in the last bit, one value in six).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from parity.optim.checks import boolean, fail, header, number, unknown_field
from torch_impl.optim import float_power

f32 = np.float32
MODULE = "keras.optimizers.schedules"


@functools.cache
def _cosf() -> Callable[[float], float] | None:
    name = ctypes.util.find_library("m") or ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).cosf
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, (ctypes.c_float,)
    return fn


def float_cos(x: np.float32) -> np.float32:
    """cos(x) in float32 as TensorFlow's CPU computes it: the C library's `cosf`; where none can
    be loaded, the double cosine rounded once (within an ulp of `cosf`)."""
    cosf = _cosf()
    if cosf is not None:
        return f32(cosf(float(f32(x))))
    return f32(math.cos(float(f32(x))))


class Schedule(ABC):
    """A Keras schedule: `schedule(iterations)` → the float32 learning rate Keras uses there."""

    @abstractmethod
    def __call__(self, iterations: int) -> np.float32:
        """The learning rate at `iterations`."""


@dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """ExponentialDecay.__call__: lr0 · rate^(step / decay_steps), the exponent floored if
    `staircase`."""

    initial_learning_rate: float
    decay_steps: float
    decay_rate: float
    staircase: bool = False

    def __call__(self, iterations: int) -> np.float32:
        p = f32(iterations) / f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return f32(self.initial_learning_rate) * float_power(self.decay_rate, p)


@dataclass(frozen=True)
class CosineDecay(Schedule):
    """CosineDecay.__call__, with its linear warm-up when `warmup_target` is set."""

    initial_learning_rate: float
    decay_steps: float
    alpha: float = 0.0
    warmup_target: float | None = None
    warmup_steps: float = 0

    def _decay(self, step: np.float32, decay_steps: np.float32, lr0: np.float32) -> np.float32:
        """CosineDecay._decay_function."""
        fraction = step / decay_steps
        cosine = f32(0.5) * (f32(1.0) + float_cos(f32(math.pi) * fraction))
        # (1 − self.alpha) is a Python float, rounded to float32 once, as Keras has it.
        return lr0 * (f32(1 - self.alpha) * cosine + f32(self.alpha))

    def __call__(self, iterations: int) -> np.float32:
        lr0, decay_steps, step = f32(self.initial_learning_rate), f32(self.decay_steps), f32(
            iterations)
        if self.warmup_target is None:
            return self._decay(np.minimum(step, decay_steps), decay_steps, lr0)
        target, warmup = f32(self.warmup_target), f32(self.warmup_steps)
        step = np.minimum(step, decay_steps + warmup)
        if step < warmup:  # CosineDecay._warmup_function
            return (target - lr0) * (step / warmup) + lr0
        return self._decay(step - warmup, decay_steps, target)


@dataclass(frozen=True)
class PiecewiseConstantDecay(Schedule):
    """PiecewiseConstantDecay.__call__: values[i] where boundaries[i−1] < step ≤ boundaries[i],
    written as Keras writes it — a float32 sum of indicator · value, first, last, then the
    middle ranges (boundaries out of order add their values up, as in Keras)."""

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __call__(self, iterations: int) -> np.float32:
        b, v, step = self.boundaries, [f32(x) for x in self.values], iterations
        result = f32(0) + f32(step <= b[0]) * v[0]
        result = result + f32(step > b[-1]) * v[-1]
        for low, high, value in zip(b[:-1], b[1:], v[1:-1], strict=True):
            result = result + f32(low < step <= high) * value
        return result


def _boundary(where: str, value: object) -> int:
    """A boundary: Keras compares it with the int64 step, an int as it is, a float (a float32
    tensor) cast to int64 (truncated)."""
    v = number(where, value, -(2.0**53), 2.0**53)
    return value if isinstance(value, int) else int(f32(v))


def parse_schedule(config: object, where: str) -> Schedule:
    """A serialized Keras schedule → a `Schedule`, or a one-line `UserError`."""
    name, c = header(config, MODULE, where)
    fields = {"ExponentialDecay": ("initial_learning_rate", "decay_steps", "decay_rate",
                                   "staircase", "name"),
              "CosineDecay": ("initial_learning_rate", "decay_steps", "alpha", "name",
                              "warmup_target", "warmup_steps"),
              "PiecewiseConstantDecay": ("boundaries", "values", "name")}.get(name)
    if fields is None:
        raise fail(f"{where}.class_name", name,
                   "one of ExponentialDecay, CosineDecay, PiecewiseConstantDecay")
    where = f"{where}({name})"
    extra = [k for k in c if k not in fields]
    if extra:
        raise unknown_field(where, extra[0], c[extra[0]], ", ".join(fields))
    if not isinstance(c.get("name", ""), str | None):
        raise fail(f"{where}.name", c["name"], "a string")
    missing = [k for k in fields[:2] if k not in c]
    if missing:
        raise fail(f"{where}.{missing[0]}", None, "a value (it has no default)")
    if name == "PiecewiseConstantDecay":
        return _piecewise(c, where)
    lr0 = number(f"{where}.initial_learning_rate", c["initial_learning_rate"], 0.0,
                 floats_only=True)
    steps = number(f"{where}.decay_steps", c["decay_steps"], 0.0, lo_open=True)
    if name == "ExponentialDecay":
        if "decay_rate" not in c:
            raise fail(f"{where}.decay_rate", None, "a value (it has no default)")
        return ExponentialDecay(lr0, steps, number(f"{where}.decay_rate", c["decay_rate"], 0.0),
                                boolean(f"{where}.staircase", c.get("staircase", False)))
    target = c.get("warmup_target")
    if target is not None:
        target = number(f"{where}.warmup_target", target, 0.0)
    return CosineDecay(lr0, steps, number(f"{where}.alpha", c.get("alpha", 0.0), 0.0, 1.0),
                       target, number(f"{where}.warmup_steps", c.get("warmup_steps", 0), 0.0))


def _piecewise(c: dict, where: str) -> PiecewiseConstantDecay:
    bounds, values = c["boundaries"], c["values"]
    if not isinstance(bounds, list) or not 1 <= len(bounds) <= 10_000:
        raise fail(f"{where}.boundaries", bounds, "a list of 1 to 10,000 steps")
    if not isinstance(values, list) or len(values) != len(bounds) + 1:
        raise fail(f"{where}.values", values, f"a list of {len(bounds) + 1} floats")
    return PiecewiseConstantDecay(
        tuple(_boundary(f"{where}.boundaries[{i}]", b) for i, b in enumerate(bounds)),
        tuple(number(f"{where}.values[{i}]", v, 0.0, floats_only=True)
              for i, v in enumerate(values)),
    )
