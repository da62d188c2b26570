"""8-2: loading and splitting the data, as the book does.

The book calls `keras.datasets.fashion_mnist.load_data()`; here the same four official files are
read through the project's one verified loader (same arrays, same shapes and dtypes as Keras's
`load_data()`), so the PyTorch side sees byte-identical data.
"""

from __future__ import annotations

from sklearn.model_selection import train_test_split

from fashion_cnn.fashion_mnist import CLASS_NAMES, CLASS_NAMES_KO, load_data

__all__ = ["CLASS_NAMES", "CLASS_NAMES_KO", "load_data", "load_book_data"]


def load_book_data(data_dir=None):
    """The book's data cells: returns train_scaled, val_scaled, train_target, val_target,
    test_scaled, test_target (images (N, 28, 28, 1) float64 in [0, 1])."""
    (train_input, train_target), (test_input, test_target) = load_data(data_dir)
    train_scaled = train_input.reshape(-1, 28, 28, 1) / 255.0
    train_scaled, val_scaled, train_target, val_target = train_test_split(
        train_scaled, train_target, test_size=0.2, random_state=42
    )
    test_scaled = test_input.reshape(-1, 28, 28, 1) / 255.0
    return train_scaled, val_scaled, train_target, val_target, test_scaled, test_target
