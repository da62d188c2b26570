"""The layout transforms between a Keras variable and its PyTorch tensor: one small function
each way per kind (timm's `_n2p`), numpy only, so both directions and every reader and writer
share them. A transform that permutes is exact: the round trip is bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Transform:
    name: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_keras: Callable[[np.ndarray], np.ndarray]


def _identity(array: np.ndarray) -> np.ndarray:
    return array


# Biases and per-channel vectors: the same vector in both frameworks.
IDENTITY = Transform("identity", _identity, _identity)
# Conv2D kernel: Keras HWIO (kh, kw, in, out) ↔ PyTorch OIHW (out, in, kh, kw).
CONV = Transform(
    "conv HWIO→OIHW", lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0)
)
# Conv2DTranspose kernel: Keras (kh, kw, out, in) ↔ PyTorch ConvTranspose2d (in, out, kh, kw):
# the same permutation.
CONV_TRANSPOSE = Transform("conv transpose (kh,kw,out,in)→(in,out,kh,kw)", CONV.to_torch,
                           CONV.to_keras)
# Dense kernel: Keras (in, out) ↔ PyTorch Linear (out, in).
DENSE = Transform("dense transpose", lambda k: k.T, lambda w: w.T)


def flat_dense(h: int, w: int, c: int) -> Transform:
    """The Dense after Flatten of an (h, w, c) map: Keras's rows in H,W,C order ↔ PyTorch's
    columns in C,H,W order. A plain transpose would give a model that runs and is wrong."""

    def to_torch(kernel: np.ndarray) -> np.ndarray:
        out = kernel.shape[1]
        return kernel.reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)

    def to_keras(weight: np.ndarray) -> np.ndarray:
        out = weight.shape[0]
        return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)

    return Transform("dense after flatten: HWC→CHW rows, transpose", to_torch, to_keras)


def flat_vector(h: int, w: int, c: int) -> Transform:
    """A per-feature vector after Flatten (BatchNormalization's): H,W,C order ↔ C,H,W order."""
    return Transform(
        "vector after flatten: HWC→CHW",
        lambda v: v.reshape(h, w, c).transpose(2, 0, 1).reshape(-1),
        lambda v: v.reshape(c, h, w).transpose(1, 2, 0).reshape(-1),
    )
