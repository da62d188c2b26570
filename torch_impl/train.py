"""8-2: training the CNN with the book's recipe, in PyTorch.

    python -m torch_impl.train [--device auto|cpu|cuda|cuda:N|mps] [--epochs 20] [--batch-size 32]
                               [--lr 1e-3] [--patience 2] [--seed 42] [--init keras|torch]
                               [--out DIR] [--resume] [--resume-from FILE] [--limit N]
                               [--data-dir DIR] [--compile] [--threads N|auto]
    torchrun --nproc-per-node N -m torch_impl.train …   (DistributedDataParallel; the same recipe
                               with --batch-size the global batch: see torch_impl/distributed.py)

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
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fashion_cnn.threads import TRAIN_THREADS_EPILOG, prepare_cli_env, threads_arg

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import torch
from torch import nn

from fashion_cnn.cli import add_device, add_recipe, add_version, positive_float
from fashion_cnn.errors import cli_entry
from fashion_cnn.fashion_mnist import CLASS_NAMES
from fashion_cnn.files import atomic_write, output_folder
from fashion_cnn.history import History, plot_history
from fashion_cnn.thread_tuner import ThreadTuner
from torch_impl import distributed as ddp
from torch_impl.callbacks import EarlyStopping, ModelCheckpoint
from torch_impl.checkpoint import EXPECTED_SHAPES, save_state_dict
from torch_impl.data import BookData, load_book_data
from torch_impl.device import (
    device_name,
    numerics,
    preferred_memory_format,
    seed_everything,
    thread_tuner,
    versions,
)
from torch_impl.epoch import make_train_step, progress_bar, train_epoch
from torch_impl.evaluate import EvalResult
from torch_impl.model import BookCNN, PoolFirst, predict_proba
from torch_impl.optim import KerasAdam
from torch_impl.resume import (
    HISTORY_KEYS,
    LAST_FILE,
    LAST_FORMAT,
    RESUME_KEYS,
    RunState,
    check_same_run,
    cpu_state_dict,
    load_last,
    load_training_start,
    rng_state,
    save_last,
    set_rng_state,
)

BEST_FILE = "best-cnn-model.pt"
HISTORY_FILE = "history.json"
PLOT_FILE = "history.png"
# Room a run needs in DIR: best-cnn-model.pt (the float32 weights, W) and last.pt (weights, Adam's
# two moments, best weights: 4 W) — twice while each is replaced — and the history files.
WEIGHT_BYTES = 4 * sum(math.prod(shape) for shape in EXPECTED_SHAPES.values())
RUN_BYTES = 2 * 5 * WEIGHT_BYTES + 2**20


@dataclass(frozen=True)
class TrainConfig:
    """One training run: the command line's options, with the same names and defaults."""

    device: str = "auto"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 2
    seed: int = 42
    init: str = "keras"  # "keras": Glorot-uniform kernels, zero biases; "torch": its defaults
    out: str | Path = "runs/torch"
    resume: bool = False
    resume_from: str | Path | None = None  # a checkpoint with its optimizer: a new run from it
    limit: int = 0  # train on the first N training examples; 0 = all 48,000
    data_dir: str | Path | None = None
    compile: bool = False
    threads: int = 0  # 0 = auto: torch's default, which the command line sets (THREADS_EPILOG)

    def run_keys(self) -> dict:
        """What last.pt records of the settings (those --resume must match, and the rest)."""
        return {k: getattr(self, k) for k in (*RESUME_KEYS, "patience", "epochs")}


# ---------------------------------------------------------------------------------------------
# The run


def train(config: TrainConfig, data: BookData | None = None,
          world: ddp.World | None = None) -> dict:
    """Train with `config`; returns the history.json summary.

    `data` is the book's split already in memory (default: loaded from `config.data_dir`).
    `world` is this process's rank among N (default: torchrun's environment, or one process).
    """
    world = ddp.world_from_env() if world is None else world
    # Under torchrun the process group comes first (rank 0's checks below reach every rank).
    # Then the folder, before the data or a model: a file in the way, a read-only or full file
    # system, or another run holding its lock is refused now, not after an epoch.
    with ddp.session(world, config.device) as device, ddp.main_only(
        world, lambda: output_folder(config.out, lock=True, need_bytes=RUN_BYTES)
    ) as out:
        threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            with numerics(device):
                run = _set_up(config, out, device, data, world)
                forward, step_fn = _forwards(run)
                run.tuner = thread_tuner(config.threads, device, run.world.distributed)
                step_fn = step_fn if run.tuner is None else run.tuner.wrap(step_fn)
                while run.state.epoch < config.epochs and not run.state.stopped:
                    _epoch(run, forward, step_fn)
                return _finish(run)
        finally:
            torch.set_num_threads(threads)


@dataclass
class _Run:
    """One run's working parts, handed from step to step: set-up, the epochs, the end."""

    config: TrainConfig
    out: Path
    device: torch.device
    world: ddp.World
    run_keys: dict  # what last.pt records of the settings
    data: BookData  # on the device; training images cut to --limit
    model: BookCNN
    optimizer: KerasAdam
    shuffle: torch.Generator  # the epochs' order (its state is in last.pt)
    stopper: EarlyStopping
    checkpoint: ModelCheckpoint
    state: RunState
    best_weights: dict[str, torch.Tensor] | None = None  # EarlyStopping's, on the CPU
    tuner: ThreadTuner | None = None  # --threads auto on the CPU: the count follows the load


def _set_up(config: TrainConfig, out: Path, device: torch.device, data: BookData | None,
            world: ddp.World) -> _Run:
    """Seed, build the model and its optimizer, put the data on the device; with --resume,
    continue from last.pt."""
    run_keys = config.run_keys() | {"world_size": world.size}
    # Rank 0 reads and checks last.pt; every rank gets it.
    last = ddp.on_main(world, lambda: _load_last(config, out / LAST_FILE, run_keys))
    start = None
    if config.resume_from is not None and last is None:
        start = ddp.on_main(world, lambda: load_training_start(Path(config.resume_from)))

    seed_everything(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    # The model is built right after seeding, so --init torch draws the same weights every time.
    model = BookCNN(init=config.init)
    data = _on_device(config, load_book_data(config.data_dir) if data is None else data, device)
    model = model.to(device=device, memory_format=preferred_memory_format(device))
    run = _Run(config, out, device, world, run_keys, data, model,
               KerasAdam(model.parameters(), lr=config.lr), shuffle,
               EarlyStopping(patience=config.patience), ModelCheckpoint(), RunState())
    if last is not None:
        _resume(run, last)
    elif start is not None:
        _start_from(run, *start)
    return run


def _start_from(run: _Run, model: dict, optimizer: dict) -> None:
    """--resume-from: a new run (epoch 1, fresh callbacks) from a checkpoint's weights and
    Adam state — Keras's `iterations` carried on, its learning rate the file's."""
    run.model.load_state_dict(model)
    run.optimizer.load_state_dict(optimizer)
    steps = max((int(s["step"].item()) for s in run.optimizer.state.values()), default=0)
    print(f"starting from {run.config.resume_from}: its weights and Adam's state after "
          f"{steps} steps (lr {run.optimizer.param_groups[0]['lr']:.7g})")


def _load_last(config: TrainConfig, path: Path, run_keys: dict) -> dict | None:
    last = load_last(path) if config.resume else None
    if last is not None:
        check_same_run(last, run_keys, path)
    return last


def _on_device(config: TrainConfig, data: BookData, device: torch.device) -> BookData:
    """The split on the device, images in its preferred memory format, training cut to --limit."""
    fmt = preferred_memory_format(device)
    train_x, train_y = data.train_x, data.train_y
    if config.limit:
        train_x, train_y = train_x[: config.limit], train_y[: config.limit]
    train_x, val_x, test_x = (t.to(device).contiguous(memory_format=fmt)
                              for t in (train_x, data.val_x, data.test_x))
    return BookData(train_x, train_y.to(device), val_x, data.val_y.to(device), test_x,
                    data.test_y.to(device))


def _resume(run: _Run, last: dict) -> None:
    """Continue from last.pt (already validated): weights, Adam, callbacks, history, RNGs."""
    run.model.load_state_dict(last["model"])
    run.optimizer.load_state_dict(last["optimizer"])
    run.stopper = EarlyStopping(**{**last["early_stopping"], "patience": run.config.patience})
    run.state = RunState(**last["run"])
    run.checkpoint = ModelCheckpoint(run.state.checkpoint_best)
    run.best_weights = last["best_weights"]
    set_rng_state(last["rng"], run.shuffle)
    print(f"resuming {run.out / LAST_FILE} after epoch {run.state.epoch}")


def _forwards(run: _Run) -> tuple[nn.Module, Callable]:
    """The forward validation runs (PoolFirst) and the training step (DDP's under torchrun)."""
    forward: nn.Module = PoolFirst(run.model)
    # Under torchrun DDP wraps the forward before it is compiled (PyTorch's order); validation
    # runs the plain forward on each rank's shard.
    train_forward = ddp.wrap(forward, run.device, run.world)
    if run.config.compile:
        forward = torch.compile(forward)
        train_forward = torch.compile(train_forward) if run.world.distributed else forward
    return forward, make_train_step(train_forward, run.optimizer, run.world)


def _epoch(run: _Run, forward: nn.Module, step_fn: Callable) -> None:
    """One epoch: train, validate, print Keras's line, then the callbacks and last.pt."""
    config, state = run.config, run.state
    steps = math.ceil(len(run.data.train_x) / config.batch_size)
    print(f"Epoch {state.epoch + 1}/{config.epochs}")
    start = time.perf_counter()
    with progress_bar(steps, sys.stdout.isatty()) as bar:
        ddp.reseed_dropout(run.world, config.seed, state.epoch)
        loss, acc = train_epoch(run.model, step_fn, run.data.train_x, run.data.train_y,
                                config.batch_size, run.shuffle, run.world, bar)
    val = ddp.evaluate(forward, run.data.val_x, run.data.val_y, run.world)
    seconds = time.perf_counter() - start
    values = (loss, acc, val.loss, val.accuracy, seconds)
    for key, value in zip(HISTORY_KEYS, values, strict=True):
        state.history[key].append(value)
    print(
        f"{steps}/{steps} - {seconds:.0f}s - {seconds / steps * 1e3:.0f}ms/step - "
        f"accuracy: {acc:.4f} - loss: {loss:.4f} - "
        f"val_accuracy: {val.accuracy:.4f} - val_loss: {val.loss:.4f}"
    )
    _callbacks(run, val.loss)


def _callbacks(run: _Run, val_loss: float) -> None:
    """Keras's callbacks on the epoch's val_loss, then last.pt (rank 0 writes the files)."""
    state = run.state
    # ModelCheckpoint(save_best_only=True): strictly lower val_loss (the first epoch always).
    if run.checkpoint.update(val_loss):
        state.checkpoint_best = run.checkpoint.best
        if run.world.is_main:
            save_state_dict(run.model, run.out / BEST_FILE, force=True)
    # EarlyStopping(restore_best_weights=True) keeps the first epoch's weights from the start.
    if run.best_weights is None:
        run.best_weights = cpu_state_dict(run.model)
    improved, stop = run.stopper.update(state.epoch, val_loss)
    if improved:
        run.best_weights = cpu_state_dict(run.model)
    state.epoch += 1
    state.stopped = stop
    if run.world.is_main:
        save_last(run.out / LAST_FILE, format=LAST_FORMAT, config=run.run_keys,
                  model=cpu_state_dict(run.model), optimizer=run.optimizer.state_dict(),
                  early_stopping=asdict(run.stopper), run=asdict(state),
                  best_weights=run.best_weights, rng=rng_state(run.shuffle))


def _finish(run: _Run) -> dict:
    """Restore the best weights, score them on validation and test data, write history.png and
    history.json; returns the summary."""
    state, stopper, world = run.state, run.stopper, run.world
    if state.stopped:
        print(f"Epoch {stopper.stopped_epoch + 1}: early stopping")
    if run.best_weights is not None:
        print(f"Restoring model weights from the end of the best epoch: {stopper.best_epoch + 1}.")
        run.model.load_state_dict(run.best_weights)

    run.model.eval()
    val, test = (ddp.evaluate(PoolFirst(run.model), *run.data.split(name), world)
                 for name in ("val", "test"))
    probs = predict_proba(run.model, run.data.val_x[:1])[0]  # (10,), the book's example

    if world.is_main:
        plot_history(History(state.history["loss"], state.history["val_loss"], "PyTorch"),
                     "PyTorch: loss per epoch", run.out / PLOT_FILE)
    summary = _summary(run, val, test, probs)
    if world.is_main:
        atomic_write(run.out / HISTORY_FILE,
                     lambda tmp: tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False)),
                     force=True)
    print(f"epochs run: {state.epoch}, best epoch: {summary['best_epoch']}")
    print(f"validation accuracy: {val.accuracy:.4f}  loss: {val.loss:.4f}")
    print(f"test accuracy: {test.accuracy:.4f}  loss: {test.loss:.4f}")
    return summary


def _summary(run: _Run, val: EvalResult, test: EvalResult, probs: torch.Tensor) -> dict:
    """history.json: the keys of keras_ref's summary, then this run's settings and machine."""
    config, first = run.config, int(probs.argmax())
    return {
        "framework": f"torch {torch.__version__}",
        "epochs_run": run.state.epoch,
        "best_epoch": run.stopper.best_epoch + 1,
        "stopped_early": run.state.stopped,
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "first_val_prediction": {"class": first, "name": CLASS_NAMES[first],
                                 "probability": float(probs[first])},
        "seed": config.seed,
        "batch_size": config.batch_size,
        "limit": config.limit,
        "lr": config.lr,
        "patience": config.patience,
        "init": config.init,
        "compile": config.compile,
        "device": str(run.device),
        "device_name": device_name(run.device),
        "threads": torch.get_num_threads(),
        "thread_tuning": None if run.tuner is None else run.tuner.report(),
        "world_size": run.world.size,
        "versions": versions(),
        "history": run.state.history,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        epilog=TRAIN_THREADS_EPILOG,
        prog="python -m torch_impl.train",
        description="Train the book's CNN in PyTorch with the book's recipe (8-2): Keras's Adam, "
        "batch 32, checkpoint on val_loss, early stopping with patience 2.",
    )
    add_version(p)
    add_device(p, d.device)
    add_recipe(p, str(d.out))
    p.add_argument("--lr", type=positive_float, default=d.lr,
                   help=f"Adam learning rate (default: {d.lr:g})")
    p.add_argument("--init", choices=("keras", "torch"), default=d.init,
                   help="initial weights: Keras's Glorot-uniform kernels and zero biases, as the "
                        f"book starts, or PyTorch's defaults (default: {d.init})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in OUT/last.pt (default: start afresh)")
    p.add_argument("--resume-from", metavar="FILE", type=Path, default=d.resume_from,
                   help="start from a checkpoint's weights and optimizer state: a .keras "
                        "saved with its optimizer (keras_ref.train's best-cnn-model.keras), or "
                        "a .pt from python -m parity.port SRC DST.pt --with-optimizer "
                        "(default: none)")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (default: off)")
    p.add_argument("--threads", type=threads_arg, default=d.threads, metavar="N|auto",
                   help="CPU threads for torch; wins over OMP_NUM_THREADS (default: auto, "
                        "see below; 0 = auto)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    try:
        train(config_from_args(build_parser().parse_args(argv)))
    except ddp.MainFailed:
        return 1  # rank 0 prints why
    return 0


if __name__ == "__main__":
    sys.exit(main())
