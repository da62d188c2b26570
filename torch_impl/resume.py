"""What `--resume` needs: the run's state between epochs, written to last.pt after each one.

last.pt holds plain types and tensors only (model, optimizer, early stopping, best weights,
history, every RNG state), so it loads with `torch.load(weights_only=True)`; a resumed CPU run
gives exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.files import atomic_write
from torch_impl.checkpoint import torch_bytes

LAST_FILE = "last.pt"
LAST_FORMAT = 1
# Settings that must match for --resume to continue the same run (epochs and patience may grow).
RESUME_KEYS = ("seed", "batch_size", "lr", "limit", "init")
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")


@dataclass
class RunState:
    """Everything that carries from one epoch to the next (and into last.pt)."""

    epoch: int = 0  # epochs completed
    stopped: bool = False
    checkpoint_best: float | None = None  # ModelCheckpoint's own `best`
    history: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in HISTORY_KEYS}
    )


# --- RNG states as plain types (last.pt loads with weights_only=True) ---------------------------


def rng_state(shuffle: torch.Generator) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "shuffle": shuffle.get_state(),
    }


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    shuffle.set_state(state["shuffle"])


# --- last.pt ------------------------------------------------------------------------------------


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, in the standard contiguous layout."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_last(path: Path, **payload) -> None:
    data = torch_bytes(payload)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), force=True)


def load_last(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: nothing to resume (no such file); run without --resume first")
    try:
        last = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise UserError(f"{path}: not a readable training checkpoint ({first_line(err)})") from None
    if not isinstance(last, dict) or last.get("format") != LAST_FORMAT:
        raise UserError(f"{path}: not a last.pt written by torch_impl.train")
    return last


def check_same_run(last: dict, config: dict, path: Path) -> None:
    """Refuse to resume with other settings than the run was started with."""
    saved = last["config"]
    for key in RESUME_KEYS:
        if saved[key] != config[key]:
            raise UserError(
                f"{path}: was trained with --{key.replace('_', '-')} {saved[key]}, "
                f"not {config[key]}; resume with the same settings"
            )
