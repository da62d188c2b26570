"""Keras checkpoint files of the book's CNN, read without TensorFlow or Keras: the public
interface of `parity.keras_spec` (the architecture and config checks), `parity.keras_read` (the
readers) and `parity.keras_write` (the book's config). Files are written, for the book's CNN as
for every model, by `parity.formats.keras_write`.

Only h5py, zipfile and json are used, so nothing in a file is ever run: a config is read as JSON
and compared field by field with the book's architecture; Keras's own deserialization (which can
rebuild a Lambda's bytecode) is never called. The layouts read (`.keras`, Keras 3's
`.weights.h5`, the legacy `.h5` of TF 2.x and Keras 3) are described in `parity.keras_read`; the
writer writes what Keras 3.15.1 writes, so plain `keras.models.load_model` opens its files.
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
from parity.keras_write import book_config, legacy_book_config

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
]
