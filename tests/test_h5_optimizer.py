"""A legacy full-model `.h5`'s optimizer crosses with the weights (`port … --with-optimizer`).

Real Keras 3: a Sequential CNN on 28×28×1 (Conv2D → Flatten → Dense, and one with a
BatchNormalization, whose moving statistics are no optimizer's), compiled with Adam, SGD with
momentum or a centered RMSprop with momentum, fit 2 steps on seeded random data and saved with
`model.save("m.h5")` (Keras's `legacy_h5_format`: `training_config` and `optimizer_weights`).
The port writes a `.pt` whose optimizer holds Keras's `model.optimizer.variables`, each moved
to its parameter's layout by the parameter's row, at 0 ulps (test_optimizer_state_models'
`assert_same`), its step Keras's iterations, its compile settings the file's; ported back to a
`.keras`, `keras.models.load_model` restores the same variables.

Hostile `.h5` files (a moment of the wrong shape, a NaN moment, a training_config that is not
JSON or not an object, a dataset missing or misnamed): one line naming the file, exit 1, DST
not written.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import parity
from parity.formats.torch_files import read_training
from parity.optim.variables import state_key
from parity.optimizer_state import expected_variables, trainable_rows
from parity.pipeline import read_source
from parity.tests.test_optimizer_state_models import assert_same, replace

pytestmark = pytest.mark.slow  # Keras training steps and ports

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

SAMPLES = "5"  # test images the port checks before writing
OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(learning_rate=1e-3),
    "sgd_momentum": lambda: keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
    "rmsprop_centered": lambda: keras.optimizers.RMSprop(momentum=0.5, centered=True),
}
CASES = {"cnn-adam": (False, "adam"), "bn-sgd_momentum": (True, "sgd_momentum"),
         "bn-rmsprop_centered": (True, "rmsprop_centered")}


def cnn(batch_norm: bool):
    """The book-like shape: Conv2D (→ BatchNormalization) → pool → Flatten → Dense."""
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)), layers.Conv2D(4, 3, activation="relu"),
        *([layers.BatchNormalization()] if batch_norm else []), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(10, activation="softmax")])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each case fit 2 steps and saved as `<case>.h5`, with Keras's optimizer variables and
    config; `uncompiled.h5` beside them."""
    folder = tmp_path_factory.mktemp("h5-optimizer")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1), np.float32), rng.integers(0, 10, 64)
    found = {}
    with tf.device("/CPU:0"):
        keras.utils.set_random_seed(7)
        cnn(False).save(folder / "uncompiled.h5")
        for case, (batch_norm, name) in CASES.items():
            model = cnn(batch_norm)
            model.compile(optimizer=OPTIMIZERS[name](), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
            model.save(folder / f"{case}.h5")
            found[case] = ([v.numpy() for v in model.optimizer.variables],
                           keras.optimizers.serialize(model.optimizer))
    return folder, found


def port(*args) -> int:
    from parity.port import main

    return main([*map(str, args), "--samples", SAMPLES])


def torch_layout(built, config, values) -> tuple[list[np.ndarray], int, float]:
    """Keras's optimizer variables as PyTorch's state holds them: each slot by its parameter's
    row (`row.transform.to_torch`), in Keras's order; the iterations and learning rate."""
    spec, variables = expected_variables(built, config)
    rows = trainable_rows(built)
    slots = [np.asarray(rows[v.param].transform.to_torch(value), np.float32)
             for v, value in zip(variables, values, strict=True) if v.param is not None]
    return slots, int(values[0]), float(values[1])


def torch_state(module, optimizer, built, config) -> tuple[list[np.ndarray], set, float]:
    """The PyTorch optimizer's slots in Keras's order, its parameters' steps and its lr."""
    spec, variables = expected_variables(built, config)
    rows = trainable_rows(built)
    params = dict(module.named_parameters())
    slots = [optimizer.state[params[rows[v.param].torch]][state_key(spec, v.name)].numpy()
             for v in variables if v.param is not None]
    steps = {float(s["step"]) for s in optimizer.state.values()}
    (group,) = optimizer.param_groups
    return slots, steps, group["lr"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_h5_optimizer_state_ports_to_pytorch_and_back(case, saved, tmp_path):
    """m.h5 → port --with-optimizer → .pt: its optimizer is Keras's variables at 0 ulps, its
    compile settings the file's; .pt → .keras --with-optimizer: Keras restores them."""
    folder, found = saved
    values, config = found[case]
    src, dst = folder / f"{case}.h5", tmp_path / "m.pt"
    assert port(src, dst, "--with-optimizer") == 0
    built = read_source(src, module=False).built
    expected, iterations, lr = torch_layout(built, config, values)
    module, optimizer = parity.load_torch_training(dst)
    got, steps, got_lr = torch_state(module, optimizer, built, config)
    assert_same(expected, got, f"{case}: the ported optimizer state")
    assert iterations == 2 and steps == {2.0} and got_lr == lr, (iterations, steps, got_lr, lr)
    _, _, compile_ = read_training(dst)
    assert compile_ == {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}

    assert port(dst, tmp_path / "back.keras", "--with-optimizer") == 0
    with tf.device("/CPU:0"):
        back = keras.models.load_model(tmp_path / "back.keras")
        assert_same(values, [v.numpy() for v in back.optimizer.variables],
                    f"{case}: the optimizer restored by Keras")


def test_keras_order_is_the_files(saved, tmp_path):
    """The Python interface reads the .h5 itself: its optimizer's state is the .pt's."""
    folder, found = saved
    src = folder / "bn-sgd_momentum.h5"
    values, config = found["bn-sgd_momentum"]
    built = read_source(src, module=False).built
    module, optimizer = parity.load_torch_training(src)
    got, steps, _ = torch_state(module, optimizer, built, config)
    assert_same(torch_layout(built, config, values)[0], got, "load_torch_training(m.h5)")
    assert type(optimizer).__name__ == "KerasSGD" and steps == {2.0}


# --- hostile .h5 files --------------------------------------------------------------------------


def weight_names(h5) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n)
            for n in h5["optimizer_weights"].attrs["weight_names"]]


def nth(i: int, edit):
    """An edit of the i-th dataset `optimizer_weights` lists (Keras names the optimizer's group
    "adam", or "adam_1" after another Adam in the process)."""
    def at(h5):
        edit(f"optimizer_weights/{weight_names(h5)[i]}")(h5)
    return at


def attr(name: str, value):
    def edit(h5):
        h5.attrs[name] = value
    return edit


def rename(i: int, new: str):
    def edit(h5):
        names = weight_names(h5)
        h5["optimizer_weights"].move(names[i], new)
        names[i] = new
        h5["optimizer_weights"].attrs["weight_names"] = np.array([n.encode() for n in names])
    return edit


HOSTILE = {  # edits of cnn-adam.h5: Adam over conv kernel, conv bias, dense kernel, dense bias
    "wrong_shape": (nth(2, lambda p: replace(p, np.zeros((3, 3, 1, 3), "float32"))),
                    "has shape (3, 3, 1, 3), but the model's config implies (3, 3, 1, 4)"),
    "nan_moment": (nth(3, lambda p: replace(p, np.full((3, 3, 1, 4), np.nan, "float32"))),
                   "optimizer variable velocity[0] holds 36 NaN/Inf values"),
    "float64_moment": (nth(2, lambda p: replace(p, np.zeros((3, 3, 1, 4)))), "expected float32"),
    "not_json": (attr("training_config", b"{'optimizer_config': eval('1')}"),
                 "training_config is not valid JSON"),
    "not_an_object": (attr("training_config", b"[1, 2]"), "training_config is not a JSON object"),
    "deep_json": (attr("training_config", b"[" * 100_000), "nests 100000 levels deep"),
    "no_optimizer_config": (attr("training_config", b'{"loss": "mse"}'),
                            "training_config has no optimizer_config object"),
    "missing_dataset": (nth(5, lambda p: lambda h5: h5.__delitem__(p)),
                        "which it does not hold"),
    "misnamed": (rename(2, "adam/sequential_conv2d_kernel_velocity"),
                 "stands where the config's optimizer has optimizer momentum[0]"),
    "unlisted_dataset": (lambda h5: h5.create_dataset("optimizer_weights/x", data=np.zeros(1)),
                         "optimizer_weights/x, which its weight_names does not list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_h5_optimizer_is_refused(case, saved, tmp_path, capsys):
    edit, message = HOSTILE[case]
    src, dst = tmp_path / "bad.h5", tmp_path / "out.pt"
    src.write_bytes((saved[0] / "cnn-adam.h5").read_bytes())
    with h5py.File(src, "r+") as h5:
        edit(h5)
    assert port(src, dst, "--with-optimizer") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and message in err, err
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_an_uncompiled_h5_holds_no_optimizer_state(saved, tmp_path, capsys):
    src, dst = saved[0] / "uncompiled.h5", tmp_path / "out.pt"
    assert port(src, dst, "--with-optimizer") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and "holds no optimizer state" in err
    assert not dst.exists()


def test_writing_the_optimizer_into_an_h5_is_refused(saved, tmp_path, capsys):
    """--with-optimizer writes a .keras (or a .pt), not a legacy .h5."""
    dst = tmp_path / "out.h5"
    assert port(saved[0] / "cnn-adam.h5", dst, "--with-optimizer") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--with-optimizer writes a .keras file" in err, err
    assert not dst.exists()


def test_torch_state_is_a_tensor_per_slot(saved, tmp_path):
    """The ported slots are float32 tensors shaped as their parameters (PyTorch's layout)."""
    folder, _ = saved
    module, optimizer = parity.load_torch_training(folder / "cnn-adam.h5")
    for p in module.parameters():
        state = optimizer.state[p]
        assert {k: (v.dtype, v.shape) for k, v in state.items() if k != "step"} == {
            k: (torch.float32, p.shape) for k in state if k != "step"}
