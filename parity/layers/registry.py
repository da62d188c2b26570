"""One registry entry per Keras layer class, holding everything the port knows of it.

An entry (a class registered with `@register`, onnx2torch's shape: adding a layer is adding one
entry; an unknown one is refused by name) has:
- `kind` and `fields`: the Keras class it stands for and the config fields it reads (a written
  file keeps only these, so nothing else a file held travels into a file Keras deserialises);
- `parse(config, where)`: the fields checked where they are read (positive ints, finite
  floats, …), one line naming the layer on anything else; the result is the entry's parameters,
  which every other part takes — validation is written once, for both sides;
- `infer(params, inputs, where)`: the output shape and the Keras variables (name, shape, in the
  order Keras stores them): what a reader needs, framework-free;
- `to_torch(params, inputs, out, where)`: the PyTorch modules, and each Keras variable's place
  in them with its layout transform — the mapping as data;
- `numpy(params, weights, inputs)`: the layer in float32 numpy, in Keras's layout — the check's
  reference where Keras cannot be imported;
- `torch_classes` / `from_torch(module, state, where)`: the other direction, for
  `parity.save_keras` on an `nn.Sequential`.

Nothing here or in the families imports torch at import time (the readers use `parse` and
`infer` without it); `to_torch` and `from_torch` import it when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.transforms import Transform

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, ...]  # Keras order, batch-free: (H, W, C), (H, W) or (F,)


# --- what flows between entries ----------------------------------------------------------------


@dataclass(frozen=True)
class In:
    """What a node knows of one of its inputs."""

    shape: Shape  # Keras order, batch-free
    # A Flatten whose H,W,C → C,H,W order is still pending: the PyTorch tensor holds the
    # (h, w, c) map flattened in C,H,W order; the Dense (or BatchNormalization) that takes it
    # permutes its own rows instead.
    flat_from: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Var:
    """One Keras variable of a layer: its name and shape, in the order Keras stores them."""

    name: str  # kernel, bias, gamma, beta, moving_mean, moving_variance, …
    shape: Shape
    dtype: str = "float32"


@dataclass(frozen=True)
class Out:
    """What `infer` says of a node: its output and its variables."""

    shape: Shape
    variables: tuple[Var, ...] = ()
    flat_from: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Param:
    """Where one Keras variable goes in PyTorch: a module's parameter or buffer, transformed."""

    var: str  # the Keras variable's name
    module: int  # index into Converted.modules
    param: str  # weight, bias, running_mean, …
    torch_shape: Shape
    transform: Transform


@dataclass(frozen=True)
class Fixed:
    """A PyTorch parameter or buffer with no Keras variable (BatchNormalization's
    num_batches_tracked; beta with center=False): its value, and whether writing back to Keras
    requires it (a bias that is not zero cannot be expressed by center=False)."""

    module: int
    param: str
    value: np.ndarray
    required: bool


@dataclass
class Converted:
    """A node's PyTorch modules, in forward order: the first takes every input, each next one
    the output of the one before."""

    modules: list[tuple[str, nn.Module]]  # (kind, module): the builder numbers kinds: conv1, …
    params: list[Param] = field(default_factory=list)
    fixed: list[Fixed] = field(default_factory=list)
    # the module whose output is the layer's value before its activation (Conv2D and Dense with
    # an `activation`): the check compares it too for a model's output (the logits)
    pre_activation: int | None = None


# --- the registry -------------------------------------------------------------------------------


class Entry:
    """One Keras layer class. Subclasses set `kind`, `fields` and the methods; every method
    is a staticmethod over the entry's parameters (whatever `parse` returns)."""

    kind: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    inputs: ClassVar[tuple[int, int]] = (1, 1)  # how many tensors it takes, at least and at most
    # A pending Flatten order (In.flat_from) passes through unchanged: elementwise layers.
    passes_flatten: ClassVar[bool] = False
    torch_classes: ClassVar[tuple[str, ...]] = ()  # torch.nn classes `from_torch` takes

    parse: ClassVar[Callable[[Mapping, str], Any]]
    infer: ClassVar[Callable[[Any, Sequence[In], str], Out]]
    to_torch: ClassVar[Callable[[Any, Sequence[In], Out, str], Converted]]
    numpy: ClassVar[Callable[[Any, Mapping[str, np.ndarray], Sequence[np.ndarray]], np.ndarray]]
    from_torch: ClassVar[Callable[..., list]] | None = None

    # Each Keras variable's initializer attribute, where it is not "<var>_initializer"
    # (DepthwiseConv2D's kernel comes from depthwise_initializer): the Keras reference hands
    # the port's tensors over through them.
    initializers: ClassVar[Mapping[str, str]] = {}
    # Keras's own class for a layer outside keras.layers (module, class), which the reference
    # takes from Keras's package, never from a file; and whether its variables are assigned
    # after it is built (their initializers are made inside build, not attributes).
    keras_class: ClassVar[tuple[str, str] | None] = None
    assign_after_build: ClassVar[bool] = False
    finalize: ClassVar[bool] = False  # Keras's finalize_state() after the assignment

    @classmethod
    def parse_call(cls, cfg: Mapping, operands: Sequence, where: str) -> Any:
        """`parse`, for a node that also reads its call's operands (an operation's numbers:
        `x + 3.0`); a layer reads its config only."""
        return cls.parse(cfg, where)

    @staticmethod
    def sample(rng: np.random.Generator, inp: In) -> dict | None:
        """A random valid config of this layer on an input like `inp` (for the property test:
        the generator's grammar is the registry's), or None where it takes no such input."""
        return None


REGISTRY: dict[str, type[Entry]] = {}


def register(entry: type[Entry]) -> type[Entry]:
    if entry.kind in REGISTRY:
        raise AssertionError(f"two entries for {entry.kind}")
    REGISTRY[entry.kind] = entry
    return entry


def supported() -> str:
    """The Keras layer classes the port takes, for a refusal's message."""
    def shown(kind: str) -> str:  # keras.src.ops.numpy.Add → ops.Add (a layer's is Add)
        return f"ops.{kind.rsplit('.', 1)[-1]}" if ".ops." in kind else kind.rsplit(".", 1)[-1]

    return ", ".join(sorted(shown(k) for k in REGISTRY if k != "InputLayer"))


# --- reading config values: checked where they are parsed -------------------------------------


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: object, what: str, where: str) -> int:
    """A config value Keras requires to be a positive int (units, filters, groups)."""
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise UserError(f"{where}: {what}={value!r} is not a positive int")
    return value  # type: ignore[return-value]


def pair(value: object, what: str, where: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each at least `minimum` (1 for kernel sizes, strides, pools and
    dilations, which Keras requires positive; 0 for paddings)."""
    if is_int(value):
        value = (value, value)
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(map(is_int, value)):
        raise UserError(f"{where}: {what}={value!r} is not an int or a pair of ints")
    if min(value) < minimum:
        raise UserError(f"{where}: {what}={list(value)!r}: each must be at least {minimum}")
    return (value[0], value[1])


def number(
    value: object, what: str, where: str, *, low: float | None = None, high: float | None = None,
    low_open: bool = False,
) -> float:
    """A finite number (not a bool) within [low, high] ((low, high] with `low_open`)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError(f"{where}: {what}={value!r} is not a finite number")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise UserError(f"{where}: {what}={value!r} must be {'>' if low_open else '≥'} {low:g}")
    if high is not None and value > high:
        raise UserError(f"{where}: {what}={value!r} must be ≤ {high:g}")
    return value


def flag(cfg: Mapping, key: str, default: bool, where: str) -> bool:
    """A boolean config value (use_bias, center, scale, keepdims)."""
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"{where}: {key}={value!r} is not true or false")
    return value


def choice(cfg: Mapping, key: str, default: str, options: tuple[str, ...], where: str) -> str:
    value = cfg.get(key, default)
    if value is None:
        value = default
    if value not in options:
        raise UserError(f"{where}: {key}={value!r}; supported: {', '.join(map(repr, options))}")
    return value  # type: ignore[return-value]


def channels_last(cfg: Mapping, where: str) -> None:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise UserError(f"{where}: data_format={fmt!r}; only channels_last is supported")


def image(inp: In, where: str) -> tuple[int, int, int]:
    """The (H, W, C) of an input that must be an image."""
    if len(inp.shape) != 3:
        raise UserError(f"{where}: takes an (H, W, C) map, but its input has shape {inp.shape}")
    return inp.shape  # type: ignore[return-value]


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis: (before, after), the extra pixel after."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def torch_shape(shape: Shape) -> Shape:
    """A Keras-order shape as the PyTorch tensor's (batch-free): (H, W, C) → (C, H, W)."""
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 else tuple(shape)
