"""The book's CNN as data: its layers as `keras_ref.model.build_model()` makes them, parsed by the
same reader as any file, and what follows from them — `is_book`, the mapping table (derived
from the converters; parity/tests pin it against the literal table), and the names of the
book's report (conv1 … logits, probabilities).

A file with no config (a `.weights.h5`, a TF 2.x `save_weights` `.h5`, a plain `BookCNN`
state_dict) is read as this model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from parity.ir.keras_config import parse_model
from parity.spec import Spec, check

INPUT_SHAPE = (28, 28, 1)  # NHWC, batch-free
_CONV = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "activation": "relu",
         "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1, "use_bias": True}
_POOL = {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid", "data_format": "channels_last"}
# (class, Keras's name for it in a new session, config): 8-2's model.
LAYERS = (
    ("Conv2D", "conv2d", {"filters": 32, **_CONV}),
    ("MaxPooling2D", "max_pooling2d", dict(_POOL)),
    ("Conv2D", "conv2d_1", {"filters": 64, **_CONV}),
    ("MaxPooling2D", "max_pooling2d_1", dict(_POOL)),
    ("Flatten", "flatten", {"data_format": "channels_last"}),
    ("Dense", "dense", {"units": 100, "activation": "relu", "use_bias": True}),
    ("Dropout", "dropout", {"rate": 0.4, "noise_shape": None, "seed": None}),
    ("Dense", "dense_1", {"units": 10, "activation": "softmax", "use_bias": True}),
)
# The book's report names each compared output as the book's PyTorch edition names it
# (`torch_impl.model.BookCNN`): the Keras layer's output, or ("pre", layer) for its value before
# its activation. Dropout is not reported (the identity at inference).
REPORT = (
    ("conv1", "conv2d"), ("pool1", "max_pooling2d"), ("conv2", "conv2d_1"),
    ("pool2", "max_pooling2d_1"), ("flatten", "flatten"), ("dense1", "dense"),
    ("logits", ("pre", "dense_1")), ("probabilities", "dense_1"),
)


def config() -> dict:
    """The book's model as a Keras Sequential config (the fields the port reads)."""
    layers = [{"class_name": "InputLayer", "config": {"batch_shape": [None, *INPUT_SHAPE],
                                                      "name": "input_layer"}}]
    layers += [{"module": "keras.layers", "class_name": cls, "registered_name": None,
                "config": {"name": name, **cfg}} for cls, name, cfg in LAYERS]
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}


@functools.cache
def spec() -> Spec:
    return check(parse_model(config(), "the book's CNN"), "the book's CNN")


def is_book(other: Spec) -> bool:
    """Whether a model is the book's CNN: the same layer classes with the same parameters on
    the same input, in a chain (names aside), every layer trainable (a frozen one is carried
    with its architecture, not as BookCNN's plain state_dict)."""
    book = spec()
    return (
        other.graph.is_chain
        and other.input_shape == book.input_shape
        and all(n.trainable for n in other.nodes)
        and [(n.node.class_name, n.params) for n in other.nodes]
        == [(n.node.class_name, n.params) for n in book.nodes]
    )


@functools.cache
def table():
    """The book's rows (Keras variable → state_dict key → transform), as the converters make
    them: `conv2d/kernel` → `conv1.weight` (HWIO → OIHW), …, `dense/kernel` → `dense1.weight`
    (rows permuted H,W,C → C,H,W, then transposed)."""
    from parity.build import build

    return tuple(build(spec(), "the book's CNN").rows)


def __getattr__(name: str):
    """TABLE, KERAS_NAMES, TORCH_NAMES: made on first use (they build the module, with torch),
    so that importing this module stays framework-free."""
    if name == "TABLE":
        return table()
    if name == "KERAS_NAMES":
        return tuple(r.keras for r in table())
    if name == "TORCH_NAMES":
        return tuple(r.torch for r in table())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def keras_to_torch(weights: Mapping[str, np.ndarray], source: str = "keras weights") -> dict:
    """The book's Keras arrays by structural name → PyTorch arrays by state_dict key, every
    name and shape checked first (C-contiguous copies)."""
    from fashion_cnn.validate import check_tensors

    rows = table()
    check_tensors(weights, {r.keras: r.keras_shape for r in rows}, source, shape_of=np.shape,
                  what="keras weights do not match the book's CNN: ")
    return {r.torch: np.ascontiguousarray(r.transform.to_torch(np.asarray(weights[r.keras])))
            for r in rows}


def torch_to_keras(weights: Mapping[str, np.ndarray], source: str = "torch weights") -> dict:
    """PyTorch arrays by state_dict key → the book's Keras arrays by structural name."""
    from fashion_cnn.validate import check_tensors

    rows = table()
    check_tensors(weights, {r.torch: r.torch_shape for r in rows}, source, shape_of=np.shape,
                  what="torch weights do not match the book's CNN: ")
    return {r.keras: np.ascontiguousarray(r.transform.to_keras(np.asarray(weights[r.torch])))
            for r in rows}
