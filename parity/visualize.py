"""8-3's feature maps from Keras and PyTorch side by side, with each map's max |diff|.

    python -m parity.visualize KERAS_FILE TORCH_FILE --out DIR [--index 0] [--data-dir DIR]

Both files are read by the port's readers (nothing in them is run) and must hold the book's CNN;
the check's own two sides run both on `train_input[index]` — an ankle boot for index 0, as in
the book: Keras (or its numpy reference) holding the Keras file's weights, and the module
rebuilt from the PyTorch file, read with the check's hooks. Writes `keras-vs-torch-conv1.png`
(32 maps, 4×8) and `keras-vs-torch-conv2.png` (64 maps, 8×8). Maps that differ beyond
MAPS_TOLERANCE are drawn, then reported as an error (exit 1): the two files do not hold the same
weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from fashion_cnn.threads import THREADS_EPILOG, prepare_cli_env

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import numpy as np
from matplotlib.figure import Figure

from fashion_cnn.cli import add_data_dir, add_image_index, add_out, add_version
from fashion_cnn.errors import UserError, cli_entry
from fashion_cnn.fashion_mnist import load_data
from fashion_cnn.files import atomic_write, output_folder
from torch_impl.visualize import DPI, GRIDS, book_image, draw_grid

# Float32 parity tolerance for a feature map, Keras vs PyTorch: torch.testing.assert_close's
# default atol and the one Hugging Face uses for TF↔PT ports. Same weights and image give ~1e-7.
MAPS_TOLERANCE = 1e-5


@dataclass(frozen=True)
class SideBySide:
    """One layer's maps from both sides, (C, H, W) each, and each map's max |diff| (C,)."""

    name: str
    keras: np.ndarray
    torch: np.ndarray
    diffs: np.ndarray


def max_abs_diff_per_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(C, H, W) and (C, H, W) → (C,): the max |a - b| of each map."""
    if a.shape != b.shape:
        raise UserError(f"feature maps of shapes {a.shape} and {b.shape} cannot be compared")
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1).max(axis=1)


def compare_feature_maps(
    keras_file: str | os.PathLike,
    torch_file: str | os.PathLike,
    index: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> list[SideBySide]:
    """conv1 and conv2 feature maps (after ReLU) of `train_input[index]` on both sides."""
    from parity import book
    from parity.pipeline import read_source
    from parity.reference.keras_live import keras_reference
    from parity.verify.capture import layer_outputs
    from parity.verify.probes import probes

    keras_src = read_source(Path(keras_file), module=False)
    torch_src = read_source(Path(torch_file))
    for src in (keras_src, torch_src):
        if not book.is_book(src.spec):
            raise UserError(f"{src.path}: not the book's CNN; 8-3's feature maps are the book's")
    (train_input, _), _ = load_data(data_dir)
    image = book_image(train_input, index).numpy().transpose(0, 2, 3, 1)  # (1, 28, 28, 1)
    keras_out = keras_reference(keras_src.spec, keras_src.weights, keras_src.path).outputs(image)
    torch_out = layer_outputs(torch_src.built, image)
    names = [p.node for p in probes(keras_src.spec)]
    by_path = {n.node.path: n.node.name for n in keras_src.spec.nodes}
    found = []
    for name, path in zip(GRIDS, ("conv2d", "conv2d_1"), strict=True):  # the book's two convs
        i = names.index(by_path[path])
        k, t = (out[i][0].transpose(2, 0, 1) for out in (keras_out, torch_out))  # HWC → CHW
        found.append(SideBySide(name, k, t, max_abs_diff_per_map(k, t)))
    return found


def plot_side_by_side(maps: SideBySide, title: str, path: Path) -> Path:
    """Keras's maps | PyTorch's maps | a table of each map's max |diff|, same grid positions."""
    rows, cols = GRIDS[maps.name]
    cell = 0.75
    fig = Figure(figsize=(3 * cols * cell + 1, rows * cell + 0.9), layout="constrained")
    left, middle, right = fig.subfigures(1, 3, width_ratios=(1, 1, 0.8))
    for sub, side, label in ((left, maps.keras, "Keras"), (middle, maps.torch, "PyTorch")):
        draw_grid(sub, side, rows, cols)
        sub.suptitle(label, fontsize=10)
    ax = right.subplots()
    table = maps.diffs.reshape(rows, cols)
    im = ax.imshow(table, cmap="Reds", vmin=0, vmax=MAPS_TOLERANCE)
    for i in range(rows):
        for j in range(cols):
            ax.text(j, i, f"{table[i, j]:.0e}", ha="center", va="center", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    right.colorbar(im, ax=ax, shrink=0.8, label=f"max |diff| (tolerance {MAPS_TOLERANCE:g})")
    right.suptitle("max |diff| of each map", fontsize=10)
    fig.suptitle(title)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def visualize(args: argparse.Namespace) -> list[SideBySide]:
    """Compare, print each layer's max |diff|, draw; refuse (after drawing) maps that differ."""
    # The folder first: a file in the way or a read-only place is refused before any reading.
    with output_folder(args.out) as out:
        found = compare_feature_maps(args.keras_file, args.torch_file, args.index, args.data_dir)
        where = f"train_input[{args.index}]"
        for maps in found:
            worst = float(maps.diffs.max())
            print(
                f"Keras vs PyTorch {maps.name} feature maps: max |diff| {worst:.2e} "
                f"over {len(maps.diffs)} maps (tolerance {MAPS_TOLERANCE:g})"
            )
            title = f"{maps.name} feature maps of {where}: Keras | PyTorch | max |diff| {worst:.1e}"
            atomic_write(
                out / f"keras-vs-torch-{maps.name}.png",
                lambda tmp, m=maps, t=title: plot_side_by_side(m, t, tmp),
                force=True,
            )
    print(f"wrote {len(found)} images to {out}")
    worst = max(found, key=lambda m: float(m.diffs.max()))
    if float(worst.diffs.max()) > MAPS_TOLERANCE:
        raise UserError(
            f"{args.keras_file}: Keras's {worst.name} feature maps differ from "
            f"{args.torch_file}'s by {float(worst.diffs.max()):.2e} > {MAPS_TOLERANCE:g} — are "
            f"they the same weights? (make one from the other with python -m parity.port)"
        )
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        epilog=THREADS_EPILOG,
        prog="python -m parity.visualize",
        description="Keras's and PyTorch's feature maps of the same image side by side (8-3), "
        "with each map's max |diff|.",
    )
    add_version(p)
    p.add_argument("keras_file", help="Keras checkpoint (.keras, .h5 or .weights.h5)")
    p.add_argument("torch_file", help="PyTorch checkpoint (.pt, .pth or .safetensors)")
    add_out(p, None, "folder for the PNGs")
    add_image_index(p)
    add_data_dir(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    visualize(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
