"""Core layers: `InputLayer`, `Dense` (its rows permuted H,W,C → C,H,W when a Flatten's order is
pending) and `Dropout` (the identity at inference)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.activations import activate, activation_modules, activation_name
from parity.layers.registry import (
    Converted,
    Entry,
    In,
    Out,
    Param,
    Var,
    flag,
    positive_int,
    register,
)
from parity.layers.transforms import DENSE, IDENTITY, flat_dense


@register
class InputLayer(Entry):
    kind = "InputLayer"
    fields = ()

    @staticmethod
    def parse(cfg: Mapping, where: str) -> None:
        return None

    @staticmethod
    def infer(p: None, ins: Sequence[In], where: str) -> Out:
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p: None, ins: Sequence[In], out: Out, where: str) -> Converted:
        return Converted([])

    @staticmethod
    def numpy(p: None, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0]


@dataclass(frozen=True)
class DenseParams:
    units: int
    use_bias: bool
    activation: str


@register
class Dense(Entry):
    kind = "Dense"
    fields = ("units", "activation", "use_bias")
    torch_classes = ("Linear",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        # on vectors, and on the last axis of maps (ConvNeXt's pointwise layers)
        return {"units": int(rng.integers(1, 17)), "use_bias": bool(rng.integers(2)),
                "activation": str(rng.choice(["linear", "relu", "sigmoid", "softmax"]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> DenseParams:
        if cfg.get("quantization_config") or cfg.get("lora_rank"):
            raise UserError(f"{where}: quantized or LoRA Dense layers are not supported")
        return DenseParams(
            positive_int(cfg.get("units"), "units", where),
            flag(cfg, "use_bias", True, where),
            activation_name(cfg.get("activation", "linear"), where),
        )

    @staticmethod
    def infer(p: DenseParams, ins: Sequence[In], where: str) -> Out:
        """On its input's last axis, as Keras computes it: the features of a flat input, the
        channels of an (H, W, C) map (ConvNeXt's pointwise layers)."""
        shape = ins[0].shape
        n_in = shape[-1]
        variables = [Var("kernel", (n_in, p.units))]
        if p.use_bias:
            variables.append(Var("bias", (p.units,)))
        return Out((*shape[:-1], p.units), tuple(variables))

    @staticmethod
    def to_torch(p: DenseParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        from parity.layers.modules import ChannelLinear

        shape = ins[0].shape
        n_in = shape[-1]
        transform = flat_dense(*ins[0].flat_from) if ins[0].flat_from else DENSE
        params = [Param("kernel", 0, "weight", (p.units, n_in), transform)]
        if p.use_bias:
            params.append(Param("bias", 0, "bias", (p.units,), IDENTITY))
        acts = activation_modules(p.activation, out.shape)
        kind = ChannelLinear if len(shape) == 3 else nn.Linear  # NCHW: on the channel axis
        linear = kind(n_in, p.units, bias=p.use_bias)
        return Converted([("dense", linear), *acts], params, pre_activation=0 if acts else None)

    @staticmethod
    def numpy(p: DenseParams, w: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        out = xs[0].astype(np.float64) @ np.asarray(w["kernel"], dtype=np.float64)
        if p.use_bias:
            out += np.asarray(w["bias"], dtype=np.float64)
        return activate(p.activation, out.astype(np.float32))

    @staticmethod
    def linear(p: DenseParams) -> DenseParams:
        return replace(p, activation="linear")

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        if len(inp.shape) != 1:
            raise UserError(f"{where}: a Linear on an input of shape {inp.shape}; Keras's Dense "
                            f"here takes flat inputs only")
        transform = flat_dense(*inp.flat_from) if inp.flat_from else DENSE
        cfg = {"units": m.out_features, "activation": "linear", "use_bias": m.bias is not None}
        vars_ = [("kernel", transform.to_keras(_np(m.weight)))]
        if m.bias is not None:
            vars_.append(("bias", _np(m.bias)))
        return [("Dense", cfg, vars_)]


class DropoutParams(NamedTuple):
    rate: float
    noise_shape: tuple[int | None, ...] | None  # Keras's, channels last, with the batch axis


@register
class Dropout(Entry):
    kind = "Dropout"
    fields = ("rate", "noise_shape", "seed")
    passes_flatten = True
    torch_classes = ("Dropout",)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"rate": float(rng.choice([0.0, 0.3, 0.5]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> DropoutParams:
        rate = cfg.get("rate")
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise UserError(f"{where}: rate={rate!r} is not in [0, 1)")
        noise = cfg.get("noise_shape")  # which axes share a mask: nothing at inference
        if noise is not None and not (isinstance(noise, list) and len(noise) <= 8 and all(
            n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1)
            for n in noise
        )):
            raise UserError(f"{where}: noise_shape={noise!r} is not a list of sizes")
        return DropoutParams(float(rate), None if noise is None else tuple(noise))

    @staticmethod
    def infer(p: DropoutParams, ins: Sequence[In], where: str) -> Out:
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(p: DropoutParams, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torch import nn

        from parity.training import keras_noise_shape

        module = nn.Dropout(p.rate)
        noise = keras_noise_shape(p.noise_shape, len(ins[0].shape) + 1)
        if noise is not None:  # PyTorch's Dropout ignores it; parity.keras_training reads it
            module.keras_noise_shape = noise
        return Converted([("dropout", module)])

    @staticmethod
    def numpy(p: DropoutParams, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0]  # inference: the identity, whatever the rate

    @staticmethod
    def from_torch(m, inp: In, where: str) -> list:
        return [("Dropout", {"rate": float(m.p), "seed": None, "noise_shape": None}, [])]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)
