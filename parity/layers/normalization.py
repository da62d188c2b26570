"""Normalization: `BatchNormalization` on the channel axis (BatchNorm2d on an (H, W, C) map,
BatchNorm1d on a vector, the vector permuted when a Flatten's order is pending), `center` and
`scale` off, Keras's epsilon and momentum (m ↔ PyTorch's 1 − m). Inference is exact; in
training PyTorch updates its running variance with the unbiased batch variance, Keras with the
biased one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.registry import (
    Converted,
    Entry,
    Fixed,
    In,
    Out,
    Param,
    Var,
    flag,
    number,
    register,
)
from parity.layers.transforms import IDENTITY, flat_vector


@dataclass(frozen=True)
class BNParams:
    axis: int
    momentum: float
    epsilon: float
    center: bool
    scale: bool


@register
class BatchNormalization(Entry):
    kind = "BatchNormalization"
    fields = ("axis", "momentum", "epsilon", "center", "scale")
    passes_flatten = True
    torch_classes = ("BatchNorm1d", "BatchNorm2d")

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        if len(inp.shape) not in (1, 3):
            return None
        return {"momentum": float(rng.choice([0.99, 0.9])),
                "epsilon": float(rng.choice([1e-3, 1.001e-5, 0.01])),
                "center": bool(rng.integers(2)), "scale": bool(rng.integers(2))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> BNParams:
        axis = cfg.get("axis", -1)
        if isinstance(axis, list) and len(axis) == 1:
            axis = axis[0]
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise UserError(f"{where}: axis={axis!r}; only the channel axis -1 is supported")
        if cfg.get("renorm") or cfg.get("synchronized"):
            raise UserError(f"{where}: renorm and synchronized batch normalization are not "
                            f"supported")
        return BNParams(
            axis,
            number(cfg.get("momentum", 0.99), "momentum", where, low=0.0, high=1.0),
            number(cfg.get("epsilon", 1e-3), "epsilon", where, low=0.0, low_open=True),
            flag(cfg, "center", True, where),
            flag(cfg, "scale", True, where),
        )

    @staticmethod
    def infer(p: BNParams, ins: Sequence[In], where: str) -> Out:
        shape = ins[0].shape
        if p.axis not in (-1, len(shape)):
            raise UserError(f"{where}: axis={p.axis!r}; only the channel axis -1 is supported")
        if len(shape) not in (1, 3):
            raise UserError(f"{where}: on an input of shape {shape}: only after a Conv2D "
                            f"(H, W, C) or a Dense (features,) is supported")
        c = shape[-1]
        variables = [Var(name, (c,)) for name, present in (("gamma", p.scale),
                                                           ("beta", p.center)) if present]
        variables += [Var("moving_mean", (c,)), Var("moving_variance", (c,))]
        return Out(shape, tuple(variables), ins[0].flat_from)

    @staticmethod
    def to_torch(p: BNParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        import torch
        from torch import nn

        shape = ins[0].shape
        c = shape[-1]
        bn = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(
            c, eps=p.epsilon, momentum=round(1.0 - p.momentum, 12), affine=p.center or p.scale
        )
        vec = flat_vector(*ins[0].flat_from) if ins[0].flat_from else IDENTITY
        params, fixed = [], []
        for keras, param, present, default in (("gamma", "weight", p.scale, 1.0),
                                               ("beta", "bias", p.center, 0.0)):
            if present:
                params.append(Param(keras, 0, param, (c,), vec))
            elif p.center or p.scale:  # affine with this half fixed
                fixed.append(Fixed(0, param, np.full(c, default, np.float32), required=True))
                with torch.no_grad():
                    getattr(bn, param).fill_(default)
                    getattr(bn, param).requires_grad_(False)
        params += [Param("moving_mean", 0, "running_mean", (c,), vec),
                   Param("moving_variance", 0, "running_var", (c,), vec)]
        fixed.append(Fixed(0, "num_batches_tracked", np.array(0, np.int64), required=False))
        return Converted([("bn", bn)], params, fixed)

    @staticmethod
    def numpy(p: BNParams, w: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        def var(name: str) -> np.ndarray:
            return np.asarray(w[name], dtype=np.float64)

        # tf.nn.batch_normalization: inv = gamma / sqrt(var + eps); x·inv + (beta - mean·inv)
        inv = 1.0 / np.sqrt(var("moving_variance") + p.epsilon)
        if p.scale:
            inv = inv * var("gamma")
        shift = -var("moving_mean") * inv
        if p.center:
            shift = shift + var("beta")
        return (xs[0].astype(np.float64) * inv + shift).astype(np.float32)

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        if type(m).__name__ == "BatchNorm2d" and len(inp.shape) != 3:
            raise UserError(f"{where}: takes an image, but its input has shape {inp.shape}")
        if type(m).__name__ == "BatchNorm1d" and len(inp.shape) != 1:
            raise UserError(f"{where}: a BatchNorm1d on {inp.shape}; only on (features,) inputs")
        if m.running_mean is None or m.running_var is None:
            raise UserError(f"{where}: track_running_stats=False has no Keras counterpart")
        vec = flat_vector(*inp.flat_from) if inp.flat_from else IDENTITY

        def prep(t) -> np.ndarray:
            return vec.to_keras(t.detach().cpu().numpy().astype(np.float32))

        vars_ = [("gamma", prep(m.weight)), ("beta", prep(m.bias))] if m.affine else []
        vars_ += [("moving_mean", prep(m.running_mean)),
                  ("moving_variance", prep(m.running_var))]
        momentum = 0.1 if m.momentum is None else m.momentum
        cfg = {"axis": -1, "momentum": round(1.0 - momentum, 12), "epsilon": m.eps,
               "center": m.affine, "scale": m.affine}
        return [("BatchNormalization", cfg, vars_)]


def _channel_axis(cfg: Mapping, where: str) -> None:
    """LayerNormalization's and Normalization's axis: the last one only (-1 or [-1])."""
    axis = cfg.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis != -1 or isinstance(axis, bool):
        raise UserError(f"{where}: axis={cfg.get('axis')!r}; only the last axis (-1) is "
                        f"supported")


@dataclass(frozen=True)
class LNParams:
    epsilon: float
    center: bool
    scale: bool


@register
class LayerNormalization(Entry):
    """Over the last axis: the channels of an (H, W, C) map, the features of a vector."""

    kind = "LayerNormalization"
    fields = ("axis", "epsilon", "center", "scale", "rms_scaling")

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        # Over a few channels with a tiny epsilon the layer is ill-conditioned (its gain is
        # 1/√(variance + ε) where the channels nearly agree): float32 itself, in either
        # framework, is then ~1e-4 from the exact value, past the check's bound.
        c = inp.shape[-1]
        if len(inp.shape) not in (1, 3) or c < 4:
            return None
        return {"epsilon": float(rng.choice([1e-3, 1e-6] if c >= 16 else [1e-3])),
                "center": bool(rng.integers(2)), "scale": bool(rng.integers(2))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> LNParams:
        _channel_axis(cfg, where)
        if cfg.get("rms_scaling"):
            raise UserError(f"{where}: rms_scaling is not supported")
        return LNParams(number(cfg.get("epsilon", 1e-3), "epsilon", where, low=0.0,
                               low_open=True),
                        flag(cfg, "center", True, where), flag(cfg, "scale", True, where))

    @staticmethod
    def infer(p: LNParams, ins: Sequence[In], where: str) -> Out:
        shape = ins[0].shape
        if len(shape) not in (1, 3):
            raise UserError(f"{where}: on an input of shape {shape}: only (H, W, C) maps and "
                            f"vectors are supported")
        c = shape[-1]
        variables = [Var(name, (c,)) for name, present in (("gamma", p.scale),
                                                           ("beta", p.center)) if present]
        return Out(shape, tuple(variables))

    @staticmethod
    def to_torch(p: LNParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import ChannelLayerNorm

        c = ins[0].shape[-1]
        params = [Param(k, 0, t, (c,), IDENTITY) for k, t, present in
                  (("gamma", "weight", p.scale), ("beta", "bias", p.center)) if present]
        return Converted([("ln", ChannelLayerNorm(c, p.epsilon, p.scale, p.center))], params)

    @staticmethod
    def numpy(p: LNParams, w: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        x = xs[0].astype(np.float64)
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        out = (x - mean) / np.sqrt(var + p.epsilon)
        if p.scale:
            out = out * np.asarray(w["gamma"], dtype=np.float64)
        if p.center:
            out = out + np.asarray(w["beta"], dtype=np.float64)
        return out.astype(np.float32)


@dataclass(frozen=True)
class NormParams:
    mean: tuple[float, ...] | None  # None: adapted state, held as weights
    variance: tuple[float, ...] | None
    invert: bool
    axis: int


def _per_channel(value: object, what: str, where: str) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= 1 << 16:
        raise UserError(f"{where}: {what} has {len(values)} values")
    return tuple(number(v, what, where) for v in values)


@register
class Normalization(Entry):
    """keras.layers.Normalization on the last axis: (x − mean) / max(√variance, 1e-7) (or its
    inverse), the statistics in the config (ConvNeXt's ImageNet values) or adapted and held as
    weights — mean, variance and an int64 `count` (EfficientNet's), which Keras only keeps."""

    kind = "Normalization"
    fields = ("axis", "mean", "variance", "invert")
    assign_after_build = True  # its weights' initializers are strings inside build
    finalize = True  # Keras computes its mean and variance from them in finalize_state

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        c = inp.shape[-1]
        if rng.integers(2):
            return {"axis": -1, "mean": None, "variance": None}
        return {"mean": [float(v) for v in rng.normal(0, 1, c)],
                "variance": [float(v) for v in rng.uniform(0.2, 3, c)],
                "invert": bool(rng.integers(2))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> NormParams:
        axis = cfg.get("axis", -1)
        if isinstance(axis, list) and len(axis) == 1:
            axis = axis[0]
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise UserError(f"{where}: axis={cfg.get('axis')!r}; only the last axis is supported")
        invert = flag(cfg, "invert", False, where)
        if (cfg.get("mean") is None) != (cfg.get("variance") is None):
            raise UserError(f"{where}: a mean without a variance (or the reverse)")
        if cfg.get("mean") is None:
            return NormParams(None, None, invert, axis)
        variance = _per_channel(cfg.get("variance"), "variance", where)
        if min(variance) < 0:
            raise UserError(f"{where}: a variance is negative")
        return NormParams(_per_channel(cfg.get("mean"), "mean", where), variance, invert, axis)

    @staticmethod
    def infer(p: NormParams, ins: Sequence[In], where: str) -> Out:
        shape = ins[0].shape
        if p.axis not in (-1, len(shape)):
            raise UserError(f"{where}: axis={p.axis}; only the last axis is supported")
        c = shape[-1]
        if p.mean is None:
            return Out(shape, (Var("mean", (c,)), Var("variance", (c,)),
                               Var("count", (), "int64")))
        for what, values in (("mean", p.mean), ("variance", p.variance)):
            if len(values) not in (1, c):
                raise UserError(f"{where}: {len(values)} {what} values for {c} channels")
        return Out(shape)

    @staticmethod
    def to_torch(p: NormParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Normalize, NormalizeAdapted

        c = ins[0].shape[-1]
        if p.mean is None:
            params = [Param(v, 0, v, (c,) if v != "count" else (), IDENTITY)
                      for v in ("mean", "variance", "count")]
            return Converted([("normalize", NormalizeAdapted(c, p.invert))], params)
        mean = p.mean * c if len(p.mean) == 1 else p.mean
        variance = p.variance * c if len(p.variance) == 1 else p.variance
        return Converted([("normalize", Normalize(mean, variance, p.invert))])

    @staticmethod
    def numpy(p: NormParams, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        held = p.mean is None
        mean = np.asarray(w["mean"] if held else p.mean, dtype=np.float32)
        var = np.asarray(w["variance"] if held else p.variance, dtype=np.float32)
        std = np.maximum(np.sqrt(var), np.float32(1e-7))
        x = xs[0]
        return (mean + x * std) if p.invert else ((x - mean) / std)
