"""The other direction: one function per PyTorch module class, registered in `TO_KERAS` with
`@to_keras(nn.Conv2d)`, giving the Keras layer(s) it is and their variables in Keras layout.
`parity.export.to_keras.save_keras` walks an `nn.Sequential` through them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError
from parity.layers.registry import flat_dense, flat_vector, same_pads
from parity.mapping import CONV, DENSE

Shape = tuple[int, ...]


@dataclass
class State:
    shape: Shape  # Keras order, batch-free
    flat_from: tuple[int, int, int] | None = None  # a torch Flatten's C,H,W order pending


# (class_name, config, [(var, array in Keras layout)]) per Keras layer
Layers = list[tuple[str, dict, list[tuple[str, np.ndarray]]]]
ToKeras = Callable[[nn.Module, State, str], Layers]
TO_KERAS: dict[type, ToKeras] = {}
# Modules a pending Flatten order passes through (elementwise or per-feature).
PASS_FLATTEN = (nn.Dropout, nn.BatchNorm1d, nn.Identity)


def to_keras(*classes: type) -> Callable[[ToKeras], ToKeras]:
    def register(fn: ToKeras) -> ToKeras:
        for cls in classes:
            TO_KERAS[cls] = fn
        return fn

    return register


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _image(state: State, where: str) -> tuple[int, int, int]:
    if len(state.shape) != 3:
        raise UserError(f"{where}: takes an image, but its input has shape {state.shape}")
    return state.shape  # type: ignore[return-value]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@to_keras(nn.Conv2d)
def conv2d(m: nn.Conv2d, state: State, where: str) -> Layers:
    h, w, c = _image(state, where)
    if m.padding_mode != "zeros":
        raise UserError(f"{where}: padding_mode={m.padding_mode!r}; only 'zeros' maps to Keras")
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    layers: Layers = []
    if m.padding == "valid" or m.padding == (0, 0):
        padding = "valid"
    elif m.padding == "same" or (
        (sh, sw) == (1, 1)
        and same_pads(h, kh, 1, dh) == (m.padding[0],) * 2
        and same_pads(w, kw, 1, dw) == (m.padding[1],) * 2
    ):
        padding = "same"  # torch's 'same' also pads the extra pixel at the bottom/right
    else:
        ph, pw = m.padding
        layers.append(
            ("ZeroPadding2D", {"padding": [[ph, ph], [pw, pw]], "data_format": "channels_last"}, [])
        )
        padding = "valid"
    cfg = {
        "filters": m.out_channels,
        "kernel_size": [kh, kw],
        "strides": [sh, sw],
        "padding": padding,
        "data_format": "channels_last",
        "dilation_rate": [dh, dw],
        "groups": m.groups,
        "activation": "linear",
        "use_bias": m.bias is not None,
    }
    vars_ = [("kernel", CONV.to_keras(_np(m.weight)))]
    if m.bias is not None:
        vars_.append(("bias", _np(m.bias)))
    return [*layers, ("Conv2D", cfg, vars_)]


@to_keras(nn.ZeroPad2d)
def zero_pad2d(m: nn.ZeroPad2d, state: State, where: str) -> Layers:
    _image(state, where)
    left, right, top, bottom = m.padding
    return [
        (
            "ZeroPadding2D",
            {"padding": [[top, bottom], [left, right]], "data_format": "channels_last"},
            [],
        )
    ]


def _pool(m: nn.Module, state: State, where: str, cls: str) -> Layers:
    h, w, c = _image(state, where)
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = _pair(m.padding)
    if m.ceil_mode or getattr(m, "dilation", 1) not in (1, (1, 1)):
        raise UserError(f"{where}: ceil_mode or dilation has no Keras counterpart")
    if getattr(m, "divisor_override", None) is not None or getattr(m, "return_indices", False):
        raise UserError(f"{where}: divisor_override / return_indices have no Keras counterpart")
    if p == (0, 0):
        padding = "valid"
    elif (same_pads(h, k[0], s[0]), same_pads(w, k[1], s[1])) == ((p[0],) * 2, (p[1],) * 2) and (
        cls == "MaxPooling2D" or not m.count_include_pad
    ):
        padding = "same"
    else:
        raise UserError(f"{where}: padding {p} is neither 'valid' nor Keras's 'same' here")
    cfg = {
        "pool_size": list(k),
        "strides": list(s),
        "padding": padding,
        "data_format": "channels_last",
    }
    return [(cls, cfg, [])]


@to_keras(nn.MaxPool2d)
def max_pool2d(m: nn.MaxPool2d, state: State, where: str) -> Layers:
    return _pool(m, state, where, "MaxPooling2D")


@to_keras(nn.AvgPool2d)
def avg_pool2d(m: nn.AvgPool2d, state: State, where: str) -> Layers:
    return _pool(m, state, where, "AveragePooling2D")


@to_keras(nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
def adaptive_pool(m: nn.Module, state: State, where: str) -> Layers:
    _image(state, where)
    if _pair(m.output_size) != (1, 1):
        raise UserError(f"{where}: only output_size 1 maps to Keras (a global pooling)")
    cls = "GlobalAveragePooling2D" if isinstance(m, nn.AdaptiveAvgPool2d) else "GlobalMaxPooling2D"
    return [(cls, {"data_format": "channels_last", "keepdims": True}, [])]


@to_keras(nn.Flatten)
def flatten(m: nn.Flatten, state: State, where: str) -> Layers:
    if m.start_dim != 1 or m.end_dim != -1:
        raise UserError(f"{where}: only Flatten(start_dim=1, end_dim=-1) maps to Keras")
    return [("Flatten", {"data_format": "channels_last"}, [])]


@to_keras(nn.Linear)
def linear(m: nn.Linear, state: State, where: str) -> Layers:
    if len(state.shape) != 1:
        raise UserError(
            f"{where}: a Linear on an input of shape {state.shape}; Keras's Dense "
            f"here takes flat inputs only"
        )
    transform = flat_dense(*state.flat_from) if state.flat_from else DENSE
    cfg = {"units": m.out_features, "activation": "linear", "use_bias": m.bias is not None}
    vars_ = [("kernel", transform.to_keras(_np(m.weight)))]
    if m.bias is not None:
        vars_.append(("bias", _np(m.bias)))
    return [("Dense", cfg, vars_)]


@to_keras(nn.Dropout)
def dropout(m: nn.Dropout, state: State, where: str) -> Layers:
    return [("Dropout", {"rate": float(m.p), "seed": None, "noise_shape": None}, [])]


@to_keras(nn.BatchNorm1d, nn.BatchNorm2d)
def batch_norm(m: nn.modules.batchnorm._BatchNorm, state: State, where: str) -> Layers:
    if isinstance(m, nn.BatchNorm2d):
        _image(state, where)
    elif len(state.shape) != 1:
        raise UserError(f"{where}: a BatchNorm1d on {state.shape}; only on (features,) inputs")
    if m.running_mean is None or m.running_var is None:
        raise UserError(f"{where}: track_running_stats=False has no Keras counterpart")
    vec = flat_vector(*state.flat_from) if state.flat_from else None
    prep = (lambda v: vec.to_keras(v)) if vec else (lambda v: v)
    vars_ = []
    if m.affine:
        vars_ += [("gamma", prep(_np(m.weight))), ("beta", prep(_np(m.bias)))]
    vars_ += [
        ("moving_mean", prep(_np(m.running_mean))),
        ("moving_variance", prep(_np(m.running_var))),
    ]
    momentum = 0.1 if m.momentum is None else m.momentum
    cfg = {
        "axis": -1,
        "momentum": round(1.0 - momentum, 12),
        "epsilon": m.eps,
        "center": m.affine,
        "scale": m.affine,
    }
    return [("BatchNormalization", cfg, vars_)]


def _activation(name: str) -> ToKeras:
    return lambda m, state, where: [("Activation", {"activation": name}, [])]


# PyTorch activation modules with their exact Keras names (parameters checked in `_params_ok`).
ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Softplus: "softplus",
    nn.Softsign: "softsign",
    nn.Hardsigmoid: "hard_sigmoid",
    nn.Hardswish: "hard_silu",
    nn.Tanhshrink: "tanh_shrink",
    nn.LogSigmoid: "log_sigmoid",
    nn.Mish: "mish",
}
for _cls, _name in ACTIVATIONS.items():
    TO_KERAS[_cls] = _activation(_name)


def params_ok(m: nn.Module) -> bool:
    """Parameterised activations map only with Keras's fixed constants."""
    if isinstance(m, nn.ELU | nn.CELU):
        return m.alpha == 1.0
    if isinstance(m, nn.GELU):
        return m.approximate == "none"
    if isinstance(m, nn.Softplus):
        return m.beta == 1.0
    return True


@to_keras(nn.LeakyReLU)
def leaky_relu(m: nn.LeakyReLU, state: State, where: str) -> Layers:
    return [("LeakyReLU", {"negative_slope": float(m.negative_slope)}, [])]


@to_keras(nn.Hardtanh)
def hardtanh(m: nn.Hardtanh, state: State, where: str) -> Layers:
    if m.min_val == 0.0:
        return [
            ("ReLU", {"max_value": float(m.max_val), "negative_slope": 0.0, "threshold": 0.0}, [])
        ]
    if (m.min_val, m.max_val) == (-1.0, 1.0):
        return [("Activation", {"activation": "hard_tanh"}, [])]
    raise UserError(f"{where}: Hardtanh({m.min_val}, {m.max_val}) has no Keras counterpart")


@to_keras(nn.Softmax, nn.LogSoftmax)
def softmax(m: nn.Module, state: State, where: str) -> Layers:
    channel = 1 if len(state.shape) == 3 else len(state.shape)
    if m.dim not in (channel, -1 if len(state.shape) != 3 else channel):
        raise UserError(f"{where}: softmax over dim={m.dim}; Keras's runs over the channel axis")
    if isinstance(m, nn.LogSoftmax):
        return [("Activation", {"activation": "log_softmax"}, [])]
    return [("Softmax", {"axis": -1}, [])]


@to_keras(nn.Identity)
def identity(m: nn.Identity, state: State, where: str) -> Layers:
    return []
