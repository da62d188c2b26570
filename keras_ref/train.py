"""8-2: training the CNN with the book's recipe, in Keras.

    python -m keras_ref.train [--epochs 20] [--batch-size 32] [--patience 2] [--seed 42] [--out DIR]

Writes DIR/best-cnn-model.keras (ModelCheckpoint, save_best_only), the book's legacy
DIR/best-cnn-model.h5, DIR/history.json and the book's loss plot DIR/history.png; prints the
validation and test accuracy and the prediction for the first validation image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fashion_cnn.extras import require

require("keras", "keras_ref.train")  # before the imports below: without Keras, one line

import absl.logging
import numpy as np

from fashion_cnn.cli import add_recipe, add_version
from fashion_cnn.errors import cli_entry
from fashion_cnn.files import atomic_write, output_folder, writing
from fashion_cnn.history import History, plot_history
from keras_ref.backend import keras, tf
from keras_ref.data import CLASS_NAMES, CLASS_NAMES_KO, load_book_data
from keras_ref.model import build_model

# Room a run needs in DIR: best-cnn-model.keras and best-cnn-model.h5, each the book's 333,526
# float32 weights and Adam's two moments of them (3 W), and the history files.
RUN_BYTES = 2 * 3 * 4 * 333_526 + 2**20


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch (training and validation), for history.json."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train(args: argparse.Namespace) -> dict:
    # The folder first, before the data or the model: a file in the way, a read-only or full
    # file system, or another run holding its lock is refused now, not after an epoch.
    with output_folder(args.out, lock=True, need_bytes=RUN_BYTES) as out:
        return _train(args, out)


def _train(args: argparse.Namespace, out: Path) -> dict:
    # Seeded as the book seeds it.
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    # Data: the book's load_data, reshape, /255.0 and train_test_split.
    train_scaled, val_scaled, train_target, val_target, test_scaled, test_target = (
        load_book_data(args.data_dir)
    )
    if args.limit:
        train_scaled, train_target = train_scaled[: args.limit], train_target[: args.limit]

    # The model and the book's recipe.
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    checkpoint_cb = keras.callbacks.ModelCheckpoint(
        str(out / "best-cnn-model.keras"), save_best_only=True
    )
    early_stopping_cb = keras.callbacks.EarlyStopping(
        patience=args.patience, restore_best_weights=True
    )
    # Keras calls the book's .h5 "legacy" at every save; we write it on purpose.
    absl.logging.set_verbosity(absl.logging.ERROR)
    timer = EpochTimer()
    with writing(out / "best-cnn-model.keras"):  # ModelCheckpoint writes it in place
        history = model.fit(
            train_scaled,
            train_target,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_data=(val_scaled, val_target),
            callbacks=[checkpoint_cb, early_stopping_cb, timer],
            verbose=args.verbose,
        )

    # The book's legacy best-cnn-model.h5: the restored best weights, written once after fit.
    # (Not a second ModelCheckpoint: Keras 3.15.1's h5 writer pops "optimizer" from the model's
    # live compile config, so every .keras saved after it would reload with RMSprop.)
    with writing(out / "best-cnn-model.h5"):
        model.save(out / "best-cnn-model.h5")

    # The book's loss plot.
    hist = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    hist["seconds"] = timer.seconds
    plot_history(History(hist["loss"], hist["val_loss"], "Keras"), "Keras: loss per epoch",
                 out / "history.png")

    # Evaluate the restored best weights on validation and test data.
    val_loss, val_acc = model.evaluate(val_scaled, val_target, verbose=0)
    test_loss, test_acc = model.evaluate(test_scaled, test_target, verbose=0)

    # The first validation image (the book: a bag, 가방).
    preds = model.predict(val_scaled[0:1], verbose=0)
    names = CLASS_NAMES_KO if args.lang == "ko" else CLASS_NAMES
    first = int(np.argmax(preds))

    best_epoch = int(np.argmin(hist["val_loss"])) + 1
    summary = {
        "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
        "epochs_run": len(hist["loss"]),
        "best_epoch": best_epoch,
        "val_loss": float(val_loss),
        "val_accuracy": float(val_acc),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_acc),
        "first_val_prediction": {"class": first, "name": names[first],
                                 "probability": float(preds[0, first])},
        "seed": args.seed,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "history": hist,
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    atomic_write(out / "history.json", lambda tmp: tmp.write_text(text), force=True)

    print(f"epochs run: {summary['epochs_run']}, best epoch: {best_epoch}")
    print(f"validation accuracy: {val_acc:.4f}  loss: {val_loss:.4f}")
    print(f"test accuracy: {test_acc:.4f}  loss: {test_loss:.4f}")
    print(f"first validation image: {names[first]} (p={preds[0, first]:.4f})")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m keras_ref.train",
        description="Train the book's CNN in Keras with the book's recipe (8-2).",
    )
    add_version(p)
    add_recipe(p, "runs/keras", "keras.utils.set_random_seed")
    p.add_argument("--lang", choices=("en", "ko"), default="en",
                   help="class names in English or the book's Korean (default: en)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="Keras fit verbosity (default: 1)")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
