"""The one mapping table between Keras's and PyTorch's weights of the book's CNN.

Original (Keras) name on the left, ours (PyTorch state_dict key) on the right, and the transform.
Keras names are *structural*: the n-th Conv2D is `conv2d`, `conv2d_1`, the n-th Dense `dense`,
`dense_1` — the positional names Keras 3 stores weights under (`layers/conv2d/vars/0`), whatever
`layer.name` says (`conv2d_6` in a second session). The file readers in `parity.keras_files`
produce these names from the model's structure, never from auto-generated layer names.

Everything here is numpy: no framework is imported (the shapes come from the framework-free core,
`fashion_cnn.book`; tests/test_imports.py proves it), so the table serves both directions and
every reader and writer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fashion_cnn.book import FLATTEN_CHW
from fashion_cnn.validate import check_tensors

C, H, W = FLATTEN_CHW  # (64, 7, 7): the feature map that Flatten sees


# --- one small function per transform, each with its inverse --------------------------------


def conv_to_torch(kernel: np.ndarray) -> np.ndarray:
    """Keras Conv2D kernel HWIO (3, 3, in, out) → PyTorch OIHW (out, in, 3, 3)."""
    return kernel.transpose(3, 2, 0, 1)


def conv_to_keras(weight: np.ndarray) -> np.ndarray:
    """PyTorch OIHW (out, in, 3, 3) → Keras HWIO (3, 3, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def dense_to_torch(kernel: np.ndarray) -> np.ndarray:
    """Keras Dense kernel (in, out) → PyTorch Linear weight (out, in)."""
    return kernel.T


def dense_to_keras(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight (out, in) → Keras Dense kernel (in, out)."""
    return weight.T


def flat_dense_to_torch(kernel: np.ndarray) -> np.ndarray:
    """The Dense after Flatten: Keras (3136, out), rows in H,W,C order → PyTorch (out, 3136),
    columns in C,H,W order. A plain transpose would give a model that runs and is wrong."""
    out = kernel.shape[1]
    return kernel.reshape(H, W, C, out).transpose(3, 2, 0, 1).reshape(out, C * H * W)


def flat_dense_to_keras(weight: np.ndarray) -> np.ndarray:
    """PyTorch (out, 3136), columns C,H,W → Keras (3136, out), rows H,W,C."""
    out = weight.shape[0]
    return weight.reshape(out, C, H, W).transpose(2, 3, 1, 0).reshape(H * W * C, out)


def identity(array: np.ndarray) -> np.ndarray:
    """Biases: the same vector in both frameworks."""
    return array


@dataclass(frozen=True)
class Transform:
    name: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_keras: Callable[[np.ndarray], np.ndarray]


CONV = Transform("conv HWIO→OIHW", conv_to_torch, conv_to_keras)
DENSE = Transform("dense transpose", dense_to_torch, dense_to_keras)
FLAT_DENSE = Transform("dense after flatten: HWC→CHW rows, transpose", flat_dense_to_torch,
                       flat_dense_to_keras)
BIAS = Transform("identity", identity, identity)


@dataclass(frozen=True)
class Row:
    keras: str  # structural Keras name: "<layer>/<variable>"
    torch: str  # PyTorch state_dict key
    keras_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    transform: Transform


TABLE: tuple[Row, ...] = (
    Row("conv2d/kernel",   "conv1.weight",  (3, 3, 1, 32),  (32, 1, 3, 3),   CONV),
    Row("conv2d/bias",     "conv1.bias",    (32,),          (32,),           BIAS),
    Row("conv2d_1/kernel", "conv2.weight",  (3, 3, 32, 64), (64, 32, 3, 3),  CONV),
    Row("conv2d_1/bias",   "conv2.bias",    (64,),          (64,),           BIAS),
    Row("dense/kernel",    "dense1.weight", (3136, 100),    (100, 3136),     FLAT_DENSE),
    Row("dense/bias",      "dense1.bias",   (100,),         (100,),          BIAS),
    Row("dense_1/kernel",  "dense2.weight", (100, 10),      (10, 100),       DENSE),
    Row("dense_1/bias",    "dense2.bias",   (10,),          (10,),           BIAS),
)

KERAS_NAMES = tuple(row.keras for row in TABLE)
TORCH_NAMES = tuple(row.torch for row in TABLE)


def _check(weights: Mapping[str, np.ndarray], side: str, source: str) -> None:
    """Every name used exactly once, every shape as the table says — before anything is mapped."""
    expected = {
        (row.keras if side == "keras" else row.torch): (
            row.keras_shape if side == "keras" else row.torch_shape
        )
        for row in TABLE
    }
    check_tensors(
        weights, expected, source, shape_of=np.shape,
        what=f"{side} weights do not match the book's CNN: ",
    )


def keras_to_torch(weights: Mapping[str, np.ndarray], source: str = "keras weights") -> dict:
    """Keras arrays by structural name → PyTorch arrays by state_dict key (C-contiguous copies)."""
    _check(weights, "keras", source)
    return {
        row.torch: np.ascontiguousarray(row.transform.to_torch(np.asarray(weights[row.keras])))
        for row in TABLE
    }


def torch_to_keras(weights: Mapping[str, np.ndarray], source: str = "torch weights") -> dict:
    """PyTorch arrays by state_dict key → Keras arrays by structural name (C-contiguous copies)."""
    _check(weights, "torch", source)
    return {
        row.keras: np.ascontiguousarray(row.transform.to_keras(np.asarray(weights[row.torch])))
        for row in TABLE
    }
