"""The Keras layers the generic port supports, in float32 numpy and Keras's own layout: the
pre-write check's reference where Keras cannot be imported (a GPU box with torch only).
`layer_outputs(spec, weights, images)` gives each layer's output of `spec.layers`.

Inference semantics (Dropout is the identity, BatchNormalization uses its moving statistics),
NHWC maps, H,W,C flatten order, TensorFlow's asymmetric 'same' padding. Sums and transcendental
functions are computed in float64, each layer's output rounded to float32: Keras's float32
kernels differ from it by their own rounding only (parity/tests/test_numpy_keras.py).

numpy only: no torch, Keras or TensorFlow is imported. The port validates the spec before
(`parity.build.build`); what it refuses raises a ValueError here naming the layer's class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from parity.build import KerasLayer, ModelSpec

# Elements of a convolution's window matrix (N·OH·OW × kh·kw·C, float64) held at once: the batch
# is cut into slices below this (128 MiB), whatever the caller passes.
MAX_WINDOW_ELEMENTS = 1 << 24
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def layer_outputs(
    spec: ModelSpec, weights: Mapping[str, np.ndarray], images: np.ndarray
) -> list[np.ndarray]:
    """Each layer's output of `spec.layers` on `images` (Keras layout, batch first), float32."""
    x = np.asarray(images, dtype=np.float32)
    if x.shape[1:] != tuple(spec.input_shape):
        raise ValueError(f"images of shape {x.shape[1:]}, the model takes {spec.input_shape}")
    outputs = []
    for layer in spec.layers:
        if layer.class_name not in _LAYERS:
            raise ValueError(f"{layer.path}: no numpy implementation of {layer.class_name}")
        x = np.asarray(_LAYERS[layer.class_name](layer, weights, x), dtype=np.float32)
        outputs.append(x)
    return outputs


# --- helpers ----------------------------------------------------------------------------------


def _refuse(layer: KerasLayer, what: str) -> ValueError:
    return ValueError(f"{layer.path} ({layer.class_name}): {what} is not supported")


def _pair(layer: KerasLayer, key: str, default: object, value: object = None) -> tuple[int, int]:
    """An int or a pair of ints: the config's `key`, or `value` where given."""
    value = layer.config.get(key, default) if value is None else value
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    ints = isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    if ints and len(value) == 2:  # type: ignore[arg-type]
        return value[0], value[1]  # type: ignore[index]
    raise _refuse(layer, f"{key}={value!r}")


def _channels_last(layer: KerasLayer) -> None:
    fmt = layer.config.get("data_format") or "channels_last"
    if fmt != "channels_last":
        raise _refuse(layer, f"data_format={fmt!r}")


def _image(layer: KerasLayer, x: np.ndarray) -> None:
    _channels_last(layer)
    if x.ndim != 4:
        raise _refuse(layer, f"an input of shape {x.shape[1:]} (it takes (H, W, C) maps)")


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis, (before, after): the extra pixel goes after
    (as `parity.layers.registry.same_pads`, which imports torch)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _padding(layer: KerasLayer, x: np.ndarray, k, s, d=(1, 1)) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) of a 'valid' or 'same' layer."""
    padding = layer.config.get("padding", "valid")
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return same_pads(x.shape[1], k[0], s[0], d[0]), same_pads(x.shape[2], k[1], s[1], d[1])
    raise _refuse(layer, f"padding={padding!r}")


def _windows(x: np.ndarray, k, s, d=(1, 1)) -> np.ndarray:
    """(N, OH, OW, C, kh, kw) view of the (already padded) map's windows."""
    span = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
    if x.shape[1] < span[0] or x.shape[2] < span[1]:
        raise ValueError(f"a {span} window does not fit the {x.shape[1:3]} input")
    view = sliding_window_view(x, span, axis=(1, 2))
    return view[:, :: s[0], :: s[1], :, :: d[0], :: d[1]]


def _pad(x: np.ndarray, pads, value: float = 0.0) -> np.ndarray:
    if not any(pads[0] + pads[1]):
        return x
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


# --- the activations (keras.activations, as the TensorFlow backend computes them) -------------


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


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# Keras activation name → the function on a float64 array (parity.layers.registry's names;
# the test checks the two lists are one).
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": _relu6,
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,
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


def _activate(layer: KerasLayer, name: object, x: np.ndarray) -> np.ndarray:
    name = "linear" if name is None else name
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise _refuse(layer, f"activation {name!r}")
    if name in ("linear", "relu"):  # exact in float32
        return ACTIVATIONS[name](x)
    with np.errstate(over="ignore"):  # exp overflows to inf in float32, as in Keras
        return ACTIVATIONS[name](x.astype(np.float64)).astype(np.float32)


# --- the layers -------------------------------------------------------------------------------

Weights = Mapping[str, np.ndarray]  # "<path>/<var>" → a Keras-layout array


def _conv2d(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    _image(layer, x)
    cfg = layer.config
    k, s = _pair(layer, "kernel_size", None), _pair(layer, "strides", 1)
    d = _pair(layer, "dilation_rate", 1)
    kernel = np.asarray(w[f"{layer.path}/kernel"], dtype=np.float64)  # kh, kw, C/groups, F
    groups = cfg.get("groups", 1) or 1
    c, filters = x.shape[3], kernel.shape[3]
    if kernel.shape[:3] != (*k, c // groups) or c % groups or filters % groups:
        raise _refuse(layer, f"a kernel of shape {kernel.shape} on {c} channels")
    if max(s) > 1 and max(d) > 1:
        raise _refuse(layer, "strides > 1 with dilation_rate > 1")
    padded = _pad(x.astype(np.float64), _padding(layer, x, k, s, d))
    per_image = -(-padded.shape[1] // s[0]) * -(-padded.shape[2] // s[1]) * c * k[0] * k[1]
    step = max(1, MAX_WINDOW_ELEMENTS // per_image)
    cg, fg = c // groups, filters // groups
    parts = []
    for i in range(0, max(len(padded), 1), step):  # batch slices: bounded memory
        win = _windows(padded[i : i + step], k, s, d)  # N, OH, OW, C, kh, kw
        groups_out = [  # each group: its channels × its filters
            np.tensordot(win[:, :, :, g * cg : (g + 1) * cg], kernel[..., g * fg : (g + 1) * fg],
                         axes=([4, 5, 3], [0, 1, 2]))
            for g in range(groups)
        ]
        parts.append(np.concatenate(groups_out, axis=3))
    out = np.concatenate(parts)
    if cfg.get("use_bias", True):
        out += np.asarray(w[f"{layer.path}/bias"], dtype=np.float64)
    return _activate(layer, cfg.get("activation", "linear"), out.astype(np.float32))


def _dense(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    if x.ndim != 2:
        raise _refuse(layer, f"an input of shape {x.shape[1:]} (it takes (N, features))")
    if layer.config.get("quantization_config") or layer.config.get("lora_rank"):
        raise _refuse(layer, "a quantized or LoRA Dense")
    out = x.astype(np.float64) @ np.asarray(w[f"{layer.path}/kernel"], dtype=np.float64)
    if layer.config.get("use_bias", True):
        out += np.asarray(w[f"{layer.path}/bias"], dtype=np.float64)
    return _activate(layer, layer.config.get("activation", "linear"), out.astype(np.float32))


def _pool(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    _image(layer, x)
    k = _pair(layer, "pool_size", 2)
    s = k if layer.config.get("strides") is None else _pair(layer, "strides", None)
    pads = _padding(layer, x, k, s)
    if layer.class_name == "MaxPooling2D":  # TF pads with -inf: padding never wins a max
        return _windows(_pad(x, pads, -np.inf), k, s).max(axis=(4, 5))
    total = _windows(_pad(x, pads).astype(np.float64), k, s).sum(axis=(4, 5))
    ones = _pad(np.ones((1, *x.shape[1:3], 1)), pads)  # the mean leaves the padding out
    return total / _windows(ones, k, s).sum(axis=(4, 5))


def _global_pool(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    _image(layer, x)
    keepdims = bool(layer.config.get("keepdims", False))
    if layer.class_name == "GlobalMaxPooling2D":
        return x.max(axis=(1, 2), keepdims=keepdims)
    return x.astype(np.float64).mean(axis=(1, 2), keepdims=keepdims)


def _zero_padding2d(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    _image(layer, x)
    padding = layer.config.get("padding", 1)
    if (
        isinstance(padding, list | tuple)
        and len(padding) == 2
        and all(isinstance(p, list | tuple) for p in padding)
    ):
        pads = tuple(_pair(layer, "padding", None, p) for p in padding)
    else:
        ph, pw = _pair(layer, "padding", 1)
        pads = ((ph, ph), (pw, pw))
    if any(p < 0 for p in pads[0] + pads[1]):
        raise _refuse(layer, f"padding={padding!r}")
    return _pad(x, pads)


def _flatten(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    _channels_last(layer)
    return x.reshape(len(x), -1)  # H,W,C order


def _dropout(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    if layer.config.get("noise_shape") is not None:
        raise _refuse(layer, "a noise_shape")
    return x  # inference: the identity, whatever the rate


def _batch_normalization(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    cfg = layer.config
    axis = cfg.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, x.ndim - 1) or x.ndim not in (2, 4):
        raise _refuse(layer, f"axis={axis!r} on an input of shape {x.shape[1:]}")
    if cfg.get("renorm") or cfg.get("synchronized"):
        raise _refuse(layer, "renorm or synchronized batch normalization")

    def var(name: str) -> np.ndarray:
        return np.asarray(w[f"{layer.path}/{name}"], dtype=np.float64)
    # tf.nn.batch_normalization: inv = gamma / sqrt(var + eps); x·inv + (beta - mean·inv)
    inv = 1.0 / np.sqrt(var("moving_variance") + float(cfg.get("epsilon", 1e-3)))
    if cfg.get("scale", True):
        inv = inv * var("gamma")
    shift = -var("moving_mean") * inv
    if cfg.get("center", True):
        shift = shift + var("beta")
    return x.astype(np.float64) * inv + shift


def _activation_layer(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    return _activate(layer, layer.config.get("activation"), x)


def _relu(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    """keras.layers.ReLU: the plain ReLU, max_value alone, or negative_slope alone (what the
    port takes; keras.activations.relu's threshold and slope-with-max_value are refused)."""
    cfg = layer.config
    max_value = cfg.get("max_value")
    slope = float(cfg.get("negative_slope") or 0.0)
    threshold = float(cfg.get("threshold") or 0.0)
    if threshold != 0.0 or (slope != 0.0 and max_value is not None) or slope < 0:
        raise _refuse(layer, f"max_value={max_value}, negative_slope={slope}, "
                             f"threshold={threshold}")
    if slope:
        return np.where(x >= 0, x, np.float32(slope) * x)
    out = np.maximum(x, np.float32(0.0))
    return out if max_value is None else np.minimum(out, np.float32(max_value))


def _leaky_relu(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    slope = float(layer.config.get("negative_slope", layer.config.get("alpha", 0.3)))
    return np.where(x >= 0, x, np.float32(slope) * x)


def _softmax_layer(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    axis = layer.config.get("axis", -1)
    if axis not in (-1, [-1], x.ndim - 1, [x.ndim - 1]):
        raise _refuse(layer, f"axis={axis!r}")
    return _softmax(x.astype(np.float64))


def _rescaling(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    scale, offset = layer.config.get("scale", 1.0), layer.config.get("offset", 0.0)
    for name, value in (("scale", scale), ("offset", offset)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _refuse(layer, f"{name}={value!r}")
    return x * np.float32(scale) + np.float32(offset)  # in float32, as Keras casts both


def _reshape(layer: KerasLayer, w: Weights, x: np.ndarray) -> np.ndarray:
    target = layer.config.get("target_shape")
    if not isinstance(target, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in target
    ):
        raise _refuse(layer, f"target_shape={target!r}")
    target = list(target)
    if target.count(-1) == 1:  # resolved here: numpy cannot infer it for an empty batch
        rest = int(np.prod([t for t in target if t != -1]))
        target[target.index(-1)] = int(np.prod(x.shape[1:])) // max(rest, 1)
    return x.reshape(len(x), *target)  # C order on NHWC: Keras's order


_LAYERS: dict[str, Callable[[KerasLayer, Weights, np.ndarray], np.ndarray]] = {
    "InputLayer": lambda layer, w, x: x,
    "Conv2D": _conv2d,
    "Dense": _dense,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "ZeroPadding2D": _zero_padding2d,
    "Flatten": _flatten,
    "Dropout": _dropout,
    "BatchNormalization": _batch_normalization,
    "Activation": _activation_layer,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "Softmax": _softmax_layer,
    "Rescaling": _rescaling,
    "Reshape": _reshape,
}
SUPPORTED = tuple(_LAYERS)
