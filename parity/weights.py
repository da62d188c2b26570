"""Any checkpoint of the book's CNN, read once into both layouts, and the check that both
frameworks compute the same thing from it: the library under `parity.port` and `parity.check`.

Formats come from the extensions: `.keras`, `.h5`, `.weights.h5` (Keras, read by
`parity.keras_files` without TensorFlow) and `.pt`, `.pth`, `.safetensors` (PyTorch, read by
`torch_impl.checkpoint` with `weights_only=True`). Nothing from a file is ever executed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashion_cnn.errors import UserError
from parity.keras_files import keras_kind, read_keras
from parity.mapping import keras_to_torch, torch_to_keras
from torch_impl.checkpoint import load_state_dict, validate_state_dict
from torch_impl.model import BookCNN

TORCH_EXTENSIONS = (".pt", ".pth", ".safetensors")
EXTENSIONS = ".keras, .h5, .weights.h5, .pt, .pth, .safetensors"


def framework_of(path: Path) -> str:
    """'keras' or 'torch' from the file name; anything else is refused."""
    if keras_kind(path) is not None:
        return "keras"
    if path.suffix.lower() in TORCH_EXTENSIONS:
        return "torch"
    raise UserError(f"{path}: unknown extension {path.suffix or '(none)'!r}; expected {EXTENSIONS}")


@dataclass
class Weights:
    """One checkpoint in both layouts (float32 numpy arrays)."""

    keras: dict[str, np.ndarray]  # structural Keras name → Keras layout
    torch: dict[str, np.ndarray]  # state_dict key → PyTorch layout
    source: str  # what was read, for the summary


def read_weights(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Weights:
    """Read and validate any supported checkpoint; return its weights in both layouts."""
    path = Path(path)
    if framework_of(path) == "keras":
        ckpt = read_keras(path, allow_nonfinite=allow_nonfinite)
        skipped = f", {len(ckpt.skipped)} optimizer tensors left aside" if ckpt.skipped else ""
        return Weights(
            ckpt.weights, keras_to_torch(ckpt.weights, str(path)), f"{ckpt.layout}{skipped}"
        )
    state = load_state_dict(path, allow_nonfinite=allow_nonfinite)
    arrays = {k: v.numpy() for k, v in state.items()}
    return Weights(torch_to_keras(arrays, str(path)), arrays, "PyTorch state_dict")


def load_into(model: BookCNN, path: str | os.PathLike, *, allow_nonfinite: bool = False) -> BookCNN:
    """Load any supported checkpoint into an existing BookCNN. Everything is read and validated
    first; the model is assigned only then, so a failed load leaves it untouched."""
    weights = read_weights(path, allow_nonfinite=allow_nonfinite)
    state = validate_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in weights.torch.items()},
        path,
        allow_nonfinite=allow_nonfinite,
    )
    model.load_state_dict(state)
    return model
