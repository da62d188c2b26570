"""Depthwise and separable convolutions: `DepthwiseConv2D` (a Conv2d with groups = channels)
and `SeparableConv2D` (that depthwise convolution without bias, then a 1×1 Conv2d), as
MobileNet, Xception and NASNet use them; 'same' padding as TensorFlow pads.

A depthwise kernel is (kh, kw, C, M) in Keras, M = depth_multiplier; TensorFlow's output
channel c·M + m is input channel c's m-th filter, which is the order of a PyTorch grouped
convolution's output channels: weight (C·M, 1, kh, kw)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from parity.layers.activations import activate, activation_modules
from parity.layers.conv import (
    MAX_WINDOW_ELEMENTS,
    out_hw,
    pad_nhwc,
    padding_of,
    parse_window,
    torch_padding,
    windows,
)
from parity.layers.registry import (
    Converted,
    Entry,
    In,
    Out,
    Param,
    Var,
    image,
    positive_int,
    register,
)
from parity.layers.transforms import CONV, IDENTITY, Transform


def depthwise(c: int, m: int) -> Transform:
    """Keras's depthwise kernel (kh, kw, C, M) ↔ PyTorch's grouped weight (C·M, 1, kh, kw)."""

    def to_torch(k: np.ndarray) -> np.ndarray:
        kh, kw = k.shape[:2]
        return k.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)

    def to_keras(w: np.ndarray) -> np.ndarray:
        kh, kw = w.shape[2:]
        return w.reshape(c, m, kh, kw).transpose(2, 3, 0, 1)

    return Transform("depthwise (kh,kw,C,M)→(C·M,1,kh,kw)", to_torch, to_keras)


@dataclass(frozen=True)
class DepthwiseParams:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: str
    use_bias: bool
    activation: str
    depth_multiplier: int
    filters: int | None = None  # SeparableConv2D's pointwise filters


def _sample(rng, inp: In, separable: bool) -> dict | None:
    if len(inp.shape) != 3 or min(inp.shape[:2]) < 3:
        return None
    strided = bool(rng.integers(2))
    # equal strides: TF's own depthwise kernel takes no other (its oneDNN one, on by default
    # only on CPUs with AVX-512 VNNI/AMX, does), so Keras cannot run (1, 2) on every machine
    stride = int(rng.integers(1, 3, 2)[0])
    cfg = {
        "kernel_size": [int(v) for v in rng.integers(1, 4, 2)],
        "strides": [stride, stride] if strided else [1, 1],
        "dilation_rate": [1, 1] if strided else [int(v) for v in rng.integers(1, 3, 2)],
        "padding": str(rng.choice(["valid", "same"])), "use_bias": bool(rng.integers(2)),
        "depth_multiplier": int(rng.integers(1, 3)),
        "activation": str(rng.choice(["linear", "relu", "swish"])),
    }
    if separable:
        cfg["filters"] = int(rng.integers(1, 6))
    return cfg


def _depthwise_numpy(p: DepthwiseParams, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The depthwise convolution in float64 numpy, NHWC, batch slices of bounded memory."""
    kernel = np.asarray(kernel, dtype=np.float64)  # kh, kw, C, M
    padded = pad_nhwc(x.astype(np.float64), padding_of(p.padding, x.shape[1], x.shape[2],
                                                        p.kernel, p.strides, p.dilation))
    c, m = kernel.shape[2:]
    per_image = -(-padded.shape[1] // p.strides[0]) * -(-padded.shape[2] // p.strides[1]) * c * (
        p.kernel[0] * p.kernel[1])
    step = max(1, MAX_WINDOW_ELEMENTS // per_image)
    parts = []
    for i in range(0, max(len(padded), 1), step):
        win = windows(padded[i : i + step], p.kernel, p.strides, p.dilation)  # N,OH,OW,C,kh,kw
        out = np.einsum("nijcab,abcm->nijcm", win, kernel)
        parts.append(out.reshape(*out.shape[:3], c * m))
    return np.concatenate(parts)


@register
class DepthwiseConv2D(Entry):
    kind = "DepthwiseConv2D"
    fields = ("kernel_size", "strides", "padding", "depth_multiplier", "data_format",
              "dilation_rate", "activation", "use_bias")
    initializers = {"kernel": "depthwise_initializer"}

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return _sample(rng, inp, separable=False)

    @staticmethod
    def parse(cfg: Mapping, where: str) -> DepthwiseParams:
        m = positive_int(cfg.get("depth_multiplier", 1), "depth_multiplier", where)
        return DepthwiseParams(depth_multiplier=m, **parse_window(cfg, where))

    @staticmethod
    def infer(p: DepthwiseParams, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        oh, ow = out_hw(h, w, p, where)
        variables = [Var("kernel", (*p.kernel, c, p.depth_multiplier))]
        if p.use_bias:
            variables.append(Var("bias", (c * p.depth_multiplier,)))
        return Out((oh, ow, c * p.depth_multiplier), tuple(variables))

    @staticmethod
    def to_torch(p: DepthwiseParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        h, w, c = ins[0].shape
        modules, pad = torch_padding(p, h, w)
        cm = c * p.depth_multiplier
        modules.append(("dwconv", nn.Conv2d(c, cm, p.kernel, p.strides, pad, p.dilation,
                                            groups=c, bias=p.use_bias)))
        i = len(modules) - 1
        params = [Param("kernel", i, "weight", (cm, 1, *p.kernel),
                        depthwise(c, p.depth_multiplier))]
        if p.use_bias:
            params.append(Param("bias", i, "bias", (cm,), IDENTITY))
        acts = activation_modules(p.activation, out.shape)
        return Converted([*modules, *acts], params, pre_activation=i if acts else None)

    @staticmethod
    def numpy(p: DepthwiseParams, w: Mapping[str, np.ndarray],
              xs: Sequence[np.ndarray]) -> np.ndarray:
        out = _depthwise_numpy(p, w["kernel"], xs[0])
        if p.use_bias:
            out += np.asarray(w["bias"], dtype=np.float64)
        return activate(p.activation, out.astype(np.float32))

    @staticmethod
    def linear(p: DepthwiseParams) -> DepthwiseParams:
        return replace(p, activation="linear")


@register
class SeparableConv2D(Entry):
    kind = "SeparableConv2D"
    fields = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
              "depth_multiplier", "activation", "use_bias")
    initializers = {"depthwise_kernel": "depthwise_initializer",
                    "pointwise_kernel": "pointwise_initializer"}

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return _sample(rng, inp, separable=True)

    @staticmethod
    def parse(cfg: Mapping, where: str) -> DepthwiseParams:
        return DepthwiseParams(
            depth_multiplier=positive_int(cfg.get("depth_multiplier", 1), "depth_multiplier",
                                          where),
            filters=positive_int(cfg.get("filters"), "filters", where),
            **parse_window(cfg, where))

    @staticmethod
    def infer(p: DepthwiseParams, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        oh, ow = out_hw(h, w, p, where)
        cm = c * p.depth_multiplier
        variables = [Var("depthwise_kernel", (*p.kernel, c, p.depth_multiplier)),
                     Var("pointwise_kernel", (1, 1, cm, p.filters))]
        if p.use_bias:
            variables.append(Var("bias", (p.filters,)))
        return Out((oh, ow, p.filters), tuple(variables))

    @staticmethod
    def to_torch(p: DepthwiseParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        h, w, c = ins[0].shape
        modules, pad = torch_padding(p, h, w)
        cm = c * p.depth_multiplier
        modules.append(("dwconv", nn.Conv2d(c, cm, p.kernel, p.strides, pad, p.dilation,
                                            groups=c, bias=False)))
        modules.append(("pwconv", nn.Conv2d(cm, p.filters, 1, bias=p.use_bias)))
        d, i = len(modules) - 2, len(modules) - 1
        params = [Param("depthwise_kernel", d, "weight", (cm, 1, *p.kernel),
                        depthwise(c, p.depth_multiplier)),
                  Param("pointwise_kernel", i, "weight", (p.filters, cm, 1, 1), CONV)]
        if p.use_bias:
            params.append(Param("bias", i, "bias", (p.filters,), IDENTITY))
        acts = activation_modules(p.activation, out.shape)
        return Converted([*modules, *acts], params, pre_activation=i if acts else None)

    @staticmethod
    def numpy(p: DepthwiseParams, w: Mapping[str, np.ndarray],
              xs: Sequence[np.ndarray]) -> np.ndarray:
        mid = _depthwise_numpy(p, w["depthwise_kernel"], xs[0])
        out = mid @ np.asarray(w["pointwise_kernel"], dtype=np.float64)[0, 0]
        if p.use_bias:
            out += np.asarray(w["bias"], dtype=np.float64)
        return activate(p.activation, out.astype(np.float32))

    @staticmethod
    def linear(p: DepthwiseParams) -> DepthwiseParams:
        return replace(p, activation="linear")
