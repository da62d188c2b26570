"""torch_impl.train: files written, Keras's early stopping, exact resume, determinism, CLI errors.

Short real-data runs on CPU (`--limit`). One recipe is used for most tests because, on the first
256 training images with batch 8 and lr 0.01, the model overfits within a few epochs: validation
loss falls, then rises, and with --patience 1 training stops one epoch after its best and must
restore it. Which epoch is best is a property of the run on this machine (its float32 rounding),
so the tests read it from the uninterrupted run and check everything else against it.
"""

from __future__ import annotations

import json

import pytest
import torch

from torch_impl import train as train_mod
from torch_impl.callbacks import EarlyStopping
from torch_impl.checkpoint import load_state_dict
from torch_impl.epoch import make_train_step
from torch_impl.model import BookCNN, PoolFirst, predict_proba
from torch_impl.optim import KerasAdam
from torch_impl.train import TrainConfig, build_parser, config_from_args, main

pytestmark = pytest.mark.slow  # real training runs

HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
# Keys keras_ref/train.py writes to its history.json; ours must hold them all to compare runs.
KERAS_SUMMARY_KEYS = {
    "framework", "epochs_run", "best_epoch", "val_loss", "val_accuracy", "test_loss",
    "test_accuracy", "first_val_prediction", "seed", "batch_size", "limit", "history",
}
EARLY_STOP_ARGS = ["--limit", "256", "--batch-size", "8", "--lr", "0.01", "--patience", "1"]
EARLY_STOP_EPOCHS = "8"  # room to overfit: the run stops well before


def run(book_data, out, *args: str) -> dict:
    """train() on the session's data (no reload), as `python -m torch_impl.train` would run it."""
    args = build_parser().parse_args(["--device", "cpu", "--out", str(out), *args])
    return train_mod.train(config_from_args(args), data=book_data)


def last(out) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


@pytest.fixture(scope="module")
def early_stop_run(book_data, tmp_path_factory):
    """The early-stopping recipe, uninterrupted (up to 8 epochs; it stops earlier)."""
    out = tmp_path_factory.mktemp("early-stop")
    return out, run(book_data, out, *EARLY_STOP_ARGS, "--epochs", EARLY_STOP_EPOCHS)


@pytest.fixture(scope="module")
def interrupted_run(book_data, tmp_path_factory, early_stop_run):
    """The same recipe killed after its best epoch (last.pt is written after every epoch), then
    resumed.

    Returns (dir, last.pt as it was after the best epoch, the resumed run's summary).
    """
    best = early_stop_run[1]["best_epoch"]
    out = tmp_path_factory.mktemp("interrupted")
    run(book_data, out, *EARLY_STOP_ARGS, "--epochs", str(best))
    after_best = last(out)
    resumed = run(book_data, out, *EARLY_STOP_ARGS, "--epochs", EARLY_STOP_EPOCHS, "--resume")
    return out, after_best, resumed


def test_short_run_writes_every_file(tmp_path, data_dir, capsys):
    assert main(["--device", "cpu", "--limit", "512", "--epochs", "2", "--out", str(tmp_path),
                 "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Epoch 1/2"
    assert printed[-3].startswith("epochs run: 2, best epoch: ")
    assert printed[-2].startswith("validation accuracy: ")
    assert printed[-1].startswith("test accuracy: ")

    summary = json.loads((tmp_path / "history.json").read_text())
    assert KERAS_SUMMARY_KEYS <= summary.keys(), KERAS_SUMMARY_KEYS - summary.keys()
    assert set(summary["history"]) == HISTORY_KEYS
    assert all(len(v) == 2 for v in summary["history"].values())
    assert summary["epochs_run"] == 2 and summary["limit"] == 512 and summary["device"] == "cpu"
    assert 0.5 < summary["test_accuracy"] <= 1.0, "two epochs on 512 images learn something"

    state = torch.load(tmp_path / "best-cnn-model.pt", weights_only=True)
    model = BookCNN()
    model.load_state_dict(state)  # strict: exactly the book's CNN's keys and shapes
    assert load_state_dict(tmp_path / "best-cnn-model.pt").keys() == state.keys()
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resume = last(tmp_path)
    assert resume["run"]["epoch"] == 2
    assert isinstance(resume["optimizer"]["state"][0]["exp_avg"], torch.Tensor)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_early_stopping_restores_best_epoch(early_stop_run, interrupted_run):
    out, summary = early_stop_run
    val_losses = summary["history"]["val_loss"]
    best = summary["best_epoch"]
    # Keras's rule with patience 1: stop after the first epoch that does not improve on the best
    # (strictly lower val_loss); the best is the first minimum.
    assert summary["stopped_early"], f"val_loss never rose in {EARLY_STOP_EPOCHS}: {val_losses}"
    assert best == 1 + val_losses.index(min(val_losses)), val_losses
    assert summary["epochs_run"] == best + 1 == len(val_losses), val_losses
    assert all(b < a for a, b in zip(val_losses[: best - 1], val_losses[1:best], strict=True))
    # The restored model scores exactly what the best epoch scored (same weights, same batches).
    assert summary["val_loss"] == val_losses[best - 1]
    assert summary["val_accuracy"] == summary["history"]["val_accuracy"][best - 1]

    # A run of the same recipe stopped after the best epoch holds its weights: those must be the
    # ones saved to best-cnn-model.pt and restored at the end.
    at_best = interrupted_run[1]["model"]
    assert_same_weights(torch.load(out / "best-cnn-model.pt", weights_only=True), at_best,
                        f"best-cnn-model.pt is not epoch {best}")
    assert_same_weights(last(out)["best_weights"], at_best, f"restored weights are not {best}")
    assert not torch.equal(last(out)["model"]["dense2.weight"], at_best["dense2.weight"]), (
        f"epoch {best + 1} should have moved the weights on"
    )


def test_first_val_prediction_is_the_restored_models(early_stop_run, book_data):
    """history.json's example prediction is predict_proba's of the best weights: in eval mode,
    dropout off (the trainer's last evaluation leaves the model in training mode)."""
    out, summary = early_stop_run
    model = BookCNN()
    model.load_state_dict(torch.load(out / "best-cnn-model.pt", weights_only=True))
    probs = predict_proba(model.to(memory_format=torch.channels_last), book_data.val_x[:1])[0]
    first = summary["first_val_prediction"]
    assert first["class"] == int(probs.argmax())
    assert first["probability"] == float(probs[first["class"]]), (first, probs.tolist())


def test_resume_equals_uninterrupted_run(early_stop_run, interrupted_run):
    out, full = early_stop_run
    resumed_out, _, resumed = interrupted_run
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert resumed["history"][key] == full["history"][key], f"history[{key!r}] differs"
    for key in ("epochs_run", "best_epoch", "val_loss", "test_loss", "test_accuracy"):
        assert resumed[key] == full[key], key
    assert_same_weights(last(resumed_out)["model"], last(out)["model"], "final weights differ")
    assert_same_weights(
        last(resumed_out)["optimizer"]["state"][7], last(out)["optimizer"]["state"][7],
        "Adam moments differ",
    )
    assert_same_weights(
        torch.load(resumed_out / "best-cnn-model.pt", weights_only=True),
        torch.load(out / "best-cnn-model.pt", weights_only=True),
        "best-cnn-model.pt differs",
    )


def test_same_seed_is_bitwise_identical(early_stop_run, book_data, tmp_path):
    out, first = early_stop_run
    second = run(book_data, tmp_path, *EARLY_STOP_ARGS, "--epochs", EARLY_STOP_EPOCHS)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert second["history"][key] == first["history"][key], f"history[{key!r}] differs"
    assert_same_weights(last(tmp_path)["model"], last(out)["model"], "same seed, other weights")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_pool_first_is_bitwise_the_model(book_data, memory_format):
    """The trainer's PoolFirst forward gives BookCNN's logits and gradients, bit for bit."""
    torch.manual_seed(0)
    model = BookCNN(init="keras").to(memory_format=memory_format).train()
    x = book_data.train_x[:64].contiguous(memory_format=memory_format)
    y = book_data.train_y[:64]
    results = []
    for forward in (model, PoolFirst(model)):
        torch.manual_seed(1)  # the same dropout mask for both
        model.zero_grad(set_to_none=True)
        logits = forward(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (logits_a, grads_a), (logits_b, grads_b) = results
    assert torch.equal(logits_a, logits_b), "PoolFirst logits differ from BookCNN.forward"
    # The case that needs the argument: 2×2 windows whose conv outputs are all ≤ 0 (ReLU first
    # makes them ties at 0). Real images have plenty.
    with torch.no_grad():
        all_nonpositive = torch.nn.functional.max_pool2d(model.conv1(x), 2) <= 0
    assert all_nonpositive.sum() > 100, "no all-negative windows: the test shows nothing"
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), f"gradient of {name} differs"


@pytest.mark.parametrize("n", [32, 9, 24, 31])
def test_step_is_the_batch_mean_bitwise(book_data, n):
    """For one process the step's loss, the summed cross-entropy ÷ (n / 1) that lets DDP weight
    unequal slices, is F.cross_entropy's mean bit for bit: its value and every gradient, on full
    and partial batches (where multiplying by 1/n instead would round differently)."""
    torch.manual_seed(0)
    start = BookCNN(init="keras").state_dict()
    x, y = book_data.train_x[:n], book_data.train_y[:n]
    results = []
    for via_step in (False, True):
        model = BookCNN()
        model.load_state_dict(start)
        torch.manual_seed(1)  # the same dropout mask for both
        if via_step:  # the optimizer's update leaves .grad as the backward wrote it
            loss, _ = make_train_step(PoolFirst(model), KerasAdam(model.parameters()))(x, y, n)
        else:
            loss = torch.nn.functional.cross_entropy(PoolFirst(model.train())(x), y)
            loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b), f"batch of {n}: loss {loss_b.item()} vs {loss_a.item()}"
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), f"batch of {n}: gradient of {name}"


@pytest.mark.parametrize("ops", [
    # (val_losses, patience): plain, ties, a late recovery, patience 0, a NaN epoch
    ([1.0, 0.9, 0.95, 0.97, 0.8, 0.7], 2),
    ([1.0, 1.0, 1.0, 0.5], 2),
    ([1.0, 1.1, 0.9, 1.2, 1.3, 0.1], 2),
    ([1.0, 0.9, 0.95], 0),
    ([0.5, 0.4, 0.6, 0.7, 0.3], 3),
    ([1.0, float("nan"), 0.9, 1.1, 1.2], 2),
])
def test_early_stopping_matches_keras(ops):
    """Our EarlyStopping against keras.callbacks.EarlyStopping on the same val_loss sequence."""
    keras = pytest.importorskip("keras")
    val_losses, patience = ops
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    callback = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    callback.set_model(model)
    callback.on_train_begin()
    ours = EarlyStopping(patience=patience)
    for epoch, value in enumerate(val_losses):
        model.stop_training = False
        callback.on_epoch_end(epoch, {"val_loss": value})
        _, stop = ours.update(epoch, value)
        assert stop == model.stop_training, f"epoch {epoch}: {stop=}, Keras {model.stop_training}"
        assert (ours.wait, ours.best_epoch) == (callback.wait, callback.best_epoch), epoch
        if stop:
            break


def test_device_cuda_without_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert main(["--device", "cuda", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "--device cpu" in err[0], err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("argv", [
    ["--device", "gpu"], ["--epochs", "ten"], ["--init", "glorot"], ["--no-such-flag"],
    ["--epochs", "0"], ["--batch-size", "-1"], ["--lr", "nan"], ["--lr", "0"], ["--limit", "-5"],
    ["--seed", "-1"], ["--seed", "4294967296"], ["--threads", "-1"],
])
def test_bad_usage_exits_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "bad usage created the output folder"


def test_nothing_to_resume_exits_1(tmp_path, capsys):
    assert main(["--device", "cpu", "--out", str(tmp_path), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to resume" in err[0], err


def test_train_config_defaults_are_the_command_lines():
    """The dataclass and the parser agree on every default, so library and CLI runs match."""
    assert config_from_args(build_parser().parse_args([])) == TrainConfig()


def test_resume_with_other_settings_is_refused(early_stop_run, capsys):
    out, _ = early_stop_run
    before = (out / "last.pt").read_bytes()
    assert main(["--device", "cpu", "--out", str(out), *EARLY_STOP_ARGS, "--batch-size", "16",
                 "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size 8, not 16" in err[0], err
    assert (out / "last.pt").read_bytes() == before, "a refused resume touched last.pt"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_short_run(book_data, tmp_path):
    config = TrainConfig(device="cuda", out=tmp_path, limit=512, epochs=2)
    summary = train_mod.train(config, data=book_data)
    assert summary["device"].startswith("cuda") and summary["epochs_run"] == 2
    assert 0.5 < summary["test_accuracy"] <= 1.0
    load_state_dict(tmp_path / "best-cnn-model.pt")  # CPU tensors, validated
