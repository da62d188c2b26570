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
