"""`parity.training.KerasDropout`: a ported module's Dropout in training, as Keras's, with
Keras's own masks replayed (injected), against Keras itself on real Fashion-MNIST images; the
masks PyTorch draws itself as the negative control; `noise_shape` and the generated file.

Keras's masks are read off its own layers: each Dropout draws from its own SeedGenerator, and
TensorFlow's dropout is stateless given the seed the generator hands out, so the layer called
again on ones from the state it had before the step (then put back) gives the same mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.training import KerasDropout, keras_noise_shape, keras_training
from parity.verify.compare import sum_rtol

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

BATCH = 16
RATES = (0.5, 0.3)
LARGEST_SUM = 676  # the terms of the widest sum: Dense(16) over the 13 × 13 × 4 map


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    """Conv2D → Dropout sharing a mask over each map (noise_shape) → pool → Dense → Dropout →
    Dense, saved."""
    keras.utils.set_random_seed(5)
    L = keras.layers
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(4, 3, activation="relu")(inputs)
    x = L.Dropout(RATES[0], noise_shape=(None, 1, 1, 4), seed=11)(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(16, activation="relu")(x)
    x = L.Dropout(RATES[1], seed=12)(x)
    model = keras.Model(inputs, L.Dense(10)(x))
    path = tmp_path_factory.mktemp("dropout") / "dropout.keras"
    model.save(path)
    return path


def _keras_step(path, images):
    """Keras's training-mode logits on `images`, and each Dropout's keep mask (Keras layout)."""
    model = keras.models.load_model(path)
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    before = [np.array(d.seed_generator.state.numpy()) for d in drops]
    logits = np.asarray(model(images, training=True))
    masks = []
    for d, state in zip(drops, before, strict=True):
        after = np.array(d.seed_generator.state.numpy())
        d.seed_generator.state.assign(state)
        ones = np.ones((len(images), *d.input.shape[1:]), np.float32)
        masks.append(np.asarray(d(ones, training=True)) != 0)
        d.seed_generator.state.assign(after)
    return logits, masks


def _replay(keep: np.ndarray):
    """A `masks` callable giving Keras's mask in PyTorch's layout, at the shape asked for (a
    shared axis of size 1: the mask is the same along it)."""
    full = torch.from_numpy(keep.transpose(0, 3, 1, 2) if keep.ndim == 4 else keep)

    def masks(shape):
        return full[tuple(slice(0, s) for s in shape)]

    return masks


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _bound(module, x: torch.Tensor) -> float:
    """What two float32 forwards of the same network, masks and input can differ by, whatever
    order each sums in: the same network on |x| with |W|, |b| bounds every sum's Σ|terms| along
    the way; each of its 3 weighted layers' sums is within sum_rtol(n ≤ LARGEST_SUM) of that,
    carried on by the layers after it (their |W| is in the |·| network), plus a rounding of each
    product and of the dropout's scale (4 U32 per layer, inside a second sum_rtol)."""
    import copy

    absolute = copy.deepcopy(module)
    with torch.no_grad():
        for p in absolute.parameters():
            p.abs_()
        scale = float(absolute(x.abs()).abs().max())
    return 3 * 2 * sum_rtol(LARGEST_SUM) * scale


def test_kerass_masks_replayed_give_kerass_training_forward(dropout_model, eval_images):
    from parity import load_torch_model

    images = eval_images[0][:BATCH]
    k_logits, masks = _keras_step(dropout_model, images)
    # the masks are Keras's draws: about 1 − rate kept, the first one whole maps at a time
    assert masks[0].shape == (BATCH, 26, 26, 4) and (masks[0] == masks[0][:, :1, :1, :]).all()
    for keep, rate in zip(masks, RATES, strict=True):
        assert abs(keep.mean() - (1 - rate)) < 0.15
    module = keras_training(load_torch_model(dropout_model)).train()
    drops = [m for m in module.modules() if isinstance(m, KerasDropout)]
    assert [d.p for d in drops] == list(RATES)
    assert drops[0].noise_shape == (None, 4, 1, 1) and drops[1].noise_shape is None
    for d, keep in zip(drops, masks, strict=True):
        d.masks = _replay(keep)
    x = _nchw(images)
    with torch.no_grad():
        t_logits = module(x).numpy()
    bound = _bound(module, x)  # with Keras's masks
    np.testing.assert_allclose(t_logits, k_logits, rtol=0, atol=bound)

    # the negative control: PyTorch's own draws (same law, other masks) fail the bound
    for d in drops:
        d.masks = None
    torch.manual_seed(0)
    with torch.no_grad():
        drawn = module(x).numpy()
    assert np.abs(drawn - k_logits).max() > 2 * bound


def test_kerasdropout_drops_and_scales_as_tensorflow():
    """Kept: x times float32(1/(1 − rate)), as TF multiplies; dropped: 0; the share kept near
    1 − rate; a noise_shape's axes of size 1 share the mask; the identity in eval()."""
    drop = KerasDropout(0.3, noise_shape=(None, None, 1, 1)).train()
    x = torch.full((64, 8, 5, 5), 2.0)
    torch.manual_seed(1)
    y = drop(x)
    expected = np.float32(2.0) * np.float32(1 / 0.7)
    values = set(np.unique(y.numpy()).tolist())
    assert values == {0.0, float(expected)}, values
    assert (y == y[:, :, :1, :1]).all()  # one draw per (image, channel)
    assert abs(float((y[:, :, 0, 0] != 0).float().mean()) - 0.7) < 0.08
    tf_y = tf.nn.experimental.stateless_dropout(tf.fill((4, 3), 2.0), 0.3, seed=(1, 2))
    assert set(np.unique(np.asarray(tf_y)).tolist()) <= {0.0, float(expected)}
    assert torch.equal(drop.eval()(x), x)


def test_noise_shape_in_pytorchs_layout():
    assert keras_noise_shape([None, 1, 1, 8], 4) == (None, 8, 1, 1)
    assert keras_noise_shape([1, None], 2) == (1, None)
    assert keras_noise_shape([None, None], 2) is None and keras_noise_shape(None, 4) is None
    with pytest.raises(ValueError, match="noise_shape"):
        KerasDropout(0.5, noise_shape=(None, 1)).train()(torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match="mask of shape"):
        KerasDropout(0.5, masks=lambda shape: torch.ones(1, dtype=torch.bool)).train()(
            torch.ones(2, 3))


def test_module_py_with_keras_training_holds_kerasdropout(dropout_model, eval_images,
                                                          tmp_path):
    """`--module-py --keras-training`: the file defines KerasDropout itself, with the
    noise_shape in PyTorch's layout, and replays Keras's masks to Keras's training logits."""
    from parity.port import main as port_main
    from parity.tests.testdata import generated_module

    pt, py = tmp_path / "dropout.pt", tmp_path / "dropout_model.py"
    assert port_main([str(dropout_model), str(pt), "--module-py", str(py), "--keras-training",
                      "--samples", "20"]) == 0
    text = py.read_text()
    assert "class KerasDropout(nn.Dropout):" in text and "(None, 4, 1, 1)" in text
    module = generated_module(py, "dropout_model").DropoutModel()
    module.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    images = eval_images[0][:BATCH]
    k_logits, masks = _keras_step(dropout_model, images)
    drops = [m for m in module.modules() if type(m).__name__ == "KerasDropout"]
    for d, keep in zip(drops, masks, strict=True):
        d.masks = _replay(keep)
    x = _nchw(images)
    with torch.no_grad():
        t_logits = module.train()(x).numpy()
    np.testing.assert_allclose(t_logits, k_logits, rtol=0, atol=_bound(module, x))
