"""8-3: looking inside the trained CNN, in Keras, as the book does.

    python -m keras_ref.visualize KERAS_FILE [--out DIR] [--index 0] [--seed 42] [--data-dir DIR]

The book's cells, in order: load the best checkpoint; the first Conv2D's weights (3, 3, 1, 32) and
bias (32,), their mean, standard deviation and histogram, and the 32 kernels in a 2×16 grid
(vmin -0.5, vmax 0.5); the same for an untrained Conv2D (Glorot-uniform init); then the
functional API — `keras.Model(model.inputs, model.layers[0].output)` — for the feature maps of
`train_input[0]` (an ankle boot): conv1 (1, 28, 28, 32) in a 4×8 grid, conv2 (1, 14, 14, 64) in
an 8×8 grid.

Keras's maps beside PyTorch's, from the same weights: `python -m parity.visualize`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fashion_cnn.extras import require

require("keras", "keras_ref.visualize")  # before the imports below: without Keras, one line

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from fashion_cnn.cli import add_data_dir, add_image_index, add_out, add_seed, add_version
from fashion_cnn.errors import UserError, cli_entry, first_line
from fashion_cnn.files import atomic_write, output_folder
from fashion_cnn.hdf5 import check_keras_file
from keras_ref.backend import keras
from keras_ref.data import load_data

DPI = 80  # small PNGs for the README


def load_book_model(path: str | os.PathLike) -> keras.Model:
    """`keras.models.load_model` (safe mode), with a one-line error for a file that is not the
    book's CNN: conv1 must be Conv2D (3, 3, 1, 32) and conv2 Conv2D (3, 3, 32, 64)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    check_keras_file(path)  # Keras's h5py would follow external links and outside storage
    try:
        model = keras.models.load_model(path, compile=False)  # only predicting
    except Exception as err:  # Keras raises many types for a bad file; all mean the same here
        msg = first_line(err)
        raise UserError(f"{path}: not a readable Keras model ({msg[:200]})") from None
    layers = getattr(model, "layers", [])
    ok = (
        len(layers) >= 3
        and isinstance(layers[0], keras.layers.Conv2D)
        and isinstance(layers[2], keras.layers.Conv2D)
        and tuple(layers[0].weights[0].shape) == (3, 3, 1, 32)
        and tuple(layers[2].weights[0].shape) == (3, 3, 32, 64)
    )
    if not ok:
        raise UserError(f"{path}: not the book's CNN (expected Conv2D 32 and Conv2D 64 first)")
    return model


def book_input(train_input: np.ndarray, index: int) -> np.ndarray:
    """The book's `train_input[0:1].reshape(-1, 28, 28, 1) / 255.0`, for any training index."""
    if not 0 <= index < len(train_input):
        raise UserError(
            f"--index {index} is out of range: the training set has {len(train_input):,} "
            f"images (0-{len(train_input) - 1})"
        )
    return train_input[index : index + 1].reshape(-1, 28, 28, 1) / 255.0


def untrained_model() -> keras.Sequential:
    """The book's `no_training_model`: one Conv2D with Keras's default Glorot-uniform kernels."""
    no_training_model = keras.Sequential()
    no_training_model.add(keras.layers.Input(shape=(28, 28, 1)))
    no_training_model.add(keras.layers.Conv2D(32, kernel_size=3, activation="relu", padding="same"))
    return no_training_model


def feature_maps(model: keras.Model, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The book's functional-API sub-models: conv1 (1, 28, 28, 32) and conv2 (1, 14, 14, 64)
    outputs (after ReLU, which Keras's Conv2D applies itself)."""
    conv_acti = keras.Model(model.inputs, model.layers[0].output)
    conv2_acti = keras.Model(model.inputs, model.layers[2].output)
    return conv_acti.predict(inputs, verbose=0), conv2_acti.predict(inputs, verbose=0)


def print_conv_weights(label: str, conv: keras.layers.Layer) -> np.ndarray:
    """Print the book's numbers for a Conv2D: weight and bias shapes, weight mean and std."""
    conv_weights = conv.weights[0].numpy()
    print(f"{label} conv1 weights {conv_weights.shape}, bias {tuple(conv.weights[1].shape)}")
    print(f"{label} conv1 weight mean {conv_weights.mean():.6f} std {conv_weights.std():.6f}")
    return conv_weights


# --- the book's figures -----------------------------------------------------------------------


def _save(fig, path: Path) -> None:
    """The PNG written whole or not at all (a disk that fills up is one line, no half file)."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), force=True)
    finally:
        plt.close(fig)


def plot_histogram(conv_weights: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(conv_weights.reshape(-1, 1))
    ax.set_xlabel("weight")
    ax.set_ylabel("count")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def plot_kernels(conv_weights: np.ndarray, title: str, path: Path) -> None:
    """The 32 kernels (3, 3, 1, 32) in a 2×16 grid, vmin -0.5, vmax 0.5."""
    fig, axs = plt.subplots(2, 16, figsize=(12, 2), layout="compressed")
    for i in range(2):
        for j in range(16):
            axs[i, j].imshow(conv_weights[:, :, 0, i * 16 + j], vmin=-0.5, vmax=0.5,
                             interpolation="nearest")
            axs[i, j].axis("off")
    fig.suptitle(title)
    _save(fig, path)


def plot_input(image: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(image, cmap="gray_r", interpolation="nearest")
    ax.axis("off")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def plot_maps(maps: np.ndarray, rows: int, cols: int, title: str, path: Path) -> None:
    """maps (1, H, W, C) in a rows×cols grid, channel i*cols + j at row i, column j."""
    fig, axs = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1 + 0.4),
                            layout="compressed")
    for i in range(rows):
        for j in range(cols):
            axs[i, j].imshow(maps[0, :, :, i * cols + j], interpolation="nearest")
            axs[i, j].axis("off")
    fig.suptitle(title)
    _save(fig, path)


def visualize(args: argparse.Namespace) -> None:
    # The folder first: a file in the way or a read-only place is refused before any reading.
    with output_folder(args.out) as out:
        _visualize(args, out)


def _visualize(args: argparse.Namespace, out: Path) -> None:
    # Load the best checkpoint of 8-2 and the image (checked before anything is written).
    model = load_book_model(args.keras_file)
    (train_input, _), _ = load_data(args.data_dir)
    inputs = book_input(train_input, args.index)

    # The first convolution layer's weights.
    conv = model.layers[0]
    conv_weights = print_conv_weights("trained", conv)
    plot_histogram(conv_weights, "Keras: trained conv1 weights", out / "conv1-hist.png")
    plot_kernels(conv_weights, "Keras: trained conv1 kernels (vmin -0.5, vmax 0.5)",
                 out / "conv1-kernels.png")

    # An untrained Conv2D: Glorot-uniform kernels, spread narrower than the trained ones.
    keras.utils.set_random_seed(args.seed)
    no_training_conv = untrained_model().layers[0]
    no_training_weights = print_conv_weights("untrained (Glorot uniform)", no_training_conv)
    plot_histogram(no_training_weights, "Keras: untrained conv1 weights (Glorot uniform)",
                   out / "untrained-conv1-hist.png")
    plot_kernels(no_training_weights, "Keras: untrained conv1 kernels (vmin -0.5, vmax 0.5)",
                 out / "untrained-conv1-kernels.png")
    print(f"trained std {conv_weights.std():.6f} vs untrained std {no_training_weights.std():.6f}")

    # Feature maps of the first training image (the book: an ankle boot).
    plot_input(train_input[args.index], f"train_input[{args.index}]", out / "input.png")
    conv1_maps, conv2_maps = feature_maps(model, inputs)
    print(f"conv1 feature maps {conv1_maps.shape}, conv2 feature maps {conv2_maps.shape}")
    plot_maps(conv1_maps, 4, 8, f"Keras: conv1 feature maps of train_input[{args.index}]",
              out / "conv1-maps.png")
    plot_maps(conv2_maps, 8, 8, f"Keras: conv2 feature maps of train_input[{args.index}]",
              out / "conv2-maps.png")
    print(f"wrote 7 images to {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_ref.visualize",
        description="The book's 8-3 in Keras: conv1 weights, kernels and feature maps.",
    )
    add_version(p)
    p.add_argument("keras_file", help="the trained model (.keras or the book's .h5)")
    add_out(p, "runs/visualize-keras", "folder for the PNGs")
    add_image_index(p)
    add_seed(p, "seed of the untrained model's initialisation")
    add_data_dir(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only, no window
    visualize(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
