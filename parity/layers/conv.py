"""Convolutions: `Conv2D` (any filters, kernel, strides, dilation, groups, bias, activation;
'valid', and 'same' with TensorFlow's extra bottom/right pixel as an explicit `ZeroPad2d`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fashion_cnn.errors import UserError
from parity.layers.activations import activate, activation_modules, activation_name
from parity.layers.registry import (
    Converted,
    Entry,
    In,
    Out,
    Param,
    Var,
    channels_last,
    choice,
    flag,
    image,
    pair,
    positive_int,
    register,
    same_pads,
)
from parity.layers.transforms import CONV, CONV_TRANSPOSE, IDENTITY

# Elements of a convolution's window matrix (N·OH·OW × kh·kw·C, float64) the numpy reference
# holds at once: the batch is cut into slices below this (128 MiB), whatever the caller passes.
MAX_WINDOW_ELEMENTS = 1 << 24


def padding_of(padding: str, h: int, w: int, k, s, d=(1, 1)) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) of a 'valid' or 'same' layer, as TensorFlow pads."""
    if padding == "valid":
        return (0, 0), (0, 0)
    return same_pads(h, k[0], s[0], d[0]), same_pads(w, k[1], s[1], d[1])


def windows(x: np.ndarray, k, s, d=(1, 1)) -> np.ndarray:
    """(N, OH, OW, C, kh, kw) view of the (already padded) NHWC map's windows."""
    span = ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)
    if x.shape[1] < span[0] or x.shape[2] < span[1]:
        raise ValueError(f"a {span} window does not fit the {x.shape[1:3]} input")
    view = sliding_window_view(x, span, axis=(1, 2))
    return view[:, :: s[0], :: s[1], :, :: d[0], :: d[1]]


def pad_nhwc(x: np.ndarray, pads, value: float = 0.0) -> np.ndarray:
    if not any(pads[0] + pads[1]):
        return x
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def out_hw(h: int, w: int, p, where: str) -> tuple[int, int]:
    """The output's height and width of a convolution or pooling window `p` (kernel, strides,
    dilation, padding) on an h×w map, as Keras computes them; refused where it does not fit."""
    (kh, kw), (sh, sw), (dh, dw) = p.kernel, p.strides, p.dilation
    if p.padding == "valid":
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    else:
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
    if oh < 1 or ow < 1:
        raise UserError(f"{where}: the kernel does not fit the {h}×{w} input")
    return oh, ow


def torch_padding(p, h: int, w: int) -> tuple[list, tuple[int, int]]:
    """A convolution's padding in PyTorch: the Conv2d's own (top, left) where TensorFlow pads
    symmetrically, else an explicit ZeroPad2d before it (TF pads the extra pixel at the
    bottom/right; torch's 'same' cannot stride)."""
    from torch import nn

    (top, bottom), (left, right) = padding_of(p.padding, h, w, p.kernel, p.strides, p.dilation)
    if top == bottom and left == right:
        return [], (top, left)
    return [("pad", nn.ZeroPad2d((left, right, top, bottom)))], (0, 0)


def parse_window(cfg: Mapping, where: str) -> dict:
    """The fields every convolution shares, checked: kernel_size, strides, dilation_rate,
    padding, use_bias, activation (Keras refuses strides > 1 with dilation > 1)."""
    channels_last(cfg, where)
    found = {
        "kernel": pair(cfg.get("kernel_size"), "kernel_size", where),
        "strides": pair(cfg.get("strides", 1), "strides", where),
        "dilation": pair(cfg.get("dilation_rate", 1), "dilation_rate", where),
        "padding": choice(cfg, "padding", "valid", ("valid", "same"), where),
        "use_bias": flag(cfg, "use_bias", True, where),
        "activation": activation_name(cfg.get("activation", "linear"), where),
    }
    if max(found["strides"]) > 1 and max(found["dilation"]) > 1:
        raise UserError(f"{where}: strides > 1 with dilation_rate > 1 is not supported by Keras")
    return found


@dataclass(frozen=True)
class ConvParams:
    filters: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding: str
    use_bias: bool
    activation: str


@register
class Conv2D(Entry):
    kind = "Conv2D"
    fields = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
              "groups", "activation", "use_bias")
    torch_classes = ("Conv2d",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) != 3 or min(inp.shape[:2]) < 3:
            return None
        c = inp.shape[2]
        groups = int(rng.choice([g for g in (1, 2) if c % g == 0]))
        k = [int(v) for v in rng.integers(1, 4, 2)]
        strided = bool(rng.integers(2))
        return {
            "filters": groups * int(rng.integers(1, 5)), "kernel_size": k,
            "strides": [int(v) for v in rng.integers(1, 3, 2)] if strided else [1, 1],
            "dilation_rate": [1, 1] if strided else [int(v) for v in rng.integers(1, 3, 2)],
            "padding": str(rng.choice(["valid", "same"])), "groups": groups,
            "use_bias": bool(rng.integers(2)),
            "activation": str(rng.choice(["linear", "relu", "tanh", "gelu"])),
        }

    @staticmethod
    def parse(cfg: Mapping, where: str) -> ConvParams:
        window = parse_window(cfg, where)
        return ConvParams(filters=positive_int(cfg.get("filters"), "filters", where),
                          groups=positive_int(cfg.get("groups", 1) or 1, "groups", where),
                          **window)

    @staticmethod
    def infer(p: ConvParams, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        if c % p.groups or p.filters % p.groups:
            raise UserError(f"{where}: filters={p.filters}, groups={p.groups} do not fit {c} "
                            f"channels")
        (kh, kw) = p.kernel
        oh, ow = out_hw(h, w, p, where)
        variables = [Var("kernel", (kh, kw, c // p.groups, p.filters))]
        if p.use_bias:
            variables.append(Var("bias", (p.filters,)))
        return Out((oh, ow, p.filters), tuple(variables))

    @staticmethod
    def to_torch(p: ConvParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        h, w, c = ins[0].shape
        modules, pad = torch_padding(p, h, w)
        conv = nn.Conv2d(c, p.filters, p.kernel, p.strides, pad, p.dilation, p.groups,
                         bias=p.use_bias)
        modules.append(("conv", conv))
        i = len(modules) - 1
        params = [Param("kernel", i, "weight", (p.filters, c // p.groups, *p.kernel), CONV)]
        if p.use_bias:
            params.append(Param("bias", i, "bias", (p.filters,), IDENTITY))
        acts = activation_modules(p.activation, out.shape)
        return Converted([*modules, *acts], params, pre_activation=i if acts else None)

    @staticmethod
    def numpy(p: ConvParams, w: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        x = xs[0]
        kernel = np.asarray(w["kernel"], dtype=np.float64)  # kh, kw, C/groups, F
        c, filters = x.shape[3], kernel.shape[3]
        padded = pad_nhwc(x.astype(np.float64),
                          padding_of(p.padding, x.shape[1], x.shape[2], p.kernel, p.strides,
                                     p.dilation))
        k, s = p.kernel, p.strides
        per_image = -(-padded.shape[1] // s[0]) * -(-padded.shape[2] // s[1]) * c * k[0] * k[1]
        step = max(1, MAX_WINDOW_ELEMENTS // per_image)
        cg, fg = c // p.groups, filters // p.groups
        parts = []
        for i in range(0, max(len(padded), 1), step):  # batch slices: bounded memory
            win = windows(padded[i : i + step], k, s, p.dilation)  # N, OH, OW, C, kh, kw
            groups_out = [  # each group: its channels × its filters
                np.tensordot(win[:, :, :, g * cg : (g + 1) * cg],
                             kernel[..., g * fg : (g + 1) * fg], axes=([4, 5, 3], [0, 1, 2]))
                for g in range(p.groups)
            ]
            parts.append(np.concatenate(groups_out, axis=3))
        out = np.concatenate(parts)
        if p.use_bias:
            out += np.asarray(w["bias"], dtype=np.float64)
        return activate(p.activation, out.astype(np.float32))

    @staticmethod
    def linear(p: ConvParams) -> ConvParams:
        return replace(p, activation="linear")

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        h, w, c = image(inp, where)
        if m.padding_mode != "zeros":
            raise UserError(f"{where}: padding_mode={m.padding_mode!r}; only 'zeros' maps to "
                            f"Keras")
        (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        layers: list = []
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
            layers.append(("ZeroPadding2D",
                           {"padding": [[ph, ph], [pw, pw]], "data_format": "channels_last"}, []))
            padding = "valid"
        cfg = {
            "filters": m.out_channels, "kernel_size": [kh, kw], "strides": [sh, sw],
            "padding": padding, "data_format": "channels_last", "dilation_rate": [dh, dw],
            "groups": m.groups, "activation": "linear", "use_bias": m.bias is not None,
        }
        vars_ = [("kernel", CONV.to_keras(_np(m.weight)))]
        if m.bias is not None:
            vars_.append(("bias", _np(m.bias)))
        return [*layers, ("Conv2D", cfg, vars_)]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class TransposeParams:
    filters: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: str
    use_bias: bool
    activation: str
    output_padding: tuple[int, int] | None


def transpose_geometry(size: int, k: int, s: int, d: int, padding: str,
                       output_padding: int | None) -> tuple[int, int, int]:
    """One axis of Keras's Conv2DTranspose as TensorFlow computes it: (output length L, the
    first position c0 of the full transposed convolution that it keeps, and how much longer
    (> 0) or shorter (< 0) L is than what a ConvTranspose2d with padding c0 gives). The full
    output has (size − 1)·s + k_eff positions; TF keeps [c0, c0 + L), zeros past its end."""
    k_eff = (k - 1) * d + 1
    if padding == "valid":
        length = (size - 1) * s + k_eff + (max(k_eff, s) - k_eff if output_padding is None
                                          else output_padding)
        c0 = 0
    else:
        length = size * s if output_padding is None else (size - 1) * s + k_eff % 2 + (
            output_padding)
        c0 = max((size - 1) * s + k_eff - length, 0) // 2
    full = (size - 1) * s + k_eff
    return length, c0, length - (full - 2 * c0)


@register
class Conv2DTranspose(Entry):
    """keras.layers.Conv2DTranspose: a ConvTranspose2d (Keras's kernel (kh, kw, filters, C) is
    its weight (C, filters, kh, kw), the conv transform), its padding c0 and output_padding
    where they give TensorFlow's output, and a crop of the end where TF's is shorter."""

    kind = "Conv2DTranspose"
    fields = ("filters", "kernel_size", "strides", "padding", "output_padding", "data_format",
              "dilation_rate", "activation", "use_bias")

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) != 3 or max(inp.shape[:2]) > 12:
            return None
        s = [int(v) for v in rng.integers(1, 4, 2)]
        return {"filters": int(rng.integers(1, 5)), "kernel_size": [int(v) for v in
                                                                    rng.integers(1, 5, 2)],
                "strides": s, "padding": str(rng.choice(["valid", "same"])),
                "use_bias": bool(rng.integers(2)),
                "activation": str(rng.choice(["linear", "relu"]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> TransposeParams:
        window = parse_window(cfg, where)
        if max(window["dilation"]) > 1:
            raise UserError(f"{where}: a dilated Conv2DTranspose is not supported (TensorFlow's "
                            f"CPU kernels do not run it)")
        op = cfg.get("output_padding")
        return TransposeParams(filters=positive_int(cfg.get("filters"), "filters", where),
                               output_padding=None if op is None else pair(
                                   op, "output_padding", where, minimum=0), **window)

    @staticmethod
    def _axes(p: TransposeParams, h: int, w: int) -> list[tuple[int, int, int]]:
        ops = p.output_padding or (None, None)
        return [transpose_geometry(n, p.kernel[a], p.strides[a], p.dilation[a], p.padding,
                                   ops[a]) for a, n in enumerate((h, w))]

    @staticmethod
    def infer(p: TransposeParams, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        axes = Conv2DTranspose._axes(p, h, w)
        if any(length < 1 or extra >= max(s, 1) for (length, _, extra), s in
               zip(axes, p.strides, strict=True)):
            raise UserError(f"{where}: output_padding={p.output_padding} is not supported")
        variables = [Var("kernel", (*p.kernel, p.filters, c))]
        if p.use_bias:
            variables.append(Var("bias", (p.filters,)))
        return Out((axes[0][0], axes[1][0], p.filters), tuple(variables))

    @staticmethod
    def to_torch(p: TransposeParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        from parity.layers.modules import Crop2d

        h, w, c = ins[0].shape
        (_, ch, eh), (_, cw, ew) = Conv2DTranspose._axes(p, h, w)
        conv = nn.ConvTranspose2d(c, p.filters, p.kernel, p.strides, (ch, cw),
                                  output_padding=(max(eh, 0), max(ew, 0)), bias=p.use_bias,
                                  dilation=p.dilation)
        modules: list = [("deconv", conv)]
        if eh < 0 or ew < 0:  # TF keeps less of the end than padding c0 leaves
            modules.append(("crop", Crop2d((0, max(-ew, 0), 0, max(-eh, 0)))))
        params = [Param("kernel", 0, "weight", (c, p.filters, *p.kernel), CONV_TRANSPOSE)]
        if p.use_bias:
            params.append(Param("bias", 0, "bias", (p.filters,), IDENTITY))
        acts = activation_modules(p.activation, out.shape)
        last = len(modules) - 1
        return Converted([*modules, *acts], params, pre_activation=last if acts else None)

    @staticmethod
    def numpy(p: TransposeParams, w: Mapping[str, np.ndarray],
              xs: Sequence[np.ndarray]) -> np.ndarray:
        x = xs[0].astype(np.float64)
        n, h, w_, _ = x.shape
        kernel = np.asarray(w["kernel"], dtype=np.float64)  # kh, kw, F, C
        (kh, kw), (sh, sw), (dh, dw) = p.kernel, p.strides, p.dilation
        full = np.zeros((n, (h - 1) * sh + (kh - 1) * dh + 1, (w_ - 1) * sw + (kw - 1) * dw + 1,
                         p.filters))
        for i in range(kh):
            for j in range(kw):
                full[:, i * dh : i * dh + (h - 1) * sh + 1 : sh,
                     j * dw : j * dw + (w_ - 1) * sw + 1 : sw] += x @ kernel[i, j].T
        (lh, ch, _), (lw, cw, _) = Conv2DTranspose._axes(p, h, w_)
        full = np.pad(full, ((0, 0), (0, max(0, ch + lh - full.shape[1])),
                             (0, max(0, cw + lw - full.shape[2])), (0, 0)))
        out = full[:, ch : ch + lh, cw : cw + lw]
        if p.use_bias:
            out = out + np.asarray(w["bias"], dtype=np.float64)
        return activate(p.activation, out.astype(np.float32))

    @staticmethod
    def linear(p: TransposeParams) -> TransposeParams:
        return replace(p, activation="linear")
