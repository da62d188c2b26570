"""`parity.save_keras`: an `nn.Sequential` of supported PyTorch modules (or a module this port
built) → a `.keras` or `.h5` that plain `keras.models.load_model` opens.

One small function per PyTorch module class, registered in `TO_KERAS`, gives the Keras layer(s)
and their variables in Keras layout. The chain they describe is then rebuilt in PyTorch by the
Keras → PyTorch converters (`parity.generic.build`) and run beside the source module on seeded
inputs: a module is written only when the Keras model it describes computes what it computes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError
from parity.compare import ATOL, RTOL
from parity.generic import (
    KerasLayer,
    KerasSequential,
    ModelSpec,
    build,
    keras_to_torch,
    to_snake_case,
    torch_to_keras,
)
from parity.generic_write import write_keras_model
from parity.layers import flat_dense, flat_vector
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
_PASS = (nn.Dropout, nn.BatchNorm1d, nn.Identity)


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


def _tf_same(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


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
        and _tf_same(h, kh, 1, dh) == (m.padding[0],) * 2
        and _tf_same(w, kw, 1, dw) == (m.padding[1],) * 2
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
    elif (_tf_same(h, k[0], s[0]), _tf_same(w, k[1], s[1])) == ((p[0],) * 2, (p[1],) * 2) and (
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
_ACTIVATIONS = {
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
for _cls, _name in _ACTIVATIONS.items():
    TO_KERAS[_cls] = _activation(_name)


def _params_ok(m: nn.Module) -> bool:
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


def _flat_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        if type(child) is nn.Sequential:
            out += [(f"{name}.{n}", m) for n, m in _flat_modules(child)]
        else:
            out.append((name, child))
    return out


def _dense_follows(modules: list[tuple[str, nn.Module]], i: int) -> bool:
    for _, m in modules[i + 1 :]:
        if isinstance(m, nn.Linear):
            return True
        if (
            not isinstance(m, _PASS)
            and type(m) not in _ACTIVATIONS
            and not isinstance(m, nn.LeakyReLU | nn.Softmax | nn.Hardtanh)
        ):
            return False
    return False


def sequential_to_keras(module: nn.Module, input_shape: Shape, dst: str) -> tuple[ModelSpec, dict]:
    """The Keras chain (ModelSpec) and its weights (Keras layout, "<path>/<var>")."""
    if type(module) is not nn.Sequential:
        raise UserError(
            f"{dst}: cannot write a {type(module).__name__}: only an nn.Sequential "
            f"of supported modules or a module built by this port"
        )
    modules = _flat_modules(module)
    state = State(tuple(input_shape))
    layers: list[KerasLayer] = []
    weights: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i, (name, m) in enumerate(modules):
        where = f"{dst}: module {name} ({type(m).__name__})"
        fn = TO_KERAS.get(type(m))
        if fn is None or not _params_ok(m):
            raise UserError(
                f"{where} has no exact Keras counterpart here; supported: "
                f"{', '.join(sorted({c.__name__ for c in TO_KERAS}))}"
            )
        if isinstance(m, nn.Flatten) and len(state.shape) == 3 and state.shape[:2] != (1, 1):
            if not _dense_follows(modules, i):
                raise UserError(
                    f"{where}: flattens in C,H,W order and no Linear follows to "
                    f"absorb it; Keras flattens in H,W,C order"
                )
        for class_name, cfg, vars_ in fn(m, state, where):
            base = to_snake_case(class_name)
            k = counts.get(base, 0)
            counts[base] = k + 1
            path = base if k == 0 else f"{base}_{k}"
            cfg = {"name": path, "trainable": True, "dtype": _policy(), **cfg}
            layer = KerasLayer(class_name, cfg, path)
            layers.append(layer)
            for var, array in vars_:
                weights[f"{path}/{var}"] = np.ascontiguousarray(array, np.float32)
        # the shape from the Keras → PyTorch converters; the C,H,W order of a Flatten pending
        # until the Linear that takes it (checked above to follow)
        spec = ModelSpec(tuple(input_shape), tuple(layers))
        info = build(spec, dst).layers if layers else []
        if isinstance(m, nn.Flatten) and len(state.shape) == 3:
            flat_from = state.shape if state.shape[:2] != (1, 1) else None
        else:
            flat_from = None if isinstance(m, nn.Linear) else state.flat_from
        if info:
            state = State(info[-1].shape, flat_from)
    if not layers:
        raise UserError(f"{dst}: the module holds no layers")
    return ModelSpec(tuple(input_shape), tuple(layers)), weights


def _policy() -> dict:
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "float32"},
        "registered_name": None,
    }


def save_keras(
    module: nn.Module, path: str | os.PathLike, input_shape: Shape, *, force: bool = False
) -> Path:
    """Write `module` as a Keras `.keras` or `.h5` (input_shape in Keras order, e.g. (28, 28, 1)).

    The Keras chain is rebuilt in PyTorch and run beside `module` on seeded inputs first; the
    file is written only when both agree within atol = rtol = 1e-5.
    """
    dst = str(path)
    if isinstance(module, KerasSequential):
        spec = module.keras_spec
        built = build(spec, dst)
        weights = torch_to_keras(built, module.state_dict(), dst)
    else:
        spec, weights = sequential_to_keras(module, tuple(input_shape), dst)
        if tuple(input_shape) != spec.input_shape:
            raise AssertionError("input shape changed")
        built = build(spec, dst)
    if tuple(input_shape) != spec.input_shape:
        raise UserError(
            f"{dst}: input_shape {tuple(input_shape)} differs from the module's {spec.input_shape}"
        )
    _check_same(module, built, weights, spec, dst)
    return write_keras_model(spec, weights, path, force=force)


def _check_same(module: nn.Module, built, weights: dict, spec: ModelSpec, dst: str) -> None:
    rebuilt = built.module
    rebuilt.load_state_dict(keras_to_torch(built, weights, dst), strict=True, assign=True)
    shape = spec.input_shape
    torch_shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
    x = torch.from_numpy(np.random.default_rng(0).random((4, *torch_shape), dtype=np.float32))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want, got = module(x), rebuilt.eval()(x)
    finally:
        module.train(was_training)
    if want.shape != got.shape or not torch.allclose(got, want, atol=ATOL, rtol=RTOL):
        diff = (got - want).abs().max().item() if want.shape == got.shape else float("inf")
        raise UserError(
            f"{dst}: refused: the Keras model would not compute what the module "
            f"computes (max |diff| {diff:.3e} on seeded inputs)"
        )
