"""Keras checkpoint files of the book's CNN, read and written without TensorFlow or Keras: the
public interface of `parity.keras_spec` (the architecture and config checks),
`parity.keras_read` (the readers) and `parity.keras_write` (the writers).

Only h5py, zipfile and json are used, so nothing in a file is ever run: a config is read as JSON
and compared field by field with the book's architecture; Keras's own deserialization (which can
rebuild a Lambda's bytecode) is never called. Three layouts are understood:

- `.keras` (Keras 3): a zip of `metadata.json`, `config.json` and `model.weights.h5`, whose weights
  sit at *positional* paths `layers/<class in snake case>[_k]/vars/<i>` — `layers/conv2d_1` is the
  second Conv2D whatever its `layer.name` (`conv2d_6` in a second session). An `optimizer/vars/N`
  group holds Adam's moments with exactly the weights' shapes; it is never read.
- `.weights.h5` (Keras 3 `save_weights`): the same h5 layout without a config; it is mapped by the
  known architecture.
- legacy `.h5`: the full model that TF 2.x `model.save('best-cnn-model.h5')` writes (and Keras 3
  still writes): a `model_config` attribute and `model_weights/<layer name>/…` whose datasets are
  listed, in order, by each group's `weight_names` attribute (`conv2d/kernel:0` in TF 2.x,
  `sequential/conv2d/kernel` in Keras 3); `optimizer_weights` beside it is never read. A TF 2.x
  `save_weights('x.h5')` file (root `layer_names`, no config) is read the same way.

Every reader returns the weights by *structural* name (`conv2d/kernel`, `dense_1/bias`: the rows
of `parity.mapping.TABLE`) after checking everything — the architecture, each weight against its
own config, missing and extra tensors, dtype, NaN/Inf — and raises UserError naming the file and
the first defect. The writers write the layout Keras 3.15.1 writes (same members, groups,
attributes and config), so that plain `keras.models.load_model` opens a written `.keras` or `.h5`.
"""

from __future__ import annotations

from parity.keras_read import KerasCheckpoint, read_keras
from parity.keras_spec import (
    BOOK_LAYERS,
    H5_SUFFIX,
    INPUT_SHAPE,
    KERAS_SUFFIX,
    POSITIONAL_PATHS,
    WEIGHTS_H5_SUFFIX,
    check_config,
    keras_kind,
)
from parity.keras_write import book_config, legacy_book_config, write_keras_file

__all__ = [
    "BOOK_LAYERS",
    "H5_SUFFIX",
    "INPUT_SHAPE",
    "KERAS_SUFFIX",
    "POSITIONAL_PATHS",
    "WEIGHTS_H5_SUFFIX",
    "KerasCheckpoint",
    "book_config",
    "check_config",
    "keras_kind",
    "legacy_book_config",
    "read_keras",
    "write_keras_file",
]
