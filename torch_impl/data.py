"""The book's data as PyTorch tensors: verified arrays → the book's split → NCHW float32.

The split and scaling are `fashion_cnn.fashion_mnist.book_split` (the book's `train_test_split`),
so the tensors hold exactly the values Keras trains on (Keras casts the same float64 arrays to
float32).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from fashion_cnn.fashion_mnist import book_split, load_data


@dataclass(frozen=True)
class BookData:
    """Images (N, 1, 28, 28) float32 in [0, 1]; targets (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28, 1) or (N, 28, 28) scaled images → contiguous (N, 1, 28, 28) float32."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
    return torch.from_numpy(np.ascontiguousarray(images[:, None, :, :]))


def load_book_data(data_dir: str | os.PathLike | None = None) -> BookData:
    """Train 48,000 / validation 12,000 (the book's split of the 60,000) and test 10,000."""
    (train_input, train_target), (test_input, test_target) = load_data(data_dir)
    train_scaled, val_scaled, train_target, val_target = book_split(train_input, train_target)
    return BookData(
        train_x=to_nchw(train_scaled),
        train_y=torch.from_numpy(train_target.astype(np.int64)),
        val_x=to_nchw(val_scaled),
        val_y=torch.from_numpy(val_target.astype(np.int64)),
        test_x=to_nchw(test_input / 255.0),
        test_y=torch.from_numpy(test_target.astype(np.int64)),
    )
