"""The converters' registry and shared parts: what a converter takes (`Chain`) and returns
(`Converted`, with `Var` rows: Keras variable → module parameter → transform), the dict
`CONVERTERS` that `@converter("Conv2D")` fills, the transforms the generic path adds to
`parity.mapping`'s, the config helpers and the activations that map exactly."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from fashion_cnn.errors import UserError
from parity.layers.modules import Exponential, Shape
from parity.mapping import Transform

# --- transforms the generic path adds to parity.mapping's -----------------------------------


def flat_dense(h: int, w: int, c: int) -> Transform:
    """The Dense after Flatten of an (h, w, c) map: Keras rows H,W,C ↔ PyTorch columns C,H,W."""

    def to_torch(kernel: np.ndarray) -> np.ndarray:
        out = kernel.shape[1]
        return kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)

    def to_keras(weight: np.ndarray) -> np.ndarray:
        out = weight.shape[0]
        return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)

    return Transform("dense after flatten: HWC→CHW rows, transpose", to_torch, to_keras)


def flat_vector(h: int, w: int, c: int) -> Transform:
    """A per-feature vector after Flatten (BatchNormalization's): H,W,C order ↔ C,H,W order."""
    return Transform(
        "vector after flatten: HWC→CHW",
        lambda v: v.reshape(h, w, c).transpose(2, 0, 1).reshape(-1),
        lambda v: v.reshape(c, h, w).transpose(1, 2, 0).reshape(-1),
    )


# --- what a converter returns ---------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """One Keras variable of a layer and where it goes in PyTorch."""

    keras: str  # variable name: kernel, bias, gamma, beta, moving_mean, moving_variance
    keras_shape: Shape
    module: int  # index into Converted.modules
    param: str  # the parameter or buffer of that module: weight, bias, running_mean, …
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
    modules: list[tuple[str, nn.Module]]  # (kind, module), in forward order
    shape: Shape  # the output shape, Keras order
    vars: list[Var] = field(default_factory=list)  # in the order Keras stores them
    fixed: list[Fixed] = field(default_factory=list)
    flat_from: tuple[int, int, int] | None = None  # a pending Flatten's (H, W, C) after it


@dataclass
class Chain:
    """The state a converter sees: the incoming shape and a Flatten's pending permutation."""

    shape: Shape
    flat_from: tuple[int, int, int] | None = None
    # Whether a Flatten here is followed by a Dense (through PASS_FLATTEN layers only), which
    # absorbs the permutation; otherwise the Flatten itself flattens in Keras's H,W,C order.
    dense_follows: bool = True


Converter = Callable[[Mapping, Chain, str], Converted]
CONVERTERS: dict[str, Converter] = {}
# Layers a pending Flatten permutation passes through unchanged (elementwise, or per-vector).
PASS_FLATTEN = {
    "Dropout",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "Softmax",
    "Rescaling",
    "BatchNormalization",
}


# The config fields each class's converter reads: what a written `.keras` keeps of a layer's
# config (with its name), so that nothing else a file held (a custom initializer or regularizer,
# say) travels into a file Keras will deserialise.
FIELDS: dict[str, tuple[str, ...]] = {
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
               "groups", "activation", "use_bias"),
    "Dense": ("units", "activation", "use_bias"),
    "MaxPooling2D": ("pool_size", "strides", "padding", "data_format"),
    "AveragePooling2D": ("pool_size", "strides", "padding", "data_format"),
    "GlobalAveragePooling2D": ("data_format", "keepdims"),
    "GlobalMaxPooling2D": ("data_format", "keepdims"),
    "ZeroPadding2D": ("padding", "data_format"),
    "Flatten": ("data_format",),
    "Dropout": ("rate", "noise_shape", "seed"),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "Activation": ("activation",),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope",),
    "Softmax": ("axis",),
    "Rescaling": ("scale", "offset"),
    "Reshape": ("target_shape",),
}


def converter(class_name: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        CONVERTERS[class_name] = fn
        return fn

    return register


def supported() -> str:
    return ", ".join(sorted(CONVERTERS))


# --- config helpers ---------------------------------------------------------------------------


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: object, what: str, where: str) -> int:
    """A config value Keras requires to be a positive int (units, filters, groups)."""
    if not _int(value) or value < 1:  # type: ignore[operator]
        raise UserError(f"{where}: {what}={value!r} is not a positive int")
    return value  # type: ignore[return-value]


def pair(value, what: str, where: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each at least `minimum` (1 for kernel sizes, strides, pools and
    dilations, which Keras requires positive; 0 for paddings)."""
    if _int(value):
        value = (value, value)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(_int(v) for v in value)
    ):
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


def channels_last(cfg: Mapping, where: str) -> None:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise UserError(f"{where}: data_format={fmt!r}; only channels_last is supported")


def image_hwc(chain: Chain, where: str) -> tuple[int, int, int]:
    if len(chain.shape) != 3:
        raise UserError(f"{where}: takes an (H, W, C) map, but its input has shape {chain.shape}")
    return chain.shape  # type: ignore[return-value]


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis: (before, after), the extra pixel after."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


# Keras activation name → a PyTorch module that computes the same function (checked per name
# against Keras in parity/tests/test_generic.py). Softmax and log-softmax take the channel axis.
_ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda dim: nn.ReLU(),
    "relu6": lambda dim: nn.ReLU6(),
    "leaky_relu": lambda dim: nn.LeakyReLU(0.2),  # keras.activations.leaky_relu's default slope
    "sigmoid": lambda dim: nn.Sigmoid(),
    "tanh": lambda dim: nn.Tanh(),
    "softmax": lambda dim: nn.Softmax(dim=dim),
    "log_softmax": lambda dim: nn.LogSoftmax(dim=dim),
    "elu": lambda dim: nn.ELU(),
    "selu": lambda dim: nn.SELU(),
    "celu": lambda dim: nn.CELU(),
    "gelu": lambda dim: nn.GELU(),  # Keras's 'gelu' is the exact erf form (approximate=False)
    "silu": lambda dim: nn.SiLU(),
    "swish": lambda dim: nn.SiLU(),
    "softplus": lambda dim: nn.Softplus(),
    "softsign": lambda dim: nn.Softsign(),
    "hard_sigmoid": lambda dim: nn.Hardsigmoid(),  # Keras 3: relu6(x + 3) / 6, as torch's
    "hard_silu": lambda dim: nn.Hardswish(),
    "hard_swish": lambda dim: nn.Hardswish(),
    "hard_tanh": lambda dim: nn.Hardtanh(),
    "tanh_shrink": lambda dim: nn.Tanhshrink(),
    "soft_shrink": lambda dim: nn.Softshrink(0.5),
    "hard_shrink": lambda dim: nn.Hardshrink(0.5),
    "log_sigmoid": lambda dim: nn.LogSigmoid(),
    "mish": lambda dim: nn.Mish(),
    "exponential": lambda dim: Exponential(),
}
ACTIVATION_NAMES = ("linear", *_ACTIVATIONS)


def activation(name: object, shape: Shape, where: str) -> list[tuple[str, nn.Module]]:
    """The modules for a Keras `activation` argument ([] for linear)."""
    if name is None or name == "linear":
        return []
    if not isinstance(name, str) or name not in _ACTIVATIONS:
        shown = name if isinstance(name, str) else type(name).__name__
        raise UserError(
            f"{where}: activation {shown!r} has no exact PyTorch counterpart here; supported: "
            f"{', '.join(ACTIVATION_NAMES)}"
        )
    module = _ACTIVATIONS[name](1 if len(shape) == 3 else -1)
    return [(type(module).__name__.lower(), module)]


