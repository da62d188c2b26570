"""fashion_cnn.validate: one line listing every problem of a set of tensors, HF-loader style."""

from __future__ import annotations

import numpy as np
import pytest

from fashion_cnn.errors import UserError
from fashion_cnn.validate import check_tensors
from parity.book import keras_to_torch

EXPECTED = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (2, 8), "fc.bias": (2,)}


def _float32(name, value):
    return None if value.dtype == np.float32 else f"{name} has dtype {value.dtype}"


def test_every_problem_in_one_line():
    found = {
        "conv.weight": np.zeros((4, 1, 3, 3), np.float64),  # wrong dtype
        "conv.bias": np.zeros((5,), np.float32),  # wrong shape
        "fc.weight": "not a tensor",
        "extra.weight": np.zeros(1, np.float32),  # unexpected; fc.bias missing
    }
    shape = lambda v: v.shape if isinstance(v, np.ndarray) else None  # noqa: E731
    with pytest.raises(UserError) as exc:
        check_tensors(found, EXPECTED, "model.pt", shape_of=shape, checks=[_float32])
    message = str(exc.value)
    assert "\n" not in message and message.startswith("model.pt: ")
    for part in (
        "missing fc.bias",
        "unexpected extra.weight",
        "conv.bias has shape (5,), expected (4,)",
        "fc.weight is a str, not a tensor",
        "conv.weight has dtype float64",
    ):
        assert part in message, message


def test_long_lists_are_cut():
    with pytest.raises(UserError, match=r"missing a0, a1, a2, a3, a4, a5 … and 4 more"):
        check_tensors({}, {f"a{i}": (1,) for i in range(10)}, "f", shape_of=np.shape)


def test_valid_tensors_pass():
    found = {k: np.zeros(s, np.float32) for k, s in EXPECTED.items()}
    check_tensors(found, EXPECTED, "f", shape_of=np.shape, checks=[_float32])


def test_mapping_lists_every_missing_weight():
    with pytest.raises(UserError) as exc:
        keras_to_torch({}, "w.weights.h5")
    assert "missing conv2d/kernel, conv2d/bias" in str(exc.value) and "and 2 more" in str(exc.value)


# --- 64-byte aligned arrays (fashion_cnn.hdf5): TensorFlow takes them over without a copy, and
# aborts the whole process on a misaligned buffer, so alignment must hold for every shape.


@pytest.mark.parametrize("shape", [(3,), (7, 5), (3, 3, 1, 32), (3136, 100), (1,)])
def test_aligned_empty_is_on_a_64_byte_boundary(shape):
    from fashion_cnn.hdf5 import ALIGNMENT, aligned_empty

    for _ in range(20):  # whatever offsets the allocator happens to give
        a = aligned_empty(shape)
        assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.ctypes.data % ALIGNMENT == 0


def test_aligned_copies_only_what_is_not_aligned():
    from fashion_cnn.hdf5 import ALIGNMENT, aligned, aligned_empty

    ready = aligned_empty((4, 6))
    ready[...] = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert aligned(ready) is ready
    transposed = ready.T  # not C-contiguous: one aligned copy, the same values
    copy = aligned(transposed)
    assert copy is not transposed and np.array_equal(copy, transposed)
    assert copy.flags.c_contiguous and copy.ctypes.data % ALIGNMENT == 0
    shifted = np.frombuffer(ready.tobytes() + b"\0" * 4, np.float32)[1:]  # 4 bytes off
    assert np.array_equal(aligned(shifted), shifted) and aligned(shifted).ctypes.data % 64 == 0
