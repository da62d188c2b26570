"""The optimizer's state for other models and optimizers, and hostile optimizer variables.

A Functional model with BatchNormalization (gamma and beta are trainable, the moving
statistics are no optimizer's) and a skip connection (Add), its Dense after a Flatten of an
(h, w, c) map (the row permutation), trained by Keras's SGD with momentum or a centered RMSprop
with momentum (three slots, each in its own block of `optimizer/vars`): Keras K steps → .keras →
port --with-optimizer → `parity.load_torch_training` → PyTorch K steps given Keras's gradients
(mapped by the rows) → `parity.save_keras_training` → Keras K steps is Keras's 3K steps, bit for
bit (the optimizers are elementwise: test_training_parity's ADAM_ULPS = 0). The same for
keras.applications' MobileNetV3Small with Adam, with PyTorch flushing subnormals as TensorFlow
does (without, some of its moments differ: the control).

Hostile `.keras` files (optimizer variables of the wrong shape, NaN or negative iterations, a
missing slot, none at all): one line naming the file, exit 1, DST not written.
"""

from __future__ import annotations

import io
import zipfile

import h5py
import numpy as np
import pytest
import torch

import parity
from parity.optimizer_state import trainable_rows
from parity.pipeline import read_source
from parity.tests.test_training_parity import ADAM_ULPS
from parity.verify.compare import ulp_distance

pytestmark = pytest.mark.slow  # Keras and PyTorch training steps

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

K = 2
OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
    "rmsprop_centered": lambda: keras.optimizers.RMSprop(momentum=0.5, centered=True),
}


def skip_model():
    """Conv → BatchNorm → ReLU → Conv, added to the ReLU's output → pool → Flatten → Dense."""
    layers = keras.layers
    inputs = keras.Input((28, 28, 1))
    a = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(4, 3, padding="same")(inputs)))
    b = layers.Conv2D(4, 3, padding="same")(a)
    x = layers.Flatten()(layers.MaxPooling2D(4)(layers.Add()([a, b])))
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


def keras_steps(model, images, labels, steps):
    """`steps` steps of model.optimizer (BatchNorm in inference mode); Keras's gradients."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    grads = []
    for i in steps:
        x, y = images[32 * i: 32 * (i + 1)], labels[32 * i: 32 * (i + 1)]
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        g = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(g, model.trainable_variables, strict=True))
        grads.append([t.numpy() for t in g])
    return grads


def torch_steps(module, optimizer, rows, grads, *, flush: bool) -> None:
    """PyTorch's steps on Keras's gradients, moved to PyTorch's layout by each parameter's row;
    with `flush`, subnormal results flushed to zero as TensorFlow's CPU kernels do."""
    params = dict(module.named_parameters())
    if flush and not torch.set_flush_denormal(True):
        pytest.fail("this CPU cannot flush subnormals to zero (no SSE3)")
    try:
        for step in grads:
            for row, g in zip(rows, step, strict=True):
                params[row.torch].grad = torch.from_numpy(np.ascontiguousarray(
                    row.transform.to_torch(g)))
            optimizer.step()
    finally:
        torch.set_flush_denormal(False)


def flat_state(optimizer) -> list[torch.Tensor]:
    return [t for s in optimizer.state_dict()["state"].values() for t in s.values()
            if isinstance(t, torch.Tensor)]


def assert_same(expected: list[np.ndarray], got: list[np.ndarray], what: str) -> None:
    far = [ulp_distance(e, g) for e, g in zip(expected, got, strict=True)]
    assert len(expected) == len(got) and max(far) <= ADAM_ULPS, f"{what}: {far} ulps"


def mobilenet_v3_small():
    """keras.applications' MobileNetV3Small at 32×32 (weights=None, 10 classes): depthwise
    convolutions, squeeze-and-excite multiplies, hard-swish operation nodes, 34 BatchNorms."""
    return keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)


def rgb32(images: np.ndarray) -> np.ndarray:
    """Fashion-MNIST images as the 32×32 RGB in [0, 255] an application takes."""
    return np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1) * 255.0


MODELS = {  # model, optimizer, input
    "skip-sgd_momentum": (skip_model, "sgd_momentum", lambda x: x),
    "skip-rmsprop_centered": (skip_model, "rmsprop_centered", lambda x: x),
    "mobilenetv3small-adam": (mobilenet_v3_small, "adam", rgb32),
}
OPTIMIZERS["adam"] = lambda: keras.optimizers.Adam(learning_rate=1e-3)


@pytest.mark.parametrize("case", sorted(MODELS))
def test_model_round_trip_with_its_optimizer(case, eval_images, tmp_path):
    build, name, prepare = MODELS[case]
    images = prepare(eval_images[0][: 32 * 3 * K]).astype(np.float32)
    labels = eval_images[1][: 32 * 3 * K]
    keras.utils.set_random_seed(7)
    with tf.device("/CPU:0"):
        model = build()
        model.compile(optimizer=OPTIMIZERS[name](), loss="sparse_categorical_crossentropy")
        keras_steps(model, images, labels, range(K))
        model.save(tmp_path / "k.keras")
        grads = keras_steps(model, images, labels, range(K, 2 * K))
        keras_steps(model, images, labels, range(2 * K, 3 * K))
        reference = [v.numpy() for v in model.optimizer.variables]
        reference_weights = [w.numpy() for w in model.weights]

    module, optimizer = parity.load_torch_training(tmp_path / "k.keras")
    assert type(optimizer).__name__ == {"sgd_momentum": "KerasSGD", "adam": "KerasAdam",
                                        "rmsprop_centered": "KerasRMSprop"}[name]
    rows = trainable_rows(read_source(tmp_path / "k.keras").built)
    # TensorFlow's CPU kernels flush subnormal results to zero (FTZ/DAZ), PyTorch's do not by
    # default: an application's tiny gradients (1e-18) square into Adam's (1 − β₂)·g² below
    # 2⁻¹²⁶, so Keras's arithmetic is PyTorch's with flush-denormal on. The control: without it,
    # MobileNetV3Small's moments come out otherwise.
    unflushed = parity.load_torch_training(tmp_path / "k.keras")
    torch_steps(*unflushed, rows, grads, flush=False)
    torch_steps(module, optimizer, rows, grads, flush=True)
    differ = [not torch.equal(a, b) for a, b in zip(
        flat_state(unflushed[1]), flat_state(optimizer), strict=True)]
    assert any(differ) == case.startswith("mobilenet"), f"{case}: {sum(differ)} differ unflushed"
    parity.save_keras_training(module, optimizer, tmp_path / "back.keras",
                               config=keras.optimizers.serialize(OPTIMIZERS[name]()))
    with tf.device("/CPU:0"):
        back = keras.models.load_model(tmp_path / "back.keras")
        assert int(back.optimizer.iterations.numpy()) == 2 * K
        keras_steps(back, images, labels, range(2 * K, 3 * K))
        assert_same(reference, [v.numpy() for v in back.optimizer.variables],
                    f"{name}: optimizer variables after the round trip")
        assert_same(reference_weights, [w.numpy() for w in back.weights],
                    f"{name}: weights after the round trip")


# --- hostile optimizer variables ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A .keras of the book's CNN saved by Keras after one Adam step, and one saved
    uncompiled."""
    from keras_ref.model import build_model

    folder = tmp_path_factory.mktemp("hostile-optimizer")
    keras.utils.set_random_seed(3)
    with tf.device("/CPU:0"):
        model = build_model()
        model.save(folder / "uncompiled.keras")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(np.zeros((32, 28, 28, 1), "float32"), np.zeros(32, "int64"), verbose=0)
        model.save(folder / "good.keras")
    return folder


def edited(src, dst, edit) -> None:
    """`src` with its model.weights.h5 edited by `edit(h5)` (our own test file)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def replace(path, data):
    def edit(h5):
        del h5[path]
        h5[path] = data
    return edit


HOSTILE = {
    "wrong_shape": (replace("optimizer/vars/2", np.zeros((3, 3, 1, 31), "float32")),
                    "has shape (3, 3, 1, 31), but the model's config implies (3, 3, 1, 32)"),
    "nan_iterations": (replace("optimizer/vars/0", np.array(np.nan)), "expected an integer"),
    "negative_iterations": (replace("optimizer/vars/0", np.array(-1, "int64")),
                            "iterations is -1"),
    "missing_slot": (lambda h5: h5.__delitem__("optimizer/vars/17"), "lacks optimizer/vars/17"),
    "nan_moment": (replace("optimizer/vars/3", np.full((3, 3, 1, 32), np.nan, "float32")),
                   "NaN/Inf"),
    "float64_moment": (replace("optimizer/vars/2", np.zeros((3, 3, 1, 32))), "expected float32"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_optimizer_variables_are_refused(case, compiled, tmp_path, capsys):
    from parity.port import main

    edit, message = HOSTILE[case]
    src, dst = tmp_path / "bad.keras", tmp_path / "out.pt"
    edited(compiled / "good.keras", src, edit)
    assert main([str(src), str(dst), "--with-optimizer", "--samples", "5"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and message in err, err
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_a_file_without_optimizer_state_is_refused(compiled, tmp_path, capsys):
    from parity.port import main

    dst = tmp_path / "out.pt"
    assert main([str(compiled / "uncompiled.keras"), str(dst), "--with-optimizer"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no optimizer state" in err, err
    assert not dst.exists()
    assert main([str(compiled / "uncompiled.keras"), str(dst), "--samples", "5"]) == 0
