"""The book's mapping table: derived from the converters, it is the literal table below (Keras
name on the left, PyTorch's on the right, and the transform); on real weights its round trips
are bit-identical, and the flatten permutation of dense1 is what makes the PyTorch model right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.book import KERAS_NAMES, TABLE, keras_to_torch, torch_to_keras
from parity.layers.transforms import flat_dense
from parity.tests.testdata import BookSides
from parity.verify.compare import compare
from torch_impl.model import BookCNN, predict_proba

# The book's table as the book's PyTorch edition writes it: (Keras, PyTorch, Keras shape,
# PyTorch shape, transform).
LITERAL = (
    ("conv2d/kernel", "conv1.weight", (3, 3, 1, 32), (32, 1, 3, 3), "conv HWIO→OIHW"),
    ("conv2d/bias", "conv1.bias", (32,), (32,), "identity"),
    ("conv2d_1/kernel", "conv2.weight", (3, 3, 32, 64), (64, 32, 3, 3), "conv HWIO→OIHW"),
    ("conv2d_1/bias", "conv2.bias", (64,), (64,), "identity"),
    ("dense/kernel", "dense1.weight", (3136, 100), (100, 3136),
     "dense after flatten: HWC→CHW rows, transpose"),
    ("dense/bias", "dense1.bias", (100,), (100,), "identity"),
    ("dense_1/kernel", "dense2.weight", (100, 10), (10, 100), "dense transpose"),
    ("dense_1/bias", "dense2.bias", (10,), (10,), "identity"),
)


def test_the_converters_make_the_books_table():
    assert [(r.keras, r.torch, r.keras_shape, r.torch_shape, r.transform.name)
            for r in TABLE] == list(LITERAL)
    assert tuple(BookCNN().state_dict()) == tuple(r.torch for r in TABLE)


def _torch_probabilities(state: dict, images: np.ndarray) -> np.ndarray:
    model = BookCNN()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return predict_proba(model, x).numpy()


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32, f"{name}: dtype changed"
        assert np.array_equal(a[name], b[name]), f"{name}: not bit-identical after the round trip"


def test_keras_to_torch_to_keras_is_bit_identical(ckpt):
    torch_side = keras_to_torch(ckpt.weights)
    assert {k: v.shape for k, v in torch_side.items()} == {r.torch: r.torch_shape for r in TABLE}
    _assert_identical(torch_to_keras(torch_side), ckpt.weights)


@pytest.mark.parametrize("init", ["torch", "keras"])
def test_torch_to_keras_to_torch_is_bit_identical(init):
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in BookCNN(init=init).state_dict().items()}
    keras_side = torch_to_keras(state)
    assert tuple(keras_side) == KERAS_NAMES
    _assert_identical(keras_to_torch(keras_side), state)


def test_plain_transpose_of_dense1_gives_a_wrong_model(keras_ckpts, eval_images):
    """Transposing dense/kernel without permuting its rows from H,W,C to C,H,W order gives a
    model that runs — and disagrees with Keras; the table's permutation makes it agree."""
    weights = keras_ckpts["trained"].weights
    images = eval_images[0][:1000]
    keras_proba = BookSides(weights).keras_probabilities(images)

    right = keras_to_torch(weights)
    wrong = dict(right, **{"dense1.weight": np.ascontiguousarray(weights["dense/kernel"].T)})
    assert not np.array_equal(right["dense1.weight"], wrong["dense1.weight"])
    kernel = weights["dense/kernel"]
    assert not np.array_equal(flat_dense(7, 7, 64).to_torch(kernel), kernel.T)

    right_proba = _torch_probabilities(right, images)
    wrong_proba = _torch_probabilities(wrong, images)
    assert compare("probabilities", keras_proba, right_proba).passed
    wrong_diff = compare("probabilities", keras_proba, wrong_proba)
    agreeing = (wrong_proba.argmax(1) == keras_proba.argmax(1)).mean()
    assert not wrong_diff.passed and wrong_diff.max_abs > 0.1, wrong_diff
    assert agreeing < 0.9, f"a plain transpose still agreed on {agreeing:.1%} of the predictions"


def test_mapping_refuses_a_wrong_shape_before_mapping(keras_ckpts):
    from fashion_cnn.errors import UserError

    weights = dict(keras_ckpts["random"].weights)
    weights["dense/kernel"] = weights["dense/kernel"][:, :50]
    message = r"dense/kernel has shape \(3136, 50\), expected \(3136, 100\)"
    with pytest.raises(UserError, match=message):
        keras_to_torch(weights)
