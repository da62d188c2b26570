"""One converter per Keras layer class: Keras config + incoming shape → PyTorch modules + rows.

The registry is one dict, `CONVERTERS`, filled by `@converter("Conv2D")` on one small function
per Keras layer class (onnx2torch's pattern). Each function takes the layer's config and the
state of the chain (the incoming shape in Keras order, batch-free; a Flatten whose H,W,C → C,H,W
permutation is still pending) and returns a `Converted`: the PyTorch modules, each with its
*kind* (the builder numbers them: conv1, relu1, pool1, …), the output shape (Keras order), and
the weight rows — Keras variable → module parameter → transform, the mapping as data.

Tensors inside the PyTorch module are in PyTorch's layout: a Keras (H, W, C) map is an
(N, C, H, W) tensor, so a Flatten gives C,H,W order and the next Dense takes its rows permuted
(`flat_dense`), exactly as `parity.mapping.FLAT_DENSE` does for the book's CNN. Every converter
refuses, in one line naming the layer, what it cannot compute exactly. Nothing is deserialised
or run: configs are plain JSON values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashion_cnn.errors import UserError
from parity.mapping import BIAS, CONV, DENSE, Transform

Shape = tuple[int, ...]  # Keras order, batch-free: (H, W, C), (H, W) or (F,)


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


# --- small modules for what torch.nn has no exact counterpart of ---------------------------


class AvgPool2dSame(nn.Module):
    """Keras AveragePooling2D(padding='same') where TF pads asymmetrically: the mean over the
    window's pixels inside the image only (the padding is left out of the count)."""

    def __init__(
        self, kernel_size: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.pad = kernel_size, stride, pad  # pad: l, r, t, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = F.avg_pool2d(F.pad(x, self.pad), self.kernel_size, self.stride, divisor_override=1)
        ones = torch.ones_like(x[:1, :1])
        count = F.avg_pool2d(
            F.pad(ones, self.pad), self.kernel_size, self.stride, divisor_override=1
        )
        return total / count

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}"


class GlobalPool2d(nn.Module):
    """GlobalAverage/MaxPooling2D: (N, C, H, W) → (N, C), or (N, C, 1, 1) with keepdims."""

    def __init__(self, mode: str, keepdims: bool = False) -> None:
        super().__init__()
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3), keepdim=self.keepdims)
        return x.amax(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, keepdims={self.keepdims}"


class Exponential(nn.Module):
    """Keras's 'exponential' activation: exp(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class Rescale(nn.Module):
    """Keras Rescaling: x * scale + offset."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class KerasReshape(nn.Module):
    """Keras Reshape, done in Keras's layout: an NCHW map goes to NHWC first, and a (H, W, C)
    target comes back to NCHW."""

    def __init__(self, target: Shape, image_in: bool) -> None:
        super().__init__()
        self.target, self.image_in = tuple(target), image_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_in:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if len(self.target) == 3 else x

    def extra_repr(self) -> str:
        return f"target={self.target} (Keras order), image_in={self.image_in}"


class FlattenHWC(nn.Module):
    """Flatten in Keras's H,W,C order, for a Flatten that no Dense follows (the model's output,
    or a Reshape): (N, C, H, W) → (N, H·W·C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


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
}  # fmt: skip


def converter(class_name: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        CONVERTERS[class_name] = fn
        return fn

    return register


def supported() -> str:
    return ", ".join(sorted(CONVERTERS))


# --- config helpers ---------------------------------------------------------------------------


def _pair(value, what: str, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (value[0], value[1])
    raise UserError(f"{where}: {what}={value!r} is not an int or a pair of ints")


def _channels_last(cfg: Mapping, where: str) -> None:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise UserError(f"{where}: data_format={fmt!r}; only channels_last is supported")


def _image(chain: Chain, where: str) -> tuple[int, int, int]:
    if len(chain.shape) != 3:
        raise UserError(f"{where}: takes an (H, W, C) map, but its input has shape {chain.shape}")
    return chain.shape  # type: ignore[return-value]


def _same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
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


# --- the converters ---------------------------------------------------------------------------


@converter("InputLayer")
def input_layer(cfg: Mapping, chain: Chain, where: str) -> Converted:
    return Converted([], chain.shape)


@converter("Conv2D")
def conv2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    _channels_last(cfg, where)
    h, w, c = _image(chain, where)
    filters = cfg.get("filters")
    groups = cfg.get("groups", 1) or 1
    if not isinstance(filters, int) or filters < 1 or c % groups or filters % groups:
        raise UserError(f"{where}: filters={filters!r}, groups={groups!r} do not fit {c} channels")
    kh, kw = _pair(cfg.get("kernel_size"), "kernel_size", where)
    sh, sw = _pair(cfg.get("strides", 1), "strides", where)
    dh, dw = _pair(cfg.get("dilation_rate", 1), "dilation_rate", where)
    if (sh > 1 or sw > 1) and (dh > 1 or dw > 1):
        raise UserError(f"{where}: strides > 1 with dilation_rate > 1 is not supported by Keras")
    padding = cfg.get("padding", "valid")
    use_bias = cfg.get("use_bias", True)
    modules: list[tuple[str, nn.Module]] = []
    if padding == "valid":
        pad = (0, 0)
        oh = (h - dh * (kh - 1) - 1) // sh + 1
        ow = (w - dw * (kw - 1) - 1) // sw + 1
    elif padding == "same":
        (top, bottom), (left, right) = _same_pads(h, kh, sh, dh), _same_pads(w, kw, sw, dw)
        if top == bottom and left == right:
            pad = (top, left)
        else:  # TF pads the extra pixel at the bottom/right; torch's 'same' cannot stride
            modules.append(("pad", nn.ZeroPad2d((left, right, top, bottom))))
            pad = (0, 0)
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
    else:
        raise UserError(f"{where}: padding={padding!r}; supported: 'valid', 'same'")
    if oh < 1 or ow < 1:
        raise UserError(f"{where}: the kernel does not fit the {h}×{w} input")
    conv = nn.Conv2d(c, filters, (kh, kw), (sh, sw), pad, (dh, dw), groups, bias=bool(use_bias))
    modules.append(("conv", conv))
    i = len(modules) - 1
    vars_ = [
        Var(
            "kernel",
            (kh, kw, c // groups, filters),
            i,
            "weight",
            (filters, c // groups, kh, kw),
            CONV,
        )
    ]
    if use_bias:
        vars_.append(Var("bias", (filters,), i, "bias", (filters,), BIAS))
    shape = (oh, ow, filters)
    modules += activation(cfg.get("activation", "linear"), shape, where)
    return Converted(modules, shape, vars_)


def _pool(cfg: Mapping, chain: Chain, where: str, mode: str) -> Converted:
    _channels_last(cfg, where)
    h, w, c = _image(chain, where)
    kh, kw = _pair(cfg.get("pool_size", 2), "pool_size", where)
    strides = cfg.get("strides")
    sh, sw = (kh, kw) if strides is None else _pair(strides, "strides", where)
    padding = cfg.get("padding", "valid")
    if padding == "valid":
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise UserError(f"{where}: the pool does not fit the {h}×{w} input")
        pool = (
            nn.MaxPool2d((kh, kw), (sh, sw)) if mode == "max" else nn.AvgPool2d((kh, kw), (sh, sw))
        )
        return Converted([("pool", pool)], (oh, ow, c))
    if padding != "same":
        raise UserError(f"{where}: padding={padding!r}; supported: 'valid', 'same'")
    (top, bottom), (left, right) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
    shape = (math.ceil(h / sh), math.ceil(w / sw), c)
    symmetric = top == bottom and left == right
    if mode == "max":  # TF pads with -inf: padding never wins a max
        if symmetric:
            return Converted([("pool", nn.MaxPool2d((kh, kw), (sh, sw), (top, left)))], shape)
        pad = nn.ConstantPad2d((left, right, top, bottom), float("-inf"))
        return Converted([("pad", pad), ("pool", nn.MaxPool2d((kh, kw), (sh, sw)))], shape)
    if symmetric:  # Keras leaves the padding out of the mean
        pool = nn.AvgPool2d((kh, kw), (sh, sw), (top, left), count_include_pad=False)
        return Converted([("pool", pool)], shape)
    return Converted(
        [("pool", AvgPool2dSame((kh, kw), (sh, sw), (left, right, top, bottom)))], shape
    )


@converter("MaxPooling2D")
def max_pooling2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    return _pool(cfg, chain, where, "max")


@converter("AveragePooling2D")
def average_pooling2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    return _pool(cfg, chain, where, "avg")


def _global_pool(cfg: Mapping, chain: Chain, where: str, mode: str) -> Converted:
    _channels_last(cfg, where)
    h, w, c = _image(chain, where)
    keepdims = bool(cfg.get("keepdims", False))
    kind = "gap" if mode == "avg" else "gmp"
    return Converted([(kind, GlobalPool2d(mode, keepdims))], (1, 1, c) if keepdims else (c,))


@converter("GlobalAveragePooling2D")
def global_average_pooling2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    return _global_pool(cfg, chain, where, "avg")


@converter("GlobalMaxPooling2D")
def global_max_pooling2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    return _global_pool(cfg, chain, where, "max")


@converter("ZeroPadding2D")
def zero_padding2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    _channels_last(cfg, where)
    h, w, c = _image(chain, where)
    padding = cfg.get("padding", 1)
    if (
        isinstance(padding, list | tuple)
        and len(padding) == 2
        and all(isinstance(p, list | tuple) for p in padding)
    ):
        (top, bottom), (left, right) = (_pair(p, "padding", where) for p in padding)
    else:
        (top, bottom), (left, right) = [(p, p) for p in _pair(padding, "padding", where)]
    pad = nn.ZeroPad2d((left, right, top, bottom))
    return Converted([("pad", pad)], (h + top + bottom, w + left + right, c))


@converter("Flatten")
def flatten(cfg: Mapping, chain: Chain, where: str) -> Converted:
    _channels_last(cfg, where)
    size = int(np.prod(chain.shape))
    if len(chain.shape) == 3 and not chain.dense_follows:
        return Converted([("flatten", FlattenHWC())], (size,))
    # An (H, W, C) map flattens in C,H,W order here: the next Dense takes the permutation.
    flat_from = chain.shape if len(chain.shape) == 3 else chain.flat_from
    return Converted([("flatten", nn.Flatten())], (size,), flat_from=flat_from)  # type: ignore


@converter("Dense")
def dense(cfg: Mapping, chain: Chain, where: str) -> Converted:
    if len(chain.shape) != 1:
        raise UserError(
            f"{where}: a Dense on a {len(chain.shape) + 1}-D input {chain.shape} is not "
            f"supported (only on flat (N, features) inputs; add a Flatten)"
        )
    (n_in,) = chain.shape
    units = cfg.get("units")
    if not isinstance(units, int) or units < 1:
        raise UserError(f"{where}: units={units!r} is not a positive int")
    use_bias = cfg.get("use_bias", True)
    if cfg.get("quantization_config") or cfg.get("lora_rank"):
        raise UserError(f"{where}: quantized or LoRA Dense layers are not supported")
    linear = nn.Linear(n_in, units, bias=bool(use_bias))
    transform = flat_dense(*chain.flat_from) if chain.flat_from else DENSE
    vars_ = [Var("kernel", (n_in, units), 0, "weight", (units, n_in), transform)]
    if use_bias:
        vars_.append(Var("bias", (units,), 0, "bias", (units,), BIAS))
    modules = [("dense", linear), *activation(cfg.get("activation", "linear"), (units,), where)]
    return Converted(modules, (units,), vars_)


@converter("Dropout")
def dropout(cfg: Mapping, chain: Chain, where: str) -> Converted:
    rate = cfg.get("rate")
    if not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise UserError(f"{where}: rate={rate!r} is not in [0, 1)")
    if cfg.get("noise_shape") is not None:
        raise UserError(f"{where}: a noise_shape is not supported")
    return Converted([("dropout", nn.Dropout(float(rate)))], chain.shape, flat_from=chain.flat_from)


@converter("BatchNormalization")
def batch_normalization(cfg: Mapping, chain: Chain, where: str) -> Converted:
    axis = cfg.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, len(chain.shape)):
        raise UserError(f"{where}: axis={axis!r}; only the channel axis -1 is supported")
    if cfg.get("renorm") or cfg.get("synchronized"):
        raise UserError(f"{where}: renorm and synchronized batch normalization are not supported")
    if len(chain.shape) == 3:
        c, bn = chain.shape[2], nn.BatchNorm2d
    elif len(chain.shape) == 1:
        c, bn = chain.shape[0], nn.BatchNorm1d
    else:
        raise UserError(
            f"{where}: on an input of shape {chain.shape}: only after a Conv2D "
            f"(H, W, C) or a Dense (features,) is supported"
        )
    center, scale = bool(cfg.get("center", True)), bool(cfg.get("scale", True))
    momentum = cfg.get("momentum", 0.99)
    module = bn(
        c,
        eps=float(cfg.get("epsilon", 1e-3)),
        momentum=round(1.0 - float(momentum), 12),
        affine=center or scale,
    )
    vec = flat_vector(*chain.flat_from) if chain.flat_from else BIAS
    vars_, fixed = [], []
    for keras, param, present, default in (
        ("gamma", "weight", scale, 1.0),
        ("beta", "bias", center, 0.0),
    ):
        if present:
            vars_.append(Var(keras, (c,), 0, param, (c,), vec))
        elif center or scale:  # affine with this half fixed
            fixed.append(Fixed(0, param, np.full(c, default, np.float32), required=True))
            with torch.no_grad():
                getattr(module, param).fill_(default)
                getattr(module, param).requires_grad_(False)
    vars_ += [
        Var("moving_mean", (c,), 0, "running_mean", (c,), vec),
        Var("moving_variance", (c,), 0, "running_var", (c,), vec),
    ]
    fixed.append(Fixed(0, "num_batches_tracked", np.array(0, np.int64), required=False))
    return Converted([("bn", module)], chain.shape, vars_, fixed, chain.flat_from)


@converter("Activation")
def activation_layer(cfg: Mapping, chain: Chain, where: str) -> Converted:
    modules = activation(cfg.get("activation"), chain.shape, where)
    return Converted(modules, chain.shape, flat_from=chain.flat_from)


@converter("ReLU")
def relu_layer(cfg: Mapping, chain: Chain, where: str) -> Converted:
    max_value = cfg.get("max_value")
    slope = float(cfg.get("negative_slope") or 0.0)
    threshold = float(cfg.get("threshold") or 0.0)
    if threshold != 0.0 or (slope != 0.0 and max_value is not None) or slope < 0:
        raise UserError(
            f"{where}: ReLU(max_value={max_value}, negative_slope={slope}, threshold={threshold}) "
            f"is not supported; supported: a plain ReLU, max_value alone, negative_slope alone"
        )
    if max_value is None:
        module: nn.Module = nn.LeakyReLU(slope) if slope else nn.ReLU()
    elif float(max_value) == 6.0:
        module = nn.ReLU6()
    else:
        module = nn.Hardtanh(0.0, float(max_value))
    return Converted(
        [(type(module).__name__.lower(), module)], chain.shape, flat_from=chain.flat_from
    )


@converter("LeakyReLU")
def leaky_relu_layer(cfg: Mapping, chain: Chain, where: str) -> Converted:
    slope = float(cfg.get("negative_slope", cfg.get("alpha", 0.3)))
    return Converted([("leakyrelu", nn.LeakyReLU(slope))], chain.shape, flat_from=chain.flat_from)


@converter("Softmax")
def softmax_layer(cfg: Mapping, chain: Chain, where: str) -> Converted:
    axis = cfg.get("axis", -1)
    if axis not in (-1, [-1], len(chain.shape), [len(chain.shape)]):
        raise UserError(f"{where}: axis={axis!r}; only the last axis is supported")
    dim = 1 if len(chain.shape) == 3 else -1
    return Converted([("softmax", nn.Softmax(dim=dim))], chain.shape, flat_from=chain.flat_from)


@converter("Rescaling")
def rescaling(cfg: Mapping, chain: Chain, where: str) -> Converted:
    scale, offset = cfg.get("scale", 1.0), cfg.get("offset", 0.0)
    for name, value in (("scale", scale), ("offset", offset)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise UserError(f"{where}: {name}={value!r}; only a number is supported")
    return Converted([("rescale", Rescale(scale, offset))], chain.shape, flat_from=chain.flat_from)


@converter("Reshape")
def reshape(cfg: Mapping, chain: Chain, where: str) -> Converted:
    target = cfg.get("target_shape")
    if not isinstance(target, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in target
    ):
        raise UserError(f"{where}: target_shape={target!r} is not a list of ints")
    size = int(np.prod(chain.shape))
    target = list(target)
    if target.count(-1) == 1:
        rest = int(np.prod([t for t in target if t != -1]))
        target[target.index(-1)] = size // rest if rest else 0
    if int(np.prod(target)) != size or any(t < 1 for t in target):
        raise UserError(f"{where}: cannot reshape {chain.shape} to {tuple(cfg['target_shape'])}")
    module = KerasReshape(tuple(target), image_in=len(chain.shape) == 3)
    return Converted([("reshape", module)], tuple(target))
