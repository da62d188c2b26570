"""8-2: training the CNN with the book's recipe, in PyTorch.

    python -m torch_impl.train [--device auto|cpu|cuda|cuda:N|mps] [--epochs 20] [--batch-size 32]
                               [--lr 1e-3] [--patience 2] [--seed 42] [--init keras|torch]
                               [--out DIR] [--resume] [--limit N] [--data-dir DIR] [--compile]
                               [--threads N]
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from fashion_cnn.cli import add_device, add_recipe, non_negative_int, positive_float
from fashion_cnn.errors import cli_entry
from fashion_cnn.fashion_mnist import CLASS_NAMES
from fashion_cnn.files import atomic_write, output_folder
from fashion_cnn.history import History, plot_history
from torch_impl import distributed as ddp
from torch_impl.callbacks import EarlyStopping, ModelCheckpoint
from torch_impl.checkpoint import EXPECTED_SHAPES, save_state_dict
from torch_impl.data import BookData, load_book_data
from torch_impl.device import (
    device_name,
    numerics,
    preferred_memory_format,
    seed_everything,
    versions,
)
from torch_impl.epoch import make_train_step, train_epoch
from torch_impl.model import BookCNN, PoolFirst
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
    limit: int = 0  # train on the first N training examples; 0 = all 48,000
    data_dir: str | Path | None = None
    compile: bool = False
    threads: int = 0  # 0 = torch's default

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
                return _train(config, out, device, data, world)
        finally:
            torch.set_num_threads(threads)


def _load_last(config: TrainConfig, path: Path, run_keys: dict) -> dict | None:
    last = load_last(path) if config.resume else None
    if last is not None:
        check_same_run(last, run_keys, path)
    return last


def _train(config: TrainConfig, out: Path, device: torch.device, data: BookData | None,
           world: ddp.World) -> dict:
    run_keys = config.run_keys() | {"world_size": world.size}
    # Rank 0 reads and checks last.pt; every rank gets it.
    last = ddp.on_main(world, lambda: _load_last(config, out / LAST_FILE, run_keys))

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
    checkpoint = ModelCheckpoint()
    state = RunState()
    best_weights: dict[str, torch.Tensor] | None = None

    if last is not None:
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        stopper = EarlyStopping(**{**last["early_stopping"], "patience": config.patience})
        state = RunState(**last["run"])
        checkpoint = ModelCheckpoint(state.checkpoint_best)
        best_weights = last["best_weights"]
        set_rng_state(last["rng"], shuffle)
        print(f"resuming {out / LAST_FILE} after epoch {state.epoch}")

    forward: nn.Module = PoolFirst(model)
    # Under torchrun DDP wraps the forward before it is compiled (PyTorch's order); validation
    # runs the plain forward on each rank's shard.
    train_forward = ddp.wrap(forward, device, world)
    if config.compile:
        forward = torch.compile(forward)
        train_forward = torch.compile(train_forward) if world.distributed else forward
    step_fn = make_train_step(train_forward, optimizer, world)
    steps = math.ceil(len(train_x) / config.batch_size)
    show_progress = sys.stdout.isatty()

    while state.epoch < config.epochs and not state.stopped:
        epoch = state.epoch
        print(f"Epoch {epoch + 1}/{config.epochs}")
        start = time.perf_counter()
        with _progress(steps, show_progress) as bar:
            ddp.reseed_dropout(world, config.seed, epoch)
            loss, acc = train_epoch(model, step_fn, train_x, train_y, config.batch_size, shuffle,
                                    world, bar)
        val = ddp.evaluate(forward, val_x, val_y, world)
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
        if checkpoint.update(val_loss):
            state.checkpoint_best = checkpoint.best
            if world.is_main:
                save_state_dict(model, out / BEST_FILE, force=True)
        # EarlyStopping(restore_best_weights=True) keeps the first epoch's weights from the start.
        if best_weights is None:
            best_weights = cpu_state_dict(model)
        improved, stop = stopper.update(epoch, val_loss)
        if improved:
            best_weights = cpu_state_dict(model)
        state.epoch += 1
        state.stopped = stop
        if not world.is_main:
            continue
        save_last(
            out / LAST_FILE,
            format=LAST_FORMAT,
            config=run_keys,
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
    val, test = (ddp.evaluate(PoolFirst(model), x, y, world)
                 for x, y in ((val_x, val_y), (test_x, test_y)))
    val_loss, val_acc, test_loss, test_acc = val.loss, val.accuracy, test.loss, test.accuracy
    with torch.inference_mode():
        probs = model.predict_proba(val_x[:1])[0].cpu()
    first = int(probs.argmax())

    if world.is_main:
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
        "world_size": world.size,
        "versions": versions(),
        "history": state.history,
    }
    if world.is_main:
        atomic_write(out / HISTORY_FILE,
                     lambda tmp: tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False)),
                     force=True)
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
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m torch_impl.train",
        description="Train the book's CNN in PyTorch with the book's recipe (8-2): Keras's Adam, "
        "batch 32, checkpoint on val_loss, early stopping with patience 2.",
    )
    add_device(p, d.device)
    add_recipe(p, str(d.out))
    p.add_argument("--lr", type=positive_float, default=d.lr,
                   help=f"Adam learning rate (default: {d.lr:g})")
    p.add_argument("--init", choices=("keras", "torch"), default=d.init,
                   help="initial weights: Keras's Glorot-uniform kernels and zero biases, as the "
                        f"book starts, or PyTorch's defaults (default: {d.init})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in OUT/last.pt (default: start afresh)")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (default: off)")
    p.add_argument("--threads", type=non_negative_int, default=d.threads, metavar="N",
                   help="CPU threads for torch (default: 0 = torch's default, one per core)")
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
