"""The converters: one function per Keras layer class, registered with `@converter`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError
from parity.layers.modules import (
    AvgPool2dSame,
    FlattenHWC,
    GlobalPool2d,
    KerasReshape,
    Rescale,
)
from parity.layers.registry import (
    Chain,
    Converted,
    Fixed,
    Var,
    activation,
    channels_last,
    converter,
    flag,
    flat_dense,
    flat_vector,
    image_hwc,
    number,
    pair,
    positive_int,
    same_pads,
)
from parity.mapping import BIAS, CONV, DENSE

# --- the converters ---------------------------------------------------------------------------


@converter("InputLayer")
def input_layer(cfg: Mapping, chain: Chain, where: str) -> Converted:
    return Converted([], chain.shape)


@converter("Conv2D")
def conv2d(cfg: Mapping, chain: Chain, where: str) -> Converted:
    channels_last(cfg, where)
    h, w, c = image_hwc(chain, where)
    filters = positive_int(cfg.get("filters"), "filters", where)
    groups = positive_int(cfg.get("groups", 1) or 1, "groups", where)
    if c % groups or filters % groups:
        raise UserError(f"{where}: filters={filters!r}, groups={groups!r} do not fit {c} channels")
    kh, kw = pair(cfg.get("kernel_size"), "kernel_size", where)
    sh, sw = pair(cfg.get("strides", 1), "strides", where)
    dh, dw = pair(cfg.get("dilation_rate", 1), "dilation_rate", where)
    if (sh > 1 or sw > 1) and (dh > 1 or dw > 1):
        raise UserError(f"{where}: strides > 1 with dilation_rate > 1 is not supported by Keras")
    padding = cfg.get("padding", "valid")
    use_bias = flag(cfg, "use_bias", True, where)
    modules: list[tuple[str, nn.Module]] = []
    if padding == "valid":
        pad = (0, 0)
        oh = (h - dh * (kh - 1) - 1) // sh + 1
        ow = (w - dw * (kw - 1) - 1) // sw + 1
    elif padding == "same":
        (top, bottom), (left, right) = same_pads(h, kh, sh, dh), same_pads(w, kw, sw, dw)
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
    channels_last(cfg, where)
    h, w, c = image_hwc(chain, where)
    kh, kw = pair(cfg.get("pool_size", 2), "pool_size", where)
    strides = cfg.get("strides")
    sh, sw = (kh, kw) if strides is None else pair(strides, "strides", where)
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
    (top, bottom), (left, right) = same_pads(h, kh, sh), same_pads(w, kw, sw)
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
    channels_last(cfg, where)
    h, w, c = image_hwc(chain, where)
    keepdims = flag(cfg, "keepdims", False, where)
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
    channels_last(cfg, where)
    h, w, c = image_hwc(chain, where)
    padding = cfg.get("padding", 1)
    if (
        isinstance(padding, list | tuple)
        and len(padding) == 2
        and all(isinstance(p, list | tuple) for p in padding)
    ):
        (top, bottom), (left, right) = (pair(p, "padding", where, minimum=0) for p in padding)
    else:
        (top, bottom), (left, right) = [(p, p) for p in pair(padding, "padding", where, 0)]
    pad = nn.ZeroPad2d((left, right, top, bottom))
    return Converted([("pad", pad)], (h + top + bottom, w + left + right, c))


@converter("Flatten")
def flatten(cfg: Mapping, chain: Chain, where: str) -> Converted:
    channels_last(cfg, where)
    size = math.prod(chain.shape)
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
    units = positive_int(cfg.get("units"), "units", where)
    use_bias = flag(cfg, "use_bias", True, where)
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
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < 1:
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
    center, scale = flag(cfg, "center", True, where), flag(cfg, "scale", True, where)
    momentum = number(cfg.get("momentum", 0.99), "momentum", where, low=0.0, high=1.0)
    epsilon = number(cfg.get("epsilon", 1e-3), "epsilon", where, low=0.0, low_open=True)
    module = bn(c, eps=epsilon, momentum=round(1.0 - momentum, 12), affine=center or scale)
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
    if max_value is not None:  # 0 would make the layer a constant zero (torch's Hardtanh asserts)
        max_value = number(max_value, "max_value", where, low=0.0, low_open=True)
    slope = number(cfg.get("negative_slope") or 0.0, "negative_slope", where)
    threshold = number(cfg.get("threshold") or 0.0, "threshold", where)
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
    slope = number(cfg.get("negative_slope", cfg.get("alpha", 0.3)), "negative_slope", where)
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
    scale = number(cfg.get("scale", 1.0), "scale", where)
    offset = number(cfg.get("offset", 0.0), "offset", where)
    return Converted([("rescale", Rescale(scale, offset))], chain.shape, flat_from=chain.flat_from)


@converter("Reshape")
def reshape(cfg: Mapping, chain: Chain, where: str) -> Converted:
    target = cfg.get("target_shape")
    if not isinstance(target, list | tuple) or not target or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in target
    ):
        raise UserError(f"{where}: target_shape={target!r} is not a list of ints")
    size = math.prod(chain.shape)  # Python ints: no overflow, whatever the file says
    target = list(target)
    if target.count(-1) == 1:
        rest = math.prod(t for t in target if t != -1)
        target[target.index(-1)] = size // rest if rest > 0 else 0
    if math.prod(target) != size or any(t < 1 for t in target):
        raise UserError(f"{where}: cannot reshape {chain.shape} to {tuple(cfg['target_shape'])}")
    module = KerasReshape(tuple(target), image_in=len(chain.shape) == 3)
    return Converted([("reshape", module)], tuple(target))

