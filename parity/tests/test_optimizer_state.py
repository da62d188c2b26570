"""The optimizer's state crosses with the weights (`python -m parity.port … --with-optimizer`).

Real Keras, real files, real Fashion-MNIST batches (`test_training_parity`'s, dropout off on both
sides). Keras trains K steps with the book's Adam and saves a `.keras`; the port carries its
optimizer variables into the `.pt` (last.pt's layout: BookCNN's state_dict and KerasAdam's);
PyTorch continues from the file and Keras continues from the same file. The comparison is
`test_training_parity`'s per-step form, with its bounds, for the reason given there (Adam's
division turns the last bits of a gradient's sum into a large share of a step, so two free
runs drift apart chaotically): at each of Keras's weights PyTorch's own gradient is within
GRAD_RTOL of Keras's, and PyTorch's optimizer, carrying the state it read from the file and
given Keras's gradients, lands on Keras's weights and moments bit for bit (ADAM_ULPS = 0). A
restarted optimizer (the port without the state) and torch.optim.Adam (given the ported state)
fail that bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from parity.book import KERAS_NAMES, keras_to_torch
from parity.tests.test_training_parity import (
    ADAM_ULPS,
    BATCH_SEED,
    BATCH_SIZE,
    assert_bitwise,
    assert_gradients_close,
    keras_weights,
    max_diff,
    to_nhwc,
    torch_loss_and_grads,
    torch_weights,
)
from torch_impl.model import BookCNN
from torch_impl.optim import KerasAdam

pytestmark = pytest.mark.slow  # Keras and PyTorch training steps

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

K = 3  # steps in each part: Keras K → PyTorch K → Keras K (≤ the 10 batches)
SAMPLES = "20"  # test images the port checks before writing


@pytest.fixture(scope="module")
def batches(book_data):
    """test_training_parity's batches: 3K of 32 real training images (its seed), NCHW."""
    generator = torch.Generator().manual_seed(BATCH_SEED)
    order = torch.randperm(len(book_data.train_x), generator=generator)[: 3 * K * BATCH_SIZE]
    x, y = book_data.train_x[order], book_data.train_y[order]
    return list(zip(x.split(BATCH_SIZE), y.split(BATCH_SIZE), strict=True))


def port(src, dst, *flags) -> None:
    from parity.port import main

    assert main([str(src), str(dst), "--samples", SAMPLES, *flags]) == 0


def keras_step(model, x, y) -> dict[str, np.ndarray]:
    """One step of `model.optimizer` on one batch, dropout off; Keras's gradient, PyTorch's
    layout."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y.numpy(), model(to_nhwc(x), training=False))
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    named = {n: g.numpy() for n, g in zip(KERAS_NAMES, grads, strict=True)}
    return keras_to_torch(named, "Keras gradients")


def keras_state(model) -> tuple[dict, dict, dict]:
    """Weights, m and v of the book's model and its Adam, PyTorch's names and layout."""
    opt = model.optimizer
    return (keras_weights(model.weights), keras_weights(opt._momentums, "m"),
            keras_weights(opt._velocities, "v"))


@pytest.fixture(scope="module")
def keras_run(batches, tmp_path_factory):
    """The book's model and Adam in Keras: 3K steps, the `.keras` saved after K, and every
    state and gradient on the way (PyTorch's layout)."""
    from keras_ref.model import build_model

    folder = tmp_path_factory.mktemp("state")
    keras.utils.set_random_seed(42)
    with tf.device("/CPU:0"):
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        states, grads = [], []
        for step, (x, y) in enumerate(batches[: 3 * K], start=1):
            grads.append(keras_step(model, x, y))
            states.append(keras_state(model))
            if step == K:
                model.save(folder / "after-k.keras")
    return {"folder": folder, "states": states, "grads": grads}


def torch_from(path):
    """The BookCNN and KerasAdam torch_impl.train resumes from a last.pt-layout file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = BookCNN()
    model.load_state_dict(ckpt["model"])
    optimizer = KerasAdam(model.parameters(), lr=ckpt["optimizer"]["param_groups"][0]["lr"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return model.eval(), optimizer


def continue_in_torch(model, optimizer, keras_run, first: int, batches):
    """Steps first+1 … first+K in PyTorch: its own gradient checked against Keras's at each of
    Keras's weights, then Keras's gradient applied; weights, m and v against Keras's, each
    step. Returns the worst gradient ratio."""
    worst = 0.0
    params = dict(model.named_parameters())
    for step in range(first + 1, first + K + 1):
        x, y = batches[step - 1]
        _, grads = torch_loss_and_grads(model, x, y)
        worst = max(worst, assert_gradients_close(keras_run["grads"][step - 1], grads,
                                                  f"step {step}: gradients"))
        for name, p in params.items():
            p.grad = torch.from_numpy(keras_run["grads"][step - 1][name].copy())
        optimizer.step()
        w, m, v = keras_run["states"][step - 1]
        assert_bitwise(w, torch_weights(model), f"step {step}: weights")
        assert_bitwise(m, {n: optimizer.state[p]["exp_avg"].numpy() for n, p in params.items()},
                       f"step {step}: m")
        assert_bitwise(v, {n: optimizer.state[p]["exp_avg_sq"].numpy()
                           for n, p in params.items()}, f"step {step}: v")
    return worst


def test_keras_adam_state_continues_in_pytorch(keras_run, batches):
    """Keras K steps → .keras → port --with-optimizer → PyTorch K steps on Keras's path, step by
    step; Keras continuing from the same file takes the same steps (its own restore)."""
    folder = keras_run["folder"]
    port(folder / "after-k.keras", folder / "after-k.pt", "--with-optimizer")
    model, optimizer = torch_from(folder / "after-k.pt")
    assert optimizer.state[next(model.parameters())]["step"].item() == K
    worst = continue_in_torch(model, optimizer, keras_run, K, batches)
    with tf.device("/CPU:0"):
        again = keras.models.load_model(folder / "after-k.keras")
        assert int(again.optimizer.iterations.numpy()) == K
        for step in range(K + 1, 2 * K + 1):
            keras_step(again, *batches[step - 1])
            w, m, v = keras_state(again)
            assert_bitwise(keras_run["states"][step - 1][0], w, f"Keras from the file, step {step}")
    print(f"\nPyTorch from the ported state, {K} steps: weights, m, v at {ADAM_ULPS} ulps; "
          f"gradients worst {worst:.2e} of their scale")


def test_without_the_state_pytorch_leaves_kerass_path(keras_run, batches):
    """The negative controls: the weights ported alone (a fresh KerasAdam: the optimizer
    restarted), and torch.optim.Adam given the ported state, both leave Keras's path at the
    first step."""
    folder = keras_run["folder"]
    port(folder / "after-k.keras", folder / "weights-only.pt", "--force")
    model = BookCNN()
    model.load_state_dict(torch.load(folder / "weights-only.pt", weights_only=True))
    with pytest.raises(AssertionError, match="float32 steps away"):
        continue_in_torch(model.eval(), KerasAdam(model.parameters()), keras_run, K, batches)
    restarted = max_diff(keras_run["states"][K][0], torch_weights(model))

    port(folder / "after-k.keras", folder / "adam.pt", "--with-optimizer")
    model, ours = torch_from(folder / "adam.pt")
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    for p in model.parameters():  # the ported state, the param group torch.optim.Adam's own
        adam.state[p] = {k: v.clone() for k, v in ours.state[p].items()}
    with pytest.raises(AssertionError, match="float32 steps away"):
        continue_in_torch(model, adam, keras_run, K, batches)
    print(f"\nrestarted optimizer after one step: {restarted:.2e} from Keras's weights")
    assert restarted > 1e-4, restarted


@pytest.mark.parametrize("with_state", [True, False])
def test_round_trip_keras_pytorch_keras_is_kerass_3k_steps(keras_run, batches, tmp_path,
                                                           with_state):
    """Keras K steps → port → PyTorch K steps (last.pt's layout, written as torch_impl.train
    writes it) → port back --with-optimizer → Keras K steps: Keras's 3K-step run, weights and
    Adam's moments bit for bit; without the state (the negative control) it is not."""
    from torch_impl.resume import cpu_state_dict

    flags = ("--with-optimizer",) if with_state else ()
    port(keras_run["folder"] / "after-k.keras", tmp_path / "k.pt", "--with-optimizer")
    model, optimizer = torch_from(tmp_path / "k.pt")
    continue_in_torch(model, optimizer, keras_run, K, batches)
    torch.save({"model": cpu_state_dict(model), "optimizer": optimizer.state_dict()},
               tmp_path / "last.pt")
    port(tmp_path / "last.pt", tmp_path / "back.keras", *flags)
    with tf.device("/CPU:0"):
        back = keras.models.load_model(tmp_path / "back.keras")
        if not with_state:
            back.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
        for step in range(2 * K + 1, 3 * K + 1):
            keras_step(back, *batches[step - 1])
        w, m, v = keras_state(back)
    reference = keras_run["states"][3 * K - 1]
    if with_state:
        assert int(back.optimizer.iterations.numpy()) == 3 * K
        for name, mine, theirs in zip("wmv", (w, m, v), reference, strict=True):
            assert_bitwise(theirs, mine, f"after the round trip, {name}")
    else:
        with pytest.raises(AssertionError, match="float32 steps away"):
            assert_bitwise(reference[0], w, "restarted in Keras")


def test_torch_impl_train_resumes_from_the_keras_file(keras_run, data_dir, tmp_path):
    """`python -m torch_impl.train --resume-from after-k.keras` continues Keras's run with its
    Adam state (K steps, then 2 more: the last.pt it writes counts K + 2), loading no
    TensorFlow; the ported .pt gives the same first step."""
    import os
    import subprocess
    import sys

    src = keras_run["folder"] / "after-k.keras"
    code = ("import sys; from torch_impl.train import main; rc = main(sys.argv[1:]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "print('loaded:', bad); sys.exit(rc or bool(bad))")
    args = ["--resume-from", str(src), "--epochs", "1", "--limit", "64", "--out",
            str(tmp_path / "run"), "--data-dir", str(data_dir), "--device", "cpu"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"after {K} steps" in done.stdout and "loaded: []" in done.stdout, done.stdout
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    steps = {int(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {K + 2}, steps
