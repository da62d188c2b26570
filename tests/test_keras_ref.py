"""The Keras reference trainer: a short real-data run writes every file the book's recipe names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity.verify.compare import sum_rtol

pytestmark = pytest.mark.slow  # real Keras training runs


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory, data_dir):
    from keras_ref.train import main

    out = tmp_path_factory.mktemp("keras-run")
    code = main(["--limit", "512", "--epochs", "3", "--patience", "1", "--out", str(out),
                 "--data-dir", str(data_dir), "--verbose", "0"])
    assert code == 0
    return out


def test_writes_checkpoints_history_and_plot(keras_run):
    for name in ("best-cnn-model.keras", "best-cnn-model.h5", "history.json", "history.png"):
        path = keras_run / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} not written"
    summary = json.loads((keras_run / "history.json").read_text())
    hist = summary["history"]
    assert set(hist) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert len(hist["loss"]) == summary["epochs_run"] == len(hist["seconds"])
    assert summary["best_epoch"] == int(np.argmin(hist["val_loss"])) + 1
    assert 0.0 < summary["test_accuracy"] <= 1.0


def test_checkpoint_holds_the_restored_best_weights(keras_run, data_dir):
    """EarlyStopping(restore_best_weights) + ModelCheckpoint(save_best_only): the saved model
    scores the recorded best validation loss."""
    import keras

    from keras_ref.data import load_book_data

    summary = json.loads((keras_run / "history.json").read_text())
    _, val_scaled, _, val_target, _, _ = load_book_data(data_dir)
    for name in ("best-cnn-model.keras", "best-cnn-model.h5"):
        model = keras.models.load_model(keras_run / name)
        loss, _ = model.evaluate(val_scaled, val_target, verbose=0)
        # The same weights on the same 12,000 images, the mean of positive losses summed in
        # another order (fit's running mean against evaluate's): within sum_rtol(12000) of it.
        rel = sum_rtol(12000)
        assert loss == pytest.approx(min(summary["history"]["val_loss"]), rel=rel), name
        assert loss == pytest.approx(summary["val_loss"], rel=rel), name


def test_bad_arguments_exit_cleanly(capsys):
    from keras_ref.train import main

    for argv in (["--epochs", "0"], ["--batch-size", "many"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_keras_checkpoint_keeps_its_adam_optimizer(keras_run):
    """The .keras reloads with the Adam it was trained with. (Keras 3.15.1's legacy-h5 writer
    mutates the model's compile config; saving the book's .h5 mid-training once made every later
    .keras reload with RMSprop.)"""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "Skipping variable loading for optimizer"
        model = keras.models.load_model(keras_run / "best-cnn-model.keras")
    assert type(model.optimizer).__name__ == "Adam"
    assert model.optimizer.epsilon == pytest.approx(1e-7)  # a config value: a float32 round trip
