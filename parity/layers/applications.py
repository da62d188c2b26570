"""The `keras.applications` models' own layers, read from the config as data (their fields,
never their code from a file): ConvNeXt's `LayerScale` (x · gamma per channel) and
`StochasticDepth` (the identity at inference; torchvision's per-sample drop when training), and
InceptionResNetV2's `CustomScaleLayer` (x + r · scale). The Keras reference takes their classes
from Keras's own package (`keras_class`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fashion_cnn.errors import UserError
from parity.layers.merging import broadcast
from parity.layers.registry import (
    Converted,
    Entry,
    In,
    Out,
    Param,
    Var,
    number,
    positive_int,
    register,
)
from parity.layers.transforms import IDENTITY


@register
class LayerScale(Entry):
    kind = "keras.src.applications.convnext.LayerScale"
    keras_class = ("keras.src.applications.convnext", "LayerScale")
    fields = ("init_values", "projection_dim")
    assign_after_build = True  # its gamma's initializer is made in build, not an attribute

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"init_values": float(rng.choice([1e-6, 0.5])), "projection_dim": inp.shape[-1]}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> int:
        number(cfg.get("init_values", 1e-6), "init_values", where)
        return positive_int(cfg.get("projection_dim"), "projection_dim", where)

    @staticmethod
    def infer(dim: int, ins: Sequence[In], where: str) -> Out:
        if ins[0].shape[-1] != dim:
            raise UserError(f"{where}: projection_dim={dim} does not fit the input "
                            f"{ins[0].shape}")
        return Out(ins[0].shape, (Var("gamma", (dim,)),))

    @staticmethod
    def to_torch(dim: int, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import Scale

        return Converted([("scale", Scale(dim))], [Param("gamma", 0, "gamma", (dim,), IDENTITY)])

    @staticmethod
    def numpy(dim: int, w: Mapping[str, np.ndarray], xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0] * np.asarray(w["gamma"], dtype=np.float32)


@register
class CustomScaleLayer(Entry):
    kind = "keras.src.applications.inception_resnet_v2.CustomScaleLayer"
    keras_class = ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer")
    fields = ("scale",)
    inputs = (2, 2)

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"scale": float(rng.choice([0.17, 0.1, 1.0]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> float:
        return number(cfg.get("scale"), "scale", where)

    @staticmethod
    def infer(scale: float, ins: Sequence[In], where: str) -> Out:
        return Out(broadcast([i.shape for i in ins], where))

    @staticmethod
    def to_torch(scale: float, ins: Sequence[In], out: Out, where: str) -> Converted:
        from parity.layers.modules import ScaledSum

        return Converted([("scaled_sum", ScaledSum(scale))])

    @staticmethod
    def numpy(scale: float, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0] + xs[1] * np.float32(scale)


@register
class StochasticDepth(Entry):
    """ConvNeXt's residual-path drop (built where `drop_path_rate` > 0): each sample's path is
    kept with probability 1 − rate and scaled by 1 / (1 − rate) when training (Keras draws one
    number per sample, as torchvision's mode "row" does); the identity at inference."""

    kind = "keras.src.applications.convnext.StochasticDepth"
    keras_class = ("keras.src.applications.convnext", "StochasticDepth")
    fields = ("drop_path_rate",)
    passes_flatten = True

    @staticmethod
    def sample(rng, inp: In) -> dict | None:
        return {"drop_path_rate": float(rng.choice([0.1, 0.5]))}

    @staticmethod
    def parse(cfg: Mapping, where: str) -> float:
        rate = number(cfg.get("drop_path_rate"), "drop_path_rate", where)
        if not 0 <= rate < 1:
            raise UserError(f"{where}: drop_path_rate={rate!r} is not in [0, 1)")
        return rate

    @staticmethod
    def infer(rate: float, ins: Sequence[In], where: str) -> Out:
        return Out(ins[0].shape, flat_from=ins[0].flat_from)

    @staticmethod
    def to_torch(rate: float, ins: Sequence[In], out: Out, where: str) -> Converted:
        from torchvision.ops import StochasticDepth as DropPath

        return Converted([("stochastic_depth", DropPath(rate, "row"))])

    @staticmethod
    def numpy(rate: float, w: Mapping, xs: Sequence[np.ndarray]) -> np.ndarray:
        return xs[0]  # inference: the identity, whatever the rate
