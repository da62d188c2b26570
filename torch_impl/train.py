"""8-2: training the CNN with the book's recipe, in PyTorch.

    python -m torch_impl.train [--device auto|cpu|cuda|cuda:N|mps] [--epochs 20] [--batch-size 32]
                               [--lr 1e-3] [--patience 2] [--seed 42] [--init keras|torch]
                               [--out DIR] [--resume] [--limit N] [--data-dir DIR] [--compile]
                               [--threads N]

The book's recipe, as `keras_ref/train.py` runs it: Adam with Keras's update rule
(`torch_impl.optim.KerasAdam`), cross-entropy on logits (= sparse categorical cross-entropy on
softmax outputs), batch 32, a fresh shuffle each epoch, validation after each epoch,
ModelCheckpoint(save_best_only) on val_loss → DIR/best-cnn-model.pt, and
EarlyStopping(patience=2, restore_best_weights=True) with Keras 3's exact semantics.

Writes DIR/best-cnn-model.pt (a plain state_dict), DIR/history.json (the keys of keras_ref's, so
the two runs compare), DIR/history.png (the book's loss plot) and DIR/last.pt (everything
`--resume` needs: model, optimizer, early-stopping state, best weights, history, RNG states).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashion_cnn.errors import UserError, cli_entry, first_line
from fashion_cnn.fashion_mnist import CLASS_NAMES
from fashion_cnn.files import atomic_write
from fashion_cnn.history import History, plot_history
from torch_impl.checkpoint import save_state_dict
from torch_impl.data import BookData, load_book_data
from torch_impl.device import preferred_memory_format, resolve_device
from torch_impl.evaluate import evaluate
from torch_impl.model import BookCNN, PoolFirst
from torch_impl.optim import KerasAdam

BEST_FILE = "best-cnn-model.pt"
LAST_FILE = "last.pt"
HISTORY_FILE = "history.json"
PLOT_FILE = "history.png"
LAST_FORMAT = 1
# Settings that must match for --resume to continue the same run (epochs and patience may grow).
RESUME_KEYS = ("seed", "batch_size", "lr", "limit", "init")


# ---------------------------------------------------------------------------------------------
# Device and determinism


def device_arg(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(
            f"invalid device {value!r} (choose auto, cpu, cuda, cuda:N or mps)"
        )
    return value


def seed_everything(seed: int) -> None:
    """Seed every generator a run may draw from: python, numpy, torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def numerics(device: torch.device) -> Iterator[None]:
    """Deterministic float32 for the duration of a run; the global settings are put back after.

    CPU kernels are deterministic once asked to be. On CUDA, cuDNN is pinned to deterministic
    algorithms and TF32 is off (the book's numbers are float32); max-pool's CUDA backward has no
    deterministic kernel, so `use_deterministic_algorithms` is left alone there.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic = saved[1]
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]
        torch.backends.cuda.matmul.allow_tf32 = saved[4]


# ---------------------------------------------------------------------------------------------
# Keras's callbacks, as plain state


@dataclass
class EarlyStopping:
    """keras.callbacks.EarlyStopping(monitor='val_loss', patience, restore_best_weights=True).

    Keras 3.15.1's rule, step for step: `wait` grows every epoch and is reset by a strict
    improvement (min_delta 0); training stops once wait ≥ patience (never after the first epoch);
    the best weights are remembered from the first epoch on and restored when training ends —
    whether it stopped early or ran all its epochs. Epochs are 0-based, as in Keras.
    """

    patience: int
    wait: int = 0
    best: float | None = None
    best_epoch: int = 0
    stopped_epoch: int = 0

    def update(self, epoch: int, val_loss: float) -> tuple[bool, bool]:
        """(improved, stop) after `epoch`."""
        self.wait += 1
        if self.best is None or val_loss < self.best:
            self.best, self.best_epoch, self.wait = val_loss, epoch, 0
            return True, False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return False, True
        return False, False


@dataclass
class RunState:
    """Everything that carries from one epoch to the next (and into last.pt)."""

    epoch: int = 0  # epochs completed
    stopped: bool = False
    checkpoint_best: float | None = None  # ModelCheckpoint's own `best`
    history: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in HISTORY_KEYS}
    )


HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")


# ---------------------------------------------------------------------------------------------
# RNG states as plain types (last.pt loads with weights_only=True)


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


# ---------------------------------------------------------------------------------------------
# One epoch, evaluation


def train_epoch(
    model: nn.Module,
    step_fn,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: torch.Generator,
    progress=None,
) -> tuple[float, float]:
    """One pass over (x, y) in a fresh random order; returns Keras's (loss, accuracy).

    Keras reports the running mean over the epoch's batches in training mode (dropout on):
    loss weighted by batch size, accuracy over examples. Both are summed on the device and read
    once at the end: no host synchronisation per step.
    """
    model.train()
    n = len(x)
    # Shuffle by index over the whole training set (one tensor on the device); the order comes
    # from a CPU generator of our own, so it is the same on every device.
    order = torch.randperm(n, generator=shuffle).to(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        loss, batch_correct = step_fn(x[idx], y[idx])
        loss_sum += loss * len(idx)
        correct += batch_correct
        if progress is not None:
            progress.update(1)
            if progress.n % 50 == 0:  # reading the loss syncs with the device: not every step
                seen = min(start + batch_size, n)
                progress.set_postfix_str(f"loss: {loss_sum.item() / seen:.4f}")
    return loss_sum.item() / n, correct.item() / n


def make_train_step(forward: nn.Module, optimizer: torch.optim.Optimizer):
    """The training step: forward, cross-entropy on logits, backward, Keras's Adam update."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = forward(xb)  # (B, 10)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == yb).sum()

    return step


# ---------------------------------------------------------------------------------------------
# Files


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, in the standard contiguous layout."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_last(path: Path, **payload) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp), force=True)


def load_last(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: nothing to resume (no such file); run without --resume first")
    try:
        last = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error to the user
        msg = first_line(err)
        raise UserError(f"{path}: not a readable training checkpoint ({msg})") from None
    if not isinstance(last, dict) or last.get("format") != LAST_FORMAT:
        raise UserError(f"{path}: not a last.pt written by torch_impl.train")
    return last


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda or "",
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        cpu = platform.processor() or platform.machine()
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
            cpu = models[0] if models else cpu
        except OSError:
            pass
        return f"{cpu} ({torch.get_num_threads()} threads)"
    return device.type


# ---------------------------------------------------------------------------------------------
# The run


def run_config(config: argparse.Namespace) -> dict:
    return {k: getattr(config, k) for k in (*RESUME_KEYS, "patience", "epochs")}


def train(config: argparse.Namespace, data: BookData | None = None) -> dict:
    """Train with `config` (the parsed command line); returns the history.json summary.

    `data` is the book's split already in memory (default: loaded from `config.data_dir`).
    """
    device = resolve_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        with numerics(device):
            return _train(config, out, device, data)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: argparse.Namespace, out: Path, device: torch.device, data: BookData | None
) -> dict:
    last = load_last(out / LAST_FILE) if config.resume else None
    if last is not None:
        saved = last["config"]
        for key in RESUME_KEYS:
            if saved[key] != getattr(config, key):
                raise UserError(
                    f"{out / LAST_FILE}: was trained with --{key.replace('_', '-')} "
                    f"{saved[key]}, not {getattr(config, key)}; resume with the same settings"
                )

    seed_everything(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    # The model is built right after seeding, so --init torch draws the same weights every time.
    model = BookCNN(init=config.init)

    if data is None:
        data = load_book_data(config.data_dir)
    fmt = preferred_memory_format(device)

    def on_device(t: torch.Tensor) -> torch.Tensor:
        return t.to(device).contiguous(memory_format=fmt)

    train_x, train_y = data.train_x, data.train_y
    if config.limit:
        train_x, train_y = train_x[: config.limit], train_y[: config.limit]
    train_x, val_x, test_x = map(on_device, (train_x, data.val_x, data.test_x))
    train_y, val_y, test_y = train_y.to(device), data.val_y.to(device), data.test_y.to(device)

    model = model.to(device=device, memory_format=fmt)
    optimizer = KerasAdam(model.parameters(), lr=config.lr)
    stopper = EarlyStopping(patience=config.patience)
    state = RunState()
    best_weights: dict[str, torch.Tensor] | None = None

    if last is not None:
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        stopper = EarlyStopping(**{**last["early_stopping"], "patience": config.patience})
        state = RunState(**last["run"])
        best_weights = last["best_weights"]
        set_rng_state(last["rng"], shuffle)
        print(f"resuming {out / LAST_FILE} after epoch {state.epoch}")

    forward: nn.Module = PoolFirst(model)
    if config.compile:
        forward = torch.compile(forward)
    step_fn = make_train_step(forward, optimizer)
    steps = math.ceil(len(train_x) / config.batch_size)
    show_progress = sys.stdout.isatty()

    while state.epoch < config.epochs and not state.stopped:
        epoch = state.epoch
        print(f"Epoch {epoch + 1}/{config.epochs}")
        start = time.perf_counter()
        with _progress(steps, show_progress) as bar:
            loss, acc = train_epoch(
                model, step_fn, train_x, train_y, config.batch_size, shuffle, bar
            )
        val = evaluate(forward, val_x, val_y)
        val_loss, val_acc = val.loss, val.accuracy
        seconds = time.perf_counter() - start
        for key, value in zip(HISTORY_KEYS, (loss, acc, val_loss, val_acc, seconds), strict=True):
            state.history[key].append(value)
        print(
            f"{steps}/{steps} - {seconds:.0f}s - {seconds / steps * 1e3:.0f}ms/step - "
            f"accuracy: {acc:.4f} - loss: {loss:.4f} - "
            f"val_accuracy: {val_acc:.4f} - val_loss: {val_loss:.4f}"
        )

        # ModelCheckpoint(save_best_only=True): strictly lower val_loss (the first epoch always).
        if state.checkpoint_best is None or val_loss < state.checkpoint_best:
            state.checkpoint_best = val_loss
            save_state_dict(model, out / BEST_FILE, force=True)
        # EarlyStopping(restore_best_weights=True) keeps the first epoch's weights from the start.
        if best_weights is None:
            best_weights = cpu_state_dict(model)
        improved, stop = stopper.update(epoch, val_loss)
        if improved:
            best_weights = cpu_state_dict(model)
        state.epoch += 1
        state.stopped = stop
        save_last(
            out / LAST_FILE,
            format=LAST_FORMAT,
            config=run_config(config),
            model=cpu_state_dict(model),
            optimizer=optimizer.state_dict(),
            early_stopping=asdict(stopper),
            run=asdict(state),
            best_weights=best_weights,
            rng=rng_state(shuffle),
        )
    if state.stopped:
        print(f"Epoch {stopper.stopped_epoch + 1}: early stopping")
    if best_weights is not None:
        print(f"Restoring model weights from the end of the best epoch: {stopper.best_epoch + 1}.")
        model.load_state_dict(best_weights)

    # Evaluate the restored best weights on validation and test data.
    model.eval()
    val, test = (evaluate(PoolFirst(model), x, y) for x, y in ((val_x, val_y), (test_x, test_y)))
    val_loss, val_acc, test_loss, test_acc = val.loss, val.accuracy, test.loss, test.accuracy
    with torch.inference_mode():
        probs = model.predict_proba(val_x[:1])[0].cpu()
    first = int(probs.argmax())

    plot_history(History(state.history["loss"], state.history["val_loss"], "PyTorch"),
                 "PyTorch: loss per epoch", out / PLOT_FILE)
    summary = {
        "framework": f"torch {torch.__version__}",
        "epochs_run": state.epoch,
        "best_epoch": stopper.best_epoch + 1,
        "stopped_early": state.stopped,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "first_val_prediction": {"class": first, "name": CLASS_NAMES[first],
                                 "probability": float(probs[first])},
        "seed": config.seed,
        "batch_size": config.batch_size,
        "limit": config.limit,
        "lr": config.lr,
        "patience": config.patience,
        "init": config.init,
        "compile": config.compile,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "history": state.history,
    }  # fmt: skip
    atomic_write(
        out / HISTORY_FILE,
        lambda tmp: tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False)),
        force=True,
    )
    print(f"epochs run: {state.epoch}, best epoch: {summary['best_epoch']}")
    print(f"validation accuracy: {val_acc:.4f}  loss: {val_loss:.4f}")
    print(f"test accuracy: {test_acc:.4f}  loss: {test_loss:.4f}")
    return summary


@contextmanager
def _progress(total: int, enabled: bool):
    """A tqdm bar over the epoch's batches on a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, unit="batch", leave=False, dynamic_ncols=True, file=sys.stdout)
    try:
        yield bar
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torch_impl.train",
        description="Train the book's CNN in PyTorch with the book's recipe (8-2): Keras's Adam, "
        "batch 32, checkpoint on val_loss, early stopping with patience 2.",
    )
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto, cpu, cuda, cuda:N or mps; auto picks cuda > mps > cpu, an absent "
                        "device is an error (default: auto)")
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs (default: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--patience", type=int, default=2, help="early-stopping patience (default: 2)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.add_argument("--init", choices=("keras", "torch"), default="keras",
                   help="initial weights: Keras's Glorot-uniform kernels and zero biases, as the "
                        "book starts, or PyTorch's defaults (default: keras)")
    p.add_argument("--out", default="runs/torch", help="output directory (default: runs/torch)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in OUT/last.pt (default: start afresh)")
    p.add_argument("--limit", type=int, default=0,
                   help="train on the first N training examples only, for smoke runs "
                        "(default: 0 = all 48,000)")
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: search, see README)")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (default: off)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default: 0 = torch's default, one per core)")
    return p  # fmt: skip


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be positive, not {getattr(args, name)}")
    for name in ("patience", "limit", "threads"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0, not {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be a positive number, not {args.lr}")
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
