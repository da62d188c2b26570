"""A training run's history.json and the book's loss plot — framework-free (json, matplotlib).

Both trainers (`torch_impl.train`, `keras_ref.train`) write history.json with the same keys and
draw the same plot through this module, and `torch_impl.visualize --history` reads either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write
from fashion_cnn.jsonfile import read_json

# A 20-epoch history.json is 3 KB; this allows thousands of epochs.
MAX_HISTORY_BYTES = 16 << 20


@dataclass(frozen=True)
class History:
    """Loss per epoch of a training run, and what trained it (the file's "framework", if any)."""

    loss: list[float]
    val_loss: list[float]
    framework: str


def read_history(path: str | os.PathLike) -> History:
    """loss and val_loss per epoch from either trainer's history.json (under "history", or at
    the top level)."""
    path = Path(path)
    # Bounded in size and depth: a history.json is a few KB, three levels deep.
    doc = read_json(path, max_bytes=MAX_HISTORY_BYTES)
    hist = doc.get("history", doc) if isinstance(doc, dict) else None
    if not isinstance(hist, dict) or not all(
        isinstance(hist.get(k), list) and hist[k] for k in ("loss", "val_loss")
    ):
        raise UserError(f"{path}: no loss and val_loss lists (expected a trainer's history.json)")
    try:
        loss, val_loss = ([float(v) for v in hist[k]] for k in ("loss", "val_loss"))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: loss and val_loss must be lists of numbers") from None
    framework = doc.get("framework") if isinstance(doc.get("framework"), str) else path.name
    return History(loss, val_loss, framework)


def plot_history(history: History, title: str, path: str | os.PathLike, dpi: int = 100) -> Path:
    """The book's loss plot (train and val loss per epoch), the best epoch marked.

    A plain Figure (no pyplot: the caller's backend is left alone), written to a temporary file
    beside `path` and renamed, so a killed run never leaves half a PNG.
    """
    path = Path(path)
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(1, len(history.loss) + 1), history.loss, label="train")
    ax.plot(range(1, len(history.val_loss) + 1), history.val_loss, label="val")
    best = int(np.argmin(history.val_loss)) + 1
    ax.axvline(best, color="gray", linestyle=":", label=f"best epoch {best}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), force=True)
    return path
