"""Frozen layers (`trainable: false`): the fine-tuning case — a frozen base, a trainable head.

Real Keras (TF backend), real Fashion-MNIST training batches. A Functional model whose first
block, Conv2D → BatchNormalization → ReLU, is frozen (each layer's `trainable = False`, or the
block a nested model frozen whole, `base.trainable = False`), its head Conv2D → MaxPool →
Flatten → Dense trainable, trains with Adam (train_step's own ops: the model called with
training=True under a tape, then `optimizer.apply_gradients`): Keras's optimizer holds
variables for the head only, and the frozen BatchNormalization normalises with its moving
statistics and leaves them as they are (its `call`: `training and self.trainable`).

Ported with `--with-optimizer` and loaded with `keras_training=True`, PyTorch takes each of
Keras's steps in `test_training_parity`'s per-step form, with its bounds (why: its docstring):
at each of Keras's weights PyTorch's own gradient of every trainable parameter lies within
GRAD_RTOL of Keras's (the frozen ones get none); given Keras's gradients, the weights and
Adam's state land on Keras's at ADAM_ULPS = 0; the frozen weights and the BatchNorm's moving
statistics stay bit for bit as in Keras (unchanged). Keras K steps → port → PyTorch K steps →
port back → Keras K steps of `model.train_on_batch` is, bit for bit, Keras continuing its own
2K-step state with `train_on_batch` (the compiled graph may sum a bias's gradient in another
order than the eager tape, so each side of that comparison runs the same one).

Negative controls, each failing the bound: PyTorch's own BatchNorm in train mode (batch
statistics), our Keras BatchNorm unfrozen (`trainable = True`), and the frozen parameters left
trainable (they move).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import parity
from parity.optimizer_state import from_torch, trainable_rows
from parity.pipeline import read_source
from parity.tests.test_training_parity import (
    ADAM_ULPS,
    BATCH_SEED,
    BATCH_SIZE,
    assert_bitwise,
    assert_gradients_close,
)
from parity.training import KerasBatchNorm2d
from parity.verify.compare import ulp_distance

pytestmark = pytest.mark.slow  # Keras and PyTorch training steps

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

K = 3  # steps in each part: Keras K → PyTorch K → Keras K
SAMPLES = "20"  # test images the port checks before writing
CLIP = 1e-7  # Keras's sparse categorical cross-entropy clips probabilities to [ε, 1 − ε]


@pytest.fixture(scope="module")
def batches(book_data):
    """3K batches of 32 real training images (test_training_parity's seed), NHWC, and labels."""
    generator = torch.Generator().manual_seed(BATCH_SEED)
    order = torch.randperm(len(book_data.train_x), generator=generator)[: 3 * K * BATCH_SIZE]
    x = np.ascontiguousarray(book_data.train_x[order].numpy().transpose(0, 2, 3, 1))
    y = book_data.train_y[order].numpy()
    return [(x[i: i + BATCH_SIZE], y[i: i + BATCH_SIZE])
            for i in range(0, len(x), BATCH_SIZE)]


def frozen_model(nested: bool):
    """[Conv2D(4) → BatchNormalization → ReLU] frozen → Conv2D(8, relu) → MaxPool(4) →
    Flatten → Dense(10, softmax); the BatchNorm's statistics and affine randomised (seeded)."""
    layers = keras.layers
    keras.utils.set_random_seed(11)
    base = [layers.Conv2D(4, 3, padding="same"), layers.BatchNormalization(), layers.ReLU()]
    inputs = keras.Input((28, 28, 1))
    if nested:
        inner = x = keras.Input((28, 28, 1))
        for layer in base:
            x = layer(x)
        block = keras.Model(inner, x, name="base")
        x = block(inputs)
    else:
        x = inputs
        for layer in base:
            x = layer(x)
    x = layers.Flatten()(layers.MaxPooling2D(4)(layers.Conv2D(8, 3, padding="same",
                                                              activation="relu")(x)))
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(x))
    rng = np.random.default_rng(11)
    bn = base[1]
    bn.gamma.assign(rng.uniform(0.5, 1.5, 4))
    bn.beta.assign(rng.normal(0, 0.3, 4))
    bn.moving_mean.assign(rng.normal(0, 0.2, 4))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 4))
    if nested:
        block.trainable = False  # Keras sets every inner layer's trainable
    else:
        for layer in base[:2]:
            layer.trainable = False
    return model


def keras_step(model, x, y) -> list[np.ndarray]:
    """One step as Keras's train_step takes it (training=True); its gradient."""
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return [g.numpy() for g in grads]


def snapshot(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [w.numpy() for w in model.weights], [v.numpy() for v in model.optimizer.variables]


@pytest.fixture(scope="module", params=["flat", "nested"])
def keras_run(request, batches, tmp_path_factory):
    """Keras's 3K steps, the `.keras` saved after K and 2K; each step's gradient and the
    weights and optimizer variables after it; and the state `train_on_batch` reaches in K
    steps from Keras's own 2K-step file."""
    folder = tmp_path_factory.mktemp(f"frozen-{request.param}")
    with tf.device("/CPU:0"):
        model = frozen_model(request.param == "nested")
        model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
        first = [w.numpy() for w in model.weights]
        grads, states = [], []
        for step, (x, y) in enumerate(batches, start=1):
            grads.append(keras_step(model, x, y))
            states.append(snapshot(model))
            if step in (K, 2 * K):
                model.save(folder / f"after-{step}.keras")
        trainable = len(model.trainable_variables)
        own = keras.models.load_model(folder / f"after-{2 * K}.keras")
        for x, y in batches[2 * K:]:
            own.train_on_batch(x, y)
        on_batch = snapshot(own)
    return {"folder": folder, "first": first, "grads": grads, "states": states,
            "trainable": trainable, "kind": request.param, "on_batch": on_batch}


def torch_loss(module, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """Keras's loss on the module's probabilities: −log of the clipped probability, averaged."""
    p = module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    p = p.clamp(CLIP, 1.0 - CLIP).gather(1, torch.from_numpy(y).long()[:, None])
    return -torch.log(p).mean()


def in_torch_layout(rows, arrays) -> dict[str, np.ndarray]:
    return {r.torch: np.ascontiguousarray(r.transform.to_torch(a))
            for r, a in zip(rows, arrays, strict=True)}


def continue_in_torch(module, optimizer, built, run, first: int, batches) -> float:
    """Steps first+1 … first+K: PyTorch's own gradient against Keras's, then Keras's gradient
    applied; every weight and BatchNorm statistic, and the optimizer's state, against Keras's
    after each step. Returns the worst gradient ratio."""
    rows = trainable_rows(built)
    params = dict(module.named_parameters())
    config = keras.optimizers.serialize(keras.optimizers.Adam())
    worst = 0.0
    module.train()
    for step in range(first + 1, first + K + 1):
        optimizer.zero_grad(set_to_none=True)
        torch_loss(module, *batches[step - 1]).backward()
        frozen = [n for n, p in params.items() if not p.requires_grad]
        assert all(params[n].grad is None for n in frozen), f"step {step}: a frozen gradient"
        keras_grads = in_torch_layout(rows, run["grads"][step - 1])
        own = {r.torch: params[r.torch].grad.numpy().copy() for r in rows}
        worst = max(worst, assert_gradients_close(keras_grads, own, f"step {step}: gradients",
                                                  list(own)))
        for name, g in keras_grads.items():
            params[name].grad = torch.from_numpy(g)
        optimizer.step()
        weights, variables = run["states"][step - 1]
        state = {k: v.numpy() for k, v in module.state_dict().items()}
        assert_bitwise(in_torch_layout(built.rows, weights), state, f"step {step}: weights",
                       [r.torch for r in built.rows])
        ours = from_torch(built, optimizer.state_dict(), config, "the optimizer").values
        assert int(ours[0]) == int(variables[0]) == step
        far = [ulp_distance(k, t) for k, t in zip(variables[1:], ours[1:], strict=True)]
        assert max(far) <= ADAM_ULPS, f"step {step}: optimizer variables {far} ulps"
    return worst


def loaded(run, tmp_path):
    """The K-step .keras ported with its optimizer, loaded for training with Keras's semantics."""
    from parity.port import main

    src, dst = run["folder"] / f"after-{K}.keras", tmp_path / "k.pt"
    assert main([str(src), str(dst), "--with-optimizer", "--samples", SAMPLES, "--force"]) == 0
    module, optimizer = parity.load_torch_training(dst, keras_training=True)
    return module, optimizer, read_source(dst).built


def test_frozen_layers_are_frozen_in_the_port(keras_run, tmp_path):
    """The port reads `trainable`: the frozen block's parameters have requires_grad off, its
    BatchNorm is frozen, the optimizer holds the head's parameters only — Keras's variables."""
    module, optimizer, built = loaded(keras_run, tmp_path)
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert frozen == {r.torch for r in built.rows[:4]}, frozen  # conv kernel, bias; BN γ, β
    (bn,) = [m for m in module.modules() if isinstance(m, KerasBatchNorm2d)]
    assert bn.trainable is False
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(held) == len(trainable_rows(built)) == keras_run["trainable"] == 4
    assert all(p.requires_grad for p in held)


def test_pytorch_takes_kerass_steps_with_a_frozen_base(keras_run, batches, tmp_path):
    """PyTorch K steps from the ported state on Keras's path; the frozen weights and BN
    statistics equal the untrained ones throughout."""
    module, optimizer, built = loaded(keras_run, tmp_path)
    worst = continue_in_torch(module, optimizer, built, keras_run, K, batches)
    frozen = {r.torch for r in built.rows[:6]}  # conv kernel, bias; BN γ, β, mean, variance
    start = in_torch_layout(built.rows, keras_run["first"])
    state = module.state_dict()
    assert all(np.array_equal(start[n], state[n].numpy()) for n in frozen)
    print(f"\n{keras_run['kind']}: {K} steps, weights, Adam and BN statistics at {ADAM_ULPS} "
          f"ulps; gradients worst {worst:.2e} of their scale")


CONTROLS = ("pytorch_batchnorm", "batchnorm_unfrozen", "frozen_left_trainable")


@pytest.mark.parametrize("control", CONTROLS)
def test_without_kerass_frozen_semantics_pytorch_leaves_kerass_path(control, keras_run,
                                                                    batches, tmp_path):
    """The frozen BatchNorm in train mode (PyTorch's own, or ours set trainable) normalises
    with batch statistics: the gradients leave the bound; frozen parameters left trainable
    move: the weights leave Keras's."""
    from torch_impl.optim import KerasAdam

    module, optimizer, built = loaded(keras_run, tmp_path)
    match = "differ from Keras's beyond"
    if control == "pytorch_batchnorm":
        module, optimizer = parity.load_torch_training(tmp_path / "k.pt")
    elif control == "batchnorm_unfrozen":
        (bn,) = [m for m in module.modules() if isinstance(m, KerasBatchNorm2d)]
        bn.trainable = True
    else:
        module.requires_grad_(True)
        optimizer = KerasAdam(module.parameters())
        match = "float32 steps away"
    with pytest.raises(AssertionError, match=match) as failed:
        if control == "frozen_left_trainable":  # its own gradients for all, then compared
            module.train()
            torch_loss(module, *batches[K]).backward()
            optimizer.step()
            weights, _ = keras_run["states"][K]
            state = module.state_dict()
            assert_bitwise(in_torch_layout(built.rows, weights),
                           {k: v.numpy() for k, v in state.items()}, "weights",
                           [r.torch for r in built.rows])
        continue_in_torch(module, optimizer, built, keras_run, K, batches)
    print(f"\n{keras_run['kind']}, {control}: {str(failed.value).splitlines()[0][:200]}")


def test_round_trip_keras_pytorch_keras_with_a_frozen_base(keras_run, batches, tmp_path):
    """Keras K → port → PyTorch K → port back --with-optimizer → Keras K steps of
    train_on_batch is Keras's own 2K-step state continued by train_on_batch, bit for bit; the
    written .keras keeps each layer's trainable, so Keras's optimizer holds the head's
    variables only, and train_on_batch leaves the frozen weights and statistics as they were."""
    from parity.port import main

    module, optimizer, built = loaded(keras_run, tmp_path)
    continue_in_torch(module, optimizer, built, keras_run, K, batches)
    parity.save_torch_training(module, optimizer, tmp_path / "last.pt",
                               config=keras.optimizers.serialize(keras.optimizers.Adam()))
    assert main([str(tmp_path / "last.pt"), str(tmp_path / "back.keras"), "--with-optimizer",
                 "--samples", SAMPLES]) == 0
    with tf.device("/CPU:0"):
        back = keras.models.load_model(tmp_path / "back.keras")
        held = [layer.trainable for layer in back.layers if layer.weights]  # a Sequential, flat
        assert held == [False, False, True, True], held
        assert len(back.trainable_variables) == keras_run["trainable"]
        assert int(back.optimizer.iterations.numpy()) == 2 * K
        for x, y in batches[2 * K:]:
            back.train_on_batch(x, y)
        weights, variables = snapshot(back)
    expected_w, expected_v = keras_run["on_batch"]
    far = [ulp_distance(e, g) for e, g in zip(expected_w + expected_v[1:], weights + variables[1:],
                                              strict=True)]
    assert max(far) <= ADAM_ULPS, f"after the round trip: {far} ulps"
    assert int(variables[0]) == 3 * K
    assert all(np.array_equal(a, b) for a, b in zip(keras_run["first"][:6], weights[:6],
                                                     strict=True)), "train_on_batch moved them"


def test_module_py_keeps_the_frozen_layers(keras_run, tmp_path):
    """`--module-py --keras-training`: the generated class has the port's requires_grad and its
    frozen BatchNorm, and in train mode that BatchNorm leaves its statistics as they are."""
    from parity.port import main

    src = keras_run["folder"] / f"after-{K}.keras"
    assert main([str(src), str(tmp_path / "m.pt"), "--samples", SAMPLES, "--module-py",
                 str(tmp_path / "frozen_net.py"), "--keras-training"]) == 0
    spec = importlib.util.spec_from_file_location("frozen_net", tmp_path / "frozen_net.py")
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)  # our own generated file, from our own test model
    net = generated.FrozenNet()
    ported = parity.load_torch_model(tmp_path / "m.pt")
    net.load_state_dict(ported.state_dict())
    assert ({n: p.requires_grad for n, p in net.named_parameters()}
            == {n: p.requires_grad for n, p in ported.named_parameters()})
    (bn,) = [m for m in net.modules() if type(m).__name__ == "KerasBatchNorm2d"]
    before = bn.running_mean.clone(), bn.running_var.clone()
    net.train()(torch.rand(8, 1, 28, 28))
    after = bn.running_mean, bn.running_var
    assert bn.trainable is False and all(map(torch.equal, before, after))
