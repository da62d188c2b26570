"""Reshaping and rescaling: `Flatten` (C,H,W order left pending for the Dense that takes it, H,W,C
order made where anything else does), `Reshape` (in Keras's order), `ZeroPadding2D`,
`Rescaling` (x·scale + offset)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.registry import (
    Converted,
    Entry,
    In,
    Out,
    channels_last,
    choice,
    image,
    number,
    pair,
    register,
)


@register
class Flatten(Entry):
    """A Flatten of an (H, W, C) map flattens in C,H,W order in PyTorch, the order pending
    (Out.flat_from) for the Dense or BatchNormalization that takes it, which permute their own
    rows; where anything else takes it (the builder clears the pending order), it flattens in
    Keras's H,W,C order (`FlattenHWC`)."""

    kind = "Flatten"
    fields = ("data_format",)
    torch_classes = ("Flatten",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {} if len(inp.shape) > 1 else None

    @staticmethod
    def parse(cfg: Mapping, where: str) -> None:
        channels_last(cfg, where)

    @staticmethod
    def infer(p: None, ins: Sequence[In], where: str) -> Out:
        shape = ins[0].shape
        flat_from = shape if len(shape) == 3 else ins[0].flat_from
        return Out((math.prod(shape),), flat_from=flat_from)  # type: ignore[arg-type]

    @staticmethod
    def to_torch(p: None, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        from parity.layers.modules import FlattenHWC

        if len(ins[0].shape) == 3 and out.flat_from is None:
            return Converted([("flatten", FlattenHWC())])
        return Converted([("flatten", nn.Flatten())])

    @staticmethod
    def numpy(p: None, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0].reshape(len(xs[0]), -1)  # H,W,C order

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        if m.start_dim != 1 or m.end_dim != -1:
            raise UserError(f"{where}: only Flatten(start_dim=1, end_dim=-1) maps to Keras")
        return [("Flatten", {"data_format": "channels_last"}, [])]


@register
class Reshape(Entry):
    kind = "Reshape"
    fields = ("target_shape",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        size = math.prod(inp.shape)
        for side in (2, 3, 4):  # an (h, w, c) map when the size allows one
            if size % (side * side) == 0 and size > side * side:
                return {"target_shape": [side, side, -1]}
        return {"target_shape": [-1]}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> tuple[int, ...]:
        target = cfg.get("target_shape")
        if not isinstance(target, list | tuple) or not target or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in target
        ):
            raise UserError(f"{where}: target_shape={target!r} is not a list of ints")
        if any(t < 1 and t != -1 for t in target) or list(target).count(-1) > 1:
            raise UserError(f"{where}: target_shape={list(target)!r}: positive sizes and at "
                            f"most one -1")
        return tuple(target)

    @staticmethod
    def infer(p: tuple[int, ...], ins: Sequence[In], where: str) -> Out:
        size = math.prod(ins[0].shape)  # Python ints: no overflow, whatever the file says
        target = list(p)
        if -1 in target:
            rest = math.prod(t for t in target if t != -1)
            target[target.index(-1)] = size // rest if size % rest == 0 else 0
        if math.prod(target) != size or any(t < 1 for t in target):
            raise UserError(f"{where}: cannot reshape {ins[0].shape} to {p}")
        return Out(tuple(target))

    @staticmethod
    def to_torch(p: tuple[int, ...], ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import KerasReshape

        return Converted([("reshape", KerasReshape(out.shape, image_in=len(ins[0].shape) == 3))])

    @staticmethod
    def numpy(p: tuple[int, ...], w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        target = Reshape.infer(p, [In(tuple(xs[0].shape[1:]))], "").shape
        return xs[0].reshape(len(xs[0]), *target)  # C order on NHWC: Keras's order


@register
class ZeroPadding2D(Entry):
    kind = "ZeroPadding2D"
    fields = ("padding", "data_format")
    torch_classes = ("ZeroPad2d",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) != 3:
            return None
        return {"padding": [[int(v) for v in rng.integers(0, 3, 2)],
                            [int(v) for v in rng.integers(0, 3, 2)]]}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
        channels_last(cfg, where)
        padding = cfg.get("padding", 1)
        if (
            isinstance(padding, list | tuple)
            and len(padding) == 2
            and all(isinstance(p, list | tuple) for p in padding)
        ):
            return tuple(pair(p, "padding", where, minimum=0) for p in padding)  # type: ignore
        ph, pw = pair(padding, "padding", where, minimum=0)
        return (ph, ph), (pw, pw)

    @staticmethod
    def infer(p, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        (top, bottom), (left, right) = p
        return Out((h + top + bottom, w + left + right, c))

    @staticmethod
    def to_torch(p, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        (top, bottom), (left, right) = p
        return Converted([("pad", nn.ZeroPad2d((left, right, top, bottom)))])

    @staticmethod
    def numpy(p, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return np.pad(xs[0], ((0, 0), p[0], p[1], (0, 0)))

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        image(inp, where)
        left, right, top, bottom = m.padding
        cfg = {"padding": [[top, bottom], [left, right]], "data_format": "channels_last"}
        return [("ZeroPadding2D", cfg, [])]


@register
class Rescaling(Entry):
    kind = "Rescaling"
    fields = ("scale", "offset")
    passes_flatten = True

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) == 3 and rng.integers(2):  # per channel, as EfficientNet's ImageNet
            c = inp.shape[-1]
            return {"scale": [float(v) for v in rng.uniform(0.5, 2.0, c)],
                    "offset": float(rng.uniform(-1.0, 1.0))}
        return {"scale": float(rng.uniform(0.5, 2.0)), "offset": float(rng.uniform(-1.0, 1.0))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> tuple:
        """scale and offset: each a number, or a list of one per channel (the last axis)."""
        def value(key: str, default: float):
            v = cfg.get(key, default)
            if isinstance(v, list):
                if not 1 <= len(v) <= 1 << 16:
                    raise UserError(f"{where}: {key} has {len(v)} values")
                return tuple(number(x, key, where) for x in v)
            return number(v, key, where)

        return value("scale", 1.0), value("offset", 0.0)

    @staticmethod
    def infer(p, ins: Sequence[In], where: str) -> Out:
        c = ins[0].shape[-1]
        for key, v in zip(("scale", "offset"), p, strict=True):
            if isinstance(v, tuple) and (len(v) not in (1, c) or ins[0].flat_from):
                raise UserError(f"{where}: {len(v)} {key} values for an input of shape "
                                f"{ins[0].shape}; one, or one per channel, is supported")
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Rescale

        return Converted([("rescale", Rescale(*p))])

    @staticmethod
    def numpy(p, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        scale, offset = (np.asarray(v, dtype=np.float32) for v in p)
        return xs[0] * scale + offset  # in float32, as Keras casts both


def _crop_or_pad(value: object, where: str, what: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """An int, a pair, or a pair of (before, after) pairs, each at least 0 (Keras's forms)."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(
        isinstance(p, list | tuple) for p in value
    ):
        return tuple(pair(p, what, where, minimum=0) for p in value)  # type: ignore[return-value]
    ph, pw = pair(value, what, where, minimum=0)
    return (ph, ph), (pw, pw)


@register
class Cropping2D(Entry):
    kind = "Cropping2D"
    fields = ("cropping", "data_format")

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) != 3 or min(inp.shape[:2]) < 3:
            return None
        return {"cropping": [[int(v) for v in rng.integers(0, 2, 2)],
                             [int(v) for v in rng.integers(0, 2, 2)]]}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
        channels_last(cfg, where)
        return _crop_or_pad(cfg.get("cropping", 0), where, "cropping")

    @staticmethod
    def infer(p, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        (top, bottom), (left, right) = p
        if top + bottom >= h or left + right >= w:
            raise UserError(f"{where}: cropping {list(p)} leaves nothing of the {h}×{w} input")
        return Out((h - top - bottom, w - left - right, c))

    @staticmethod
    def to_torch(p, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Crop2d

        (top, bottom), (left, right) = p
        return Converted([("crop", Crop2d((left, right, top, bottom)))])

    @staticmethod
    def numpy(p, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        (top, bottom), (left, right) = p
        h, w_ = xs[0].shape[1:3]
        return xs[0][:, top : h - bottom, left : w_ - right]


@register
class UpSampling2D(Entry):
    """keras.layers.UpSampling2D: 'nearest' repeats each pixel (exact); 'bilinear' is
    TensorFlow's resize with half-pixel centres, which is PyTorch's align_corners=False."""

    kind = "UpSampling2D"
    fields = ("size", "data_format", "interpolation")

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) != 3 or max(inp.shape[:2]) > 16:
            return None
        return {"size": [int(v) for v in rng.integers(1, 4, 2)],
                "interpolation": str(rng.choice(["nearest", "bilinear"]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> tuple[tuple[int, int], str]:
        channels_last(cfg, where)
        size = pair(cfg.get("size", 2), "size", where)
        return size, choice(cfg, "interpolation", "nearest", ("nearest", "bilinear"), where)

    @staticmethod
    def infer(p, ins: Sequence[In], where: str) -> Out:
        h, w, c = image(ins[0], where)
        (sh, sw), _ = p
        return Out((h * sh, w * sw, c))

    @staticmethod
    def to_torch(p, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        size, mode = p
        if mode == "nearest":
            return Converted([("upsample", nn.Upsample(scale_factor=size, mode="nearest"))])
        return Converted([("upsample", nn.Upsample(size=out.shape[:2], mode="bilinear",
                                                   align_corners=False))])

    @staticmethod
    def numpy(p, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        (sh, sw), mode = p
        x = xs[0]
        if mode == "nearest":
            return x.repeat(sh, axis=1).repeat(sw, axis=2)
        return _bilinear(x.astype(np.float64), sh, sw).astype(np.float32)


def _bilinear(x: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """TensorFlow's bilinear resize by integer factors, half-pixel centres, no antialias."""
    for axis, s in ((1, sh), (2, sw)):
        n = x.shape[axis]
        pos = np.clip((np.arange(n * s) + 0.5) / s - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        x = np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac
    return x
