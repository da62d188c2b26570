"""Activations: Keras's activation names (for `Activation` and every layer's `activation`), and
the `Activation`, `ReLU`, `LeakyReLU` and `Softmax` layers.

Each name maps to a PyTorch module that computes the same function (checked per name against
Keras in the parity suite) and to its float64 numpy form (keras.activations as TensorFlow
computes them; the layer's output rounded to float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.registry import Converted, Entry, In, Out, number, register

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _erf_erfc(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """erf(a) and erfc(a) of a ≥ 0 in float64, both to ~1e-12 relative or better: the series
    erf(a) = 2/√π·e^(-a²)·Σ (2a²)ⁿ·a / (1·3·…·(2n+1)) (positive terms) below 2.5, Laplace's
    continued fraction for erfc above."""
    erf, erfc = np.empty_like(a), np.empty_like(a)
    small = a < 2.5
    s = a[small]
    z2 = s * s
    term, total = s.copy(), s.copy()
    for n in range(1, 40):
        term *= 2.0 * z2 / (2 * n + 1)
        total += term
    erf[small] = 2.0 / math.sqrt(math.pi) * np.exp(-z2) * total
    erfc[small] = 1.0 - erf[small]
    b = a[~small]
    frac = np.zeros_like(b)
    for k in range(40, 0, -1):
        frac = (k / 2.0) / (b + frac)
    erfc[~small] = np.exp(-b * b) / math.sqrt(math.pi) / (b + frac)
    erf[~small] = 1.0 - erfc[~small]
    return erf, erfc


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact form, 0.5·x·erfc(-x/√2) (tf.nn.gelu(approximate=False))."""
    z = x / math.sqrt(2.0)
    erf, erfc = _erf_erfc(np.abs(z))
    return 0.5 * x * np.where(z >= 0, 1.0 + erf, erfc)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# Keras activation name → the function on a float64 array.
NUMPY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": softmax,
    "log_softmax": _log_softmax,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "celu": lambda x: np.maximum(x, 0.0) + np.expm1(np.minimum(x, 0.0)),
    "gelu": _gelu,
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "softplus": _softplus,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "hard_sigmoid": lambda x: _relu6(x + 3.0) / 6.0,
    "hard_silu": lambda x: x * (_relu6(x + 3.0) / 6.0),
    "hard_swish": lambda x: x * (_relu6(x + 3.0) / 6.0),
    "hard_tanh": lambda x: np.clip(x, -1.0, 1.0),
    "tanh_shrink": lambda x: x - np.tanh(x),
    "soft_shrink": lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0.0)),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0.0),
    "log_sigmoid": lambda x: -_softplus(-x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "exponential": np.exp,
}
NAMES = tuple(NUMPY)


def torch_activation(name: str, channel_dim: int):
    """The PyTorch module of a Keras activation name (softmax and log-softmax take the channel
    axis: dim 1 of an NCHW map, the last of anything else)."""
    from torch import nn

    from parity.layers.modules import Exponential

    table = {
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),  # keras.activations.leaky_relu's default slope
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "softmax": lambda: nn.Softmax(dim=channel_dim),
        "log_softmax": lambda: nn.LogSoftmax(dim=channel_dim),
        "elu": nn.ELU,
        "selu": nn.SELU,
        "celu": nn.CELU,
        "gelu": nn.GELU,  # Keras's 'gelu' is the exact erf form (approximate='none')
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "softplus": nn.Softplus,
        "softsign": nn.Softsign,
        "hard_sigmoid": nn.Hardsigmoid,  # Keras 3: relu6(x + 3) / 6, as torch's
        "hard_silu": nn.Hardswish,
        "hard_swish": nn.Hardswish,
        "hard_tanh": nn.Hardtanh,
        "tanh_shrink": nn.Tanhshrink,
        "soft_shrink": lambda: nn.Softshrink(0.5),
        "hard_shrink": lambda: nn.Hardshrink(0.5),
        "log_sigmoid": nn.LogSigmoid,
        "mish": nn.Mish,
        "exponential": Exponential,
    }
    return table[name]()


def activation_name(value: object, where: str) -> str:
    """A layer's `activation`: one of NAMES ("linear" for None)."""
    if value is None:
        return "linear"
    if not isinstance(value, str) or value not in NUMPY:
        shown = value if isinstance(value, str) else type(value).__name__
        raise UserError(f"{where}: activation {shown!r} has no exact PyTorch counterpart here; "
                        f"supported: {', '.join(NAMES)}")
    return value


def activation_modules(name: str, shape: tuple[int, ...]) -> list[tuple[str, object]]:
    """The modules of an activation on a tensor of Keras `shape` ([] for linear)."""
    if name == "linear":
        return []
    module = torch_activation(name, 1 if len(shape) == 3 else -1)
    return [(type(module).__name__.lower(), module)]


def activate(name: str, x: np.ndarray) -> np.ndarray:
    """The float32 numpy activation (exact for linear and relu; float64 inside otherwise)."""
    if name in ("linear", "relu"):
        return NUMPY[name](x)
    with np.errstate(over="ignore"):  # exp overflows to inf in float32, as in Keras
        return NUMPY[name](x.astype(np.float64)).astype(np.float32)


# --- the layers ----------------------------------------------------------------------------------


@register
class Activation(Entry):
    kind = "Activation"
    fields = ("activation",)
    passes_flatten = True
    torch_classes = (
        "ReLU", "ReLU6", "Sigmoid", "Tanh", "ELU", "SELU", "CELU", "GELU", "SiLU", "Softplus",
        "Softsign", "Hardsigmoid", "Hardswish", "Tanhshrink", "LogSigmoid", "Mish", "LogSoftmax",
    )

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"activation": str(rng.choice([n for n in NAMES if n != "linear"]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> str:
        return activation_name(cfg.get("activation"), where)

    @staticmethod
    def infer(p: str, ins: Sequence[In], where: str) -> Out:
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p: str, ins: Sequence[In], out: Out, where: str) -> Converted:
        return Converted(activation_modules(p, ins[0].shape))  # type: ignore[arg-type]

    @staticmethod
    def numpy(p: str, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return activate(p, xs[0])

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        from torch import nn

        names = {
            nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh",
            nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.GELU: "gelu", nn.SiLU: "silu",
            nn.Softplus: "softplus", nn.Softsign: "softsign", nn.Hardsigmoid: "hard_sigmoid",
            nn.Hardswish: "hard_silu", nn.Tanhshrink: "tanh_shrink", nn.LogSigmoid: "log_sigmoid",
            nn.Mish: "mish", nn.LogSoftmax: "log_softmax",
        }
        fixed = (
            (isinstance(m, nn.ELU | nn.CELU) and m.alpha != 1.0)
            or (isinstance(m, nn.GELU) and m.approximate != "none")
            or (isinstance(m, nn.Softplus) and m.beta != 1.0)
        )
        if fixed:  # parameterised activations map only with Keras's fixed constants
            raise UserError(f"{where} has no exact Keras counterpart (its constants differ)")
        if isinstance(m, nn.LogSoftmax) and m.dim not in (1 if len(inp.shape) == 3 else -1,
                                                          len(inp.shape)):
            raise UserError(f"{where}: log-softmax over dim={m.dim}; Keras's runs over channels")
        return [("Activation", {"activation": names[type(m)]}, [])]


@dataclass(frozen=True)
class ReLUParams:
    max_value: float | None
    negative_slope: float


@register
class ReLU(Entry):
    """keras.layers.ReLU: the plain ReLU, max_value alone (ReLU6 among them), or negative_slope
    alone (Keras's threshold, and a slope with a max_value, are refused)."""

    kind = "ReLU"
    fields = ("max_value", "negative_slope", "threshold")
    passes_flatten = True
    torch_classes = ("Hardtanh",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        pick = rng.integers(3)
        if pick == 0:
            return {}
        if pick == 1:
            return {"max_value": float(rng.choice([1.5, 6.0]))}
        return {"negative_slope": float(rng.uniform(0.01, 0.3))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> ReLUParams:
        max_value = cfg.get("max_value")
        if max_value is not None:  # 0 would make the layer a constant zero
            max_value = number(max_value, "max_value", where, low=0.0, low_open=True)
        slope = number(cfg.get("negative_slope") or 0.0, "negative_slope", where)
        threshold = number(cfg.get("threshold") or 0.0, "threshold", where)
        if threshold != 0.0 or (slope != 0.0 and max_value is not None) or slope < 0:
            raise UserError(
                f"{where}: ReLU(max_value={max_value}, negative_slope={slope}, "
                f"threshold={threshold}) is not supported; supported: a plain ReLU, max_value "
                f"alone, negative_slope alone"
            )
        return ReLUParams(max_value, slope)

    @staticmethod
    def infer(p: ReLUParams, ins: Sequence[In], where: str) -> Out:
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p: ReLUParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        if p.max_value is None:
            module = nn.LeakyReLU(p.negative_slope) if p.negative_slope else nn.ReLU()
        elif p.max_value == 6.0:
            module = nn.ReLU6()
        else:
            module = nn.Hardtanh(0.0, p.max_value)
        return Converted([(type(module).__name__.lower(), module)])

    @staticmethod
    def numpy(p: ReLUParams, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        x = xs[0]
        if p.negative_slope:
            return np.where(x >= 0, x, np.float32(p.negative_slope) * x)
        out = np.maximum(x, np.float32(0.0))
        return out if p.max_value is None else np.minimum(out, np.float32(p.max_value))

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        if m.min_val == 0.0 and m.max_val > 0.0:
            cfg = {"max_value": float(m.max_val), "negative_slope": 0.0, "threshold": 0.0}
            return [("ReLU", cfg, [])]
        if (m.min_val, m.max_val) == (-1.0, 1.0):
            return [("Activation", {"activation": "hard_tanh"}, [])]
        raise UserError(f"{where}: Hardtanh({m.min_val}, {m.max_val}) has no Keras counterpart")


@register
class LeakyReLU(Entry):
    kind = "LeakyReLU"
    fields = ("negative_slope",)
    passes_flatten = True
    torch_classes = ("LeakyReLU",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"negative_slope": float(rng.uniform(0.0, 0.5))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> float:
        return number(cfg.get("negative_slope", cfg.get("alpha", 0.3)), "negative_slope", where)

    @staticmethod
    def infer(p: float, ins: Sequence[In], where: str) -> Out:
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p: float, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        return Converted([("leakyrelu", nn.LeakyReLU(p))])

    @staticmethod
    def numpy(p: float, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return np.where(xs[0] >= 0, xs[0], np.float32(p) * xs[0])

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        return [("LeakyReLU", {"negative_slope": float(m.negative_slope)}, [])]


@register
class Softmax(Entry):
    kind = "Softmax"
    fields = ("axis",)
    passes_flatten = True  # over the whole flat vector: a permutation commutes with it
    torch_classes = ("Softmax",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"axis": -1}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> object:
        axis = cfg.get("axis", -1)
        return axis[0] if isinstance(axis, list) and len(axis) == 1 else axis

    @staticmethod
    def infer(p: object, ins: Sequence[In], where: str) -> Out:
        if p not in (-1, len(ins[0].shape)):
            raise UserError(f"{where}: axis={p!r}; only the last axis is supported")
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p: object, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        return Converted([("softmax", nn.Softmax(dim=1 if len(ins[0].shape) == 3 else -1))])

    @staticmethod
    def numpy(p: object, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return softmax(xs[0].astype(np.float64)).astype(np.float32)

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        channel = 1 if len(inp.shape) == 3 else len(inp.shape)
        if m.dim not in (channel, -1 if len(inp.shape) != 3 else channel):
            raise UserError(f"{where}: softmax over dim={m.dim}; Keras's runs over the channels")
        return [("Softmax", {"axis": -1}, [])]
