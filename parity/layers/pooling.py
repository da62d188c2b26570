"""Pooling: `MaxPooling2D` and `AveragePooling2D` ('valid', and 'same' as TensorFlow pads it:
−inf for the max, the padding left out of the mean), `GlobalAveragePooling2D` and
`GlobalMaxPooling2D` (keepdims too)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.conv import pad_nhwc, padding_of, windows
from parity.layers.registry import (
    Converted,
    Entry,
    In,
    Out,
    channels_last,
    choice,
    flag,
    image,
    pair,
    register,
    same_pads,
)


@dataclass(frozen=True)
class PoolParams:
    size: tuple[int, int]
    strides: tuple[int, int]
    padding: str


def _parse_pool(cfg: Mapping, where: str) -> PoolParams:
    channels_last(cfg, where)
    size = pair(cfg.get("pool_size", 2), "pool_size", where)
    strides = size if cfg.get("strides") is None else pair(cfg.get("strides"), "strides", where)
    return PoolParams(size, strides, choice(cfg, "padding", "valid", ("valid", "same"), where))


def _infer_pool(p: PoolParams, ins: Sequence[In], where: str) -> Out:
    h, w, c = image(ins[0], where)
    (kh, kw), (sh, sw) = p.size, p.strides
    if p.padding == "valid":
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise UserError(f"{where}: the pool does not fit the {h}×{w} input")
        return Out((oh, ow, c))
    return Out((math.ceil(h / sh), math.ceil(w / sw), c))


def _pool_to_torch(p: PoolParams, ins: Sequence[In], mode: str) -> Converted:
    from torch import nn

    from parity.layers.modules import AvgPool2dSame

    h, w, _ = ins[0].shape
    k, s = p.size, p.strides
    if p.padding == "valid":
        pool = nn.MaxPool2d(k, s) if mode == "max" else nn.AvgPool2d(k, s)
        return Converted([("pool", pool)])
    (top, bottom), (left, right) = same_pads(h, k[0], s[0]), same_pads(w, k[1], s[1])
    symmetric = top == bottom and left == right
    if mode == "max":  # TF pads with -inf: padding never wins a max
        if symmetric:
            return Converted([("pool", nn.MaxPool2d(k, s, (top, left)))])
        pad = nn.ConstantPad2d((left, right, top, bottom), float("-inf"))
        return Converted([("pad", pad), ("pool", nn.MaxPool2d(k, s))])
    if symmetric:  # Keras leaves the padding out of the mean
        return Converted([("pool", nn.AvgPool2d(k, s, (top, left), count_include_pad=False))])
    return Converted([("pool", AvgPool2dSame(k, s, (left, right, top, bottom)))])


def _pool_numpy(p: PoolParams, x: np.ndarray, mode: str) -> np.ndarray:
    pads = padding_of(p.padding, x.shape[1], x.shape[2], p.size, p.strides)
    if mode == "max":  # TF pads with -inf: padding never wins a max
        return windows(pad_nhwc(x, pads, -np.inf), p.size, p.strides).max(axis=(4, 5))
    total = windows(pad_nhwc(x, pads).astype(np.float64), p.size, p.strides).sum(axis=(4, 5))
    ones = pad_nhwc(np.ones((1, *x.shape[1:3], 1)), pads)  # the mean leaves the padding out
    return (total / windows(ones, p.size, p.strides).sum(axis=(4, 5))).astype(np.float32)


def _pool_from_torch(m, inp: In, where: str, cls: str) -> list:
    h, w, _ = image(inp, where)

    def pair_of(v) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

    k = pair_of(m.kernel_size)
    s = pair_of(m.stride if m.stride is not None else m.kernel_size)
    p = pair_of(m.padding)
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
    cfg = {"pool_size": list(k), "strides": list(s), "padding": padding,
           "data_format": "channels_last"}
    return [(cls, cfg, [])]


_POOL_FIELDS = ("pool_size", "strides", "padding", "data_format")


def _sample_pool(rng, inp: In) -> dict | None:
    if len(inp.shape) != 3 or min(inp.shape[:2]) < 3:
        return None
    return {"pool_size": [int(v) for v in rng.integers(1, 4, 2)],
            "strides": [int(v) for v in rng.integers(1, 3, 2)],
            "padding": str(rng.choice(["valid", "same"]))}


@register
class MaxPooling2D(Entry):
    kind = "MaxPooling2D"
    fields = _POOL_FIELDS
    torch_classes = ("MaxPool2d",)
    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return _sample_pool(rng, inp)

    parse = staticmethod(_parse_pool)
    infer = staticmethod(_infer_pool)

    @staticmethod
    def to_torch(p: PoolParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        return _pool_to_torch(p, ins, "max")

    @staticmethod
    def numpy(p: PoolParams, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return _pool_numpy(p, xs[0], "max")

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        return _pool_from_torch(m, inp, where, "MaxPooling2D")


@register
class AveragePooling2D(Entry):
    kind = "AveragePooling2D"
    fields = _POOL_FIELDS
    torch_classes = ("AvgPool2d",)
    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return _sample_pool(rng, inp)

    parse = staticmethod(_parse_pool)
    infer = staticmethod(_infer_pool)

    @staticmethod
    def to_torch(p: PoolParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        return _pool_to_torch(p, ins, "avg")

    @staticmethod
    def numpy(p: PoolParams, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return _pool_numpy(p, xs[0], "avg")

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        return _pool_from_torch(m, inp, where, "AveragePooling2D")


def _parse_global(cfg: Mapping, where: str) -> bool:
    channels_last(cfg, where)
    return flag(cfg, "keepdims", False, where)


def _infer_global(keepdims: bool, ins: Sequence[In], where: str) -> Out:
    _, _, c = image(ins[0], where)
    return Out((1, 1, c) if keepdims else (c,))


def _global_from_torch(m, inp: In, where: str) -> list:
    image(inp, where)
    size = m.output_size
    if (size, size) != (1, 1) and tuple(size if isinstance(size, tuple) else (size,)) != (1, 1):
        raise UserError(f"{where}: only output_size 1 maps to Keras (a global pooling)")
    cls = ("GlobalAveragePooling2D" if type(m).__name__ == "AdaptiveAvgPool2d"
           else "GlobalMaxPooling2D")
    return [(cls, {"data_format": "channels_last", "keepdims": True}, [])]


@register
class GlobalAveragePooling2D(Entry):
    kind = "GlobalAveragePooling2D"
    fields = ("data_format", "keepdims")
    torch_classes = ("AdaptiveAvgPool2d",)
    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"keepdims": bool(rng.integers(2))} if len(inp.shape) == 3 else None

    parse = staticmethod(_parse_global)
    infer = staticmethod(_infer_global)
    from_torch = staticmethod(_global_from_torch)

    @staticmethod
    def to_torch(keepdims: bool, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import GlobalPool2d

        return Converted([("gap", GlobalPool2d("avg", keepdims))])

    @staticmethod
    def numpy(keepdims: bool, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0].astype(np.float64).mean(axis=(1, 2), keepdims=keepdims).astype(np.float32)


@register
class GlobalMaxPooling2D(Entry):
    kind = "GlobalMaxPooling2D"
    fields = ("data_format", "keepdims")
    torch_classes = ("AdaptiveMaxPool2d",)
    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"keepdims": bool(rng.integers(2))} if len(inp.shape) == 3 else None

    parse = staticmethod(_parse_global)
    infer = staticmethod(_infer_global)
    from_torch = staticmethod(_global_from_torch)

    @staticmethod
    def to_torch(keepdims: bool, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import GlobalPool2d

        return Converted([("gmp", GlobalPool2d("max", keepdims))])

    @staticmethod
    def numpy(keepdims: bool, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0].max(axis=(1, 2), keepdims=keepdims)
