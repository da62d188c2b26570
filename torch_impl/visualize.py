"""8-3 in PyTorch: the trained CNN's weights, kernels and feature maps.

    python -m torch_impl.visualize CKPT [--out DIR] [--index 0] [--val-index 0] [--seed 42]
        [--history history.json] [--lang en|ko] [--data-dir DIR]

The book's 8-3 (see keras_ref/visualize.py for the Keras cells) from a PyTorch checkpoint:
- conv1's weight (32, 1, 3, 3) — the book's Keras layout is (3, 3, 1, 32) — and bias (32,), the
  weights' mean, standard deviation and histogram, the 32 kernels in a 2×16 grid (vmin -0.5,
  vmax 0.5); the same for untrained models with Keras's Glorot-uniform init and PyTorch's default;
- the feature maps of `train_input[0]` (an ankle boot): conv1 (32, 28, 28) in a 4×8 grid, conv2
  (64, 14, 14) in an 8×8 grid. The book cuts a functional-API sub-model at each Conv2D; here
  torchvision's `create_feature_extractor` returns the outputs of relu1 and relu2 (Keras's Conv2D
  applies its ReLU inside the layer) from the one model;
- the predicted probabilities for a validation image (8-2's bar chart), with class names;
- `--history`: the loss curves of a training run (history.json of either trainer).

Keras's feature maps beside these, from the same weights: `python -m parity.visualize`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from fashion_cnn.threads import THREADS_EPILOG, prepare_cli_env

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from fashion_cnn.cli import (
    add_data_dir,
    add_image_index,
    add_out,
    add_seed,
    add_version,
    non_negative_int,
)
from fashion_cnn.errors import UserError, cli_entry
from fashion_cnn.fashion_mnist import CLASS_NAMES, CLASS_NAMES_KO, book_split, load_data
from fashion_cnn.files import atomic_write, output_folder
from fashion_cnn.history import History, plot_history, read_history
from torch_impl.checkpoint import load_model
from torch_impl.model import BookCNN, predict_proba

# Node → name: Keras's Conv2D output is after its built-in ReLU, so PyTorch's relu1/relu2.
FEATURE_NODES = {"relu1": "conv1", "relu2": "conv2"}
GRIDS = {"conv1": (4, 8), "conv2": (8, 8)}  # the book's grids
# Fonts with Hangul, most likely first (Debian's fonts-nanum, Noto CJK, Windows, macOS).
KOREAN_FONTS = ("NanumGothic", "NanumBarunGothic", "Noto Sans CJK KR", "Noto Sans KR",
                "Malgun Gothic", "AppleGothic", "UnDotum")
DPI = 80  # small PNGs for the README
KERNEL_LIMIT = 0.5  # the book's vmin/vmax for the kernel grid


# --- what is computed -------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvStats:
    """conv1's weight (32, 1, 3, 3) and bias (32,) as numpy arrays, with the book's numbers."""

    label: str
    weight: np.ndarray
    bias: np.ndarray

    @property
    def keras_shape(self) -> tuple[int, ...]:
        """The weight's shape in the book's Keras layout, HWIO."""
        o, i, h, w = self.weight.shape
        return (h, w, i, o)

    @property
    def mean(self) -> float:
        return float(self.weight.mean())

    @property
    def std(self) -> float:
        return float(self.weight.std())


def conv1_stats(model: BookCNN, label: str = "trained") -> ConvStats:
    """conv1's weights and bias of `model` (the book's `model.layers[0].weights`)."""
    return ConvStats(
        label,
        model.conv1.weight.detach().cpu().numpy().copy(),
        model.conv1.bias.detach().cpu().numpy().copy(),
    )


def untrained_models(seed: int) -> dict[str, BookCNN]:
    """Untrained models, each initialised from `seed` without touching the global RNG:
    Keras's Glorot-uniform kernels (std of conv1 ≈ 0.08) and PyTorch's default
    kaiming_uniform(a=√5), U(-1/3, 1/3) for conv1's fan-in of 9 (std ≈ 0.19)."""
    models = {}
    for label, init in (("untrained, Keras Glorot uniform", "keras"),
                        ("untrained, PyTorch default", "torch")):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models[label] = BookCNN(init=init).eval()
    return models


def book_image(train_input: np.ndarray, index: int) -> torch.Tensor:
    """The book's `train_input[0:1].reshape(-1, 28, 28, 1) / 255.0` as NCHW (1, 1, 28, 28)
    float32, for any training index."""
    if not 0 <= index < len(train_input):
        raise UserError(
            f"--index {index} is out of range: the training set has {len(train_input):,} "
            f"images (0-{len(train_input) - 1})"
        )
    scaled = train_input[index : index + 1].reshape(-1, 1, 28, 28) / 255.0  # float64, as the book
    return torch.from_numpy(scaled.astype(np.float32))


@torch.no_grad()
def feature_maps(model: nn.Module, image: torch.Tensor) -> dict[str, np.ndarray]:
    """conv1 (32, 28, 28) and conv2 (64, 14, 14) feature maps (after ReLU) of one image
    (1, 1, 28, 28), read from the model's own relu1/relu2 nodes."""
    extractor = create_feature_extractor(model, return_nodes=FEATURE_NODES).eval()
    outputs = extractor(image)
    return {name: out[0].cpu().numpy() for name, out in outputs.items()}


def korean_font() -> str | None:
    """The name of an installed font with Hangul, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in KOREAN_FONTS if name in installed), None)


# --- pictures ---------------------------------------------------------------------------------
# Plain matplotlib Figures saved through the Agg canvas: no pyplot, so importing this module never
# changes the caller's backend (a notebook keeps its own).


def _save(fig: Figure, path: Path) -> Path:
    """The PNG written whole or not at all (a disk that fills up is one line, no half file)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), force=True)


def plot_histograms(stats: list[ConvStats], path: Path) -> Path:
    """One histogram per model, on shared bins, each titled with its mean and std."""
    edges = np.linspace(min(s.weight.min() for s in stats), max(s.weight.max() for s in stats), 31)
    fig = Figure(figsize=(4 * len(stats), 3.2), layout="constrained")
    axs = fig.subplots(1, len(stats), sharex=True)
    for ax, s in zip(axs, stats, strict=True):
        ax.hist(s.weight.reshape(-1), bins=edges)
        ax.set_title(f"{s.label}\nmean {s.mean:.4f}, std {s.std:.4f}", fontsize=10)
        ax.set_xlabel("weight")
        ax.set_ylabel("count")
    fig.suptitle("PyTorch: conv1 weights (288 values)")
    return _save(fig, path)


def plot_kernels(stats: list[ConvStats], path: Path) -> Path:
    """The 32 kernels of each model in a 2×16 grid (vmin -0.5, vmax 0.5), one row block each."""
    fig = Figure(figsize=(12, 2.1 * len(stats)), layout="constrained")
    for sub, s in zip(fig.subfigures(len(stats), 1), stats, strict=True):
        axs = sub.subplots(2, 16)
        for i in range(2):
            for j in range(16):
                axs[i, j].imshow(s.weight[i * 16 + j, 0], vmin=-KERNEL_LIMIT, vmax=KERNEL_LIMIT,
                                 interpolation="nearest")
                axs[i, j].axis("off")
        sub.suptitle(f"{s.label} (std {s.std:.3f})", fontsize=10)
    fig.suptitle(f"PyTorch: conv1 kernels, vmin -{KERNEL_LIMIT}, vmax {KERNEL_LIMIT}")
    return _save(fig, path)


def _font_rc(font: str | None) -> dict:
    """rcParams that draw text in `font` (Hangul), falling back to matplotlib's default font."""
    return {"font.family": [font, "DejaVu Sans"], "axes.unicode_minus": False} if font else {}


def plot_input(image: np.ndarray, title: str, font: str | None, path: Path) -> Path:
    with matplotlib.rc_context(_font_rc(font)):
        fig = Figure(figsize=(3, 3.2), layout="constrained")
        ax = fig.subplots()
        ax.imshow(image, cmap="gray_r", interpolation="nearest")
        ax.axis("off")
        ax.set_title(title, fontsize=10)
        return _save(fig, path)


def draw_grid(fig_or_sub, maps: np.ndarray, rows: int, cols: int) -> None:
    """maps (C, H, W) in a rows×cols grid: channel i*cols + j at row i, column j."""
    axs = fig_or_sub.subplots(rows, cols)
    for i in range(rows):
        for j in range(cols):
            axs[i, j].imshow(maps[i * cols + j], interpolation="nearest")
            axs[i, j].axis("off")


def plot_feature_maps(name: str, maps: np.ndarray, title: str, path: Path) -> Path:
    """One layer's maps (C, H, W) in the book's grid for it."""
    rows, cols = GRIDS[name]
    fig = Figure(figsize=(cols * 1.1, rows * 1.1 + 0.4), layout="compressed")
    draw_grid(fig, maps, rows, cols)
    fig.suptitle(title)
    return _save(fig, path)


def plot_prediction(image: np.ndarray, probs: np.ndarray, names: tuple[str, ...], title: str,
                    font: str | None, path: Path) -> Path:
    """8-2's bar chart of the 10 class probabilities, with the image beside it."""
    with matplotlib.rc_context(_font_rc(font)):
        fig = Figure(figsize=(8, 3.4), layout="constrained")
        ax_img, ax = fig.subplots(1, 2, width_ratios=(1, 2.6))
        ax_img.imshow(image, cmap="gray_r", interpolation="nearest")
        ax_img.axis("off")
        ax.bar(range(len(probs)), probs)
        ax.set_xticks(range(len(probs)), names, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_xlabel("class")
        ax.set_ylabel("prob")
        fig.suptitle(title)
        return _save(fig, path)


# --- the command ------------------------------------------------------------------------------


def class_names(lang: str) -> tuple[tuple[str, ...], str | None]:
    """(names, font): Korean names and a Hangul font where one is installed, else English."""
    if lang != "ko":
        return CLASS_NAMES, None
    font = korean_font()
    if font is None:
        print("note: no Korean font found (install fonts-nanum); class names in English",
              file=sys.stderr)
        return CLASS_NAMES, None
    return CLASS_NAMES_KO, font


@dataclass
class Results:
    """Everything the command computes, before anything is printed or drawn."""

    stats: list[ConvStats]  # trained, untrained Glorot, untrained PyTorch default
    image: np.ndarray  # (28, 28) uint8, train_input[index]
    label: int
    maps: dict[str, np.ndarray]  # conv1 (32, 28, 28), conv2 (64, 14, 14)
    val_image: np.ndarray  # (28, 28) float, val_scaled[val_index]
    val_label: int
    probs: np.ndarray  # (10,)
    history: History | None = None


def compute(args: argparse.Namespace) -> Results:
    """Read and check every input (checkpoint, image indices, history) and compute the
    numbers; nothing is written."""
    model = load_model(args.checkpoint)
    history = read_history(args.history) if args.history else None
    (train_input, train_target), _ = load_data(args.data_dir)
    image = book_image(train_input, args.index)
    _, val_scaled, _, val_target = book_split(train_input, train_target)
    if not 0 <= args.val_index < len(val_scaled):
        raise UserError(
            f"--val-index {args.val_index} is out of range: the validation set has "
            f"{len(val_scaled):,} images (0-{len(val_scaled) - 1})"
        )

    untrained = untrained_models(args.seed)
    maps = feature_maps(model, image)
    val_image = val_scaled[args.val_index, :, :, 0]
    probs = predict_proba(model, torch.from_numpy(val_image[None, None].astype(np.float32)))
    return Results(
        stats=[conv1_stats(model)] + [conv1_stats(m, label) for label, m in untrained.items()],
        image=train_input[args.index],
        label=int(train_target[args.index]),
        maps=maps,
        val_image=val_image,
        val_label=int(val_target[args.val_index]),
        probs=probs[0].numpy(),
        history=history,
    )


def report(r: Results, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Print the book's numbers."""
    t = r.stats[0]
    print(f"conv1 weight {t.weight.shape} (Keras layout {t.keras_shape}), bias {t.bias.shape}")
    for s in r.stats:
        print(f"{s.label} conv1 weight mean {s.mean:.6f} std {s.std:.6f}")
    spreads = ", ".join(f"{s.std:.4f} ({s.label})" for s in r.stats[1:])
    wider = "wider" if all(t.std > s.std for s in r.stats[1:]) else "not wider than every init"
    print(f"trained weights spread {wider}: std {t.std:.4f} vs {spreads}")
    for name, m in r.maps.items():
        print(f"{name} feature maps {m.shape} of train_input[{args.index}] ({names[r.label]})")
    pred = int(np.argmax(r.probs))
    print(f"val_scaled[{args.val_index}]: predicted {names[pred]} (p={r.probs[pred]:.4f}), "
          f"true {names[r.val_label]}")


def draw(r: Results, args: argparse.Namespace, names: tuple[str, ...], font: str | None,
         out: Path) -> list[Path]:
    """Write the PNGs into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    where = f"train_input[{args.index}]"
    pred = int(np.argmax(r.probs))
    written = [
        plot_histograms(r.stats, out / "conv1-hist.png"),
        plot_kernels(r.stats, out / "conv1-kernels.png"),
        plot_input(r.image, f"{where}: {names[r.label]}", font, out / "input.png"),
    ]
    for name, m in r.maps.items():
        title = f"PyTorch: {name} feature maps {m.shape} of {where}"
        written.append(plot_feature_maps(name, m, title, out / f"{name}-maps.png"))
    written.append(plot_prediction(
        r.val_image, r.probs, names,
        f"PyTorch: val_scaled[{args.val_index}] is {names[pred]} (p={r.probs[pred]:.3f})", font,
        out / "prediction.png"))
    if r.history is not None:
        written.append(plot_history(r.history, f"loss per epoch ({r.history.framework})",
                                    out / "history.png", dpi=DPI))
    return written


def visualize(args: argparse.Namespace) -> Results:
    """Compute (checking every input first), print the numbers, draw the pictures."""
    # The folder first: a file in the way or a read-only place is refused before any reading.
    with output_folder(args.out) as out:
        results = compute(args)
        names, font = class_names(args.lang)
        report(results, args, names)
        written = draw(results, args, names, font, out)
    print(f"wrote {len(written)} images to {args.out}")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        epilog=THREADS_EPILOG,
        prog="python -m torch_impl.visualize",
        description="The book's 8-3 in PyTorch: conv1 weights and kernels, feature maps "
        "and a prediction (Keras's maps beside PyTorch's: python -m parity.visualize).",
    )
    add_version(p)
    p.add_argument("checkpoint", help="PyTorch checkpoint (.pt, .pth or .safetensors)")
    add_out(p, "runs/visualize", "folder for the PNGs")
    add_image_index(p)
    p.add_argument("--val-index", type=non_negative_int, default=0,
                   help="validation image to predict (default: 0, a bag)")
    add_seed(p, "seed of the untrained models' initialisation")
    p.add_argument("--history", metavar="HISTORY_JSON",
                   help="a trainer's history.json: plot its losses (default: off)")
    p.add_argument("--lang", choices=("en", "ko"), default="en",
                   help="class names in English or the book's Korean, where a Korean font is "
                        "installed (default: en)")
    add_data_dir(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    visualize(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
