"""Writing Keras checkpoint files of the book's CNN without TensorFlow or Keras: the layout
Keras 3.15.1 writes (same members, groups, attributes and config; keras/src/saving/saving_lib.py
and keras/src/legacy/saving/legacy_h5_format.py of that release), so that plain
`keras.models.load_model` opens a written `.keras` or `.h5`."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write
from fashion_cnn.validate import check_tensors
from parity.keras_spec import (
    BOOK_LAYERS,
    CONFIG_MEMBER,
    INPUT_SHAPE,
    KERAS_FORMAT_VERSION,
    KERAS_SHAPES,
    METADATA_MEMBER,
    POSITIONAL_PATHS,
    WEIGHTS_MEMBER,
    LayerSpec,
    dtype_policy,
    keras_kind,
)


def _layer_config(spec: LayerSpec, name: str, input_shape: list | None) -> dict:
    f = spec.fields
    cfg: dict = {"name": name, "trainable": True, "dtype": dtype_policy()}
    if spec.class_name in ("Conv2D", "Dense"):
        init = {
            "kernel_initializer": {
                "module": "keras.initializers",
                "class_name": "GlorotUniform",
                "config": {"seed": None, "input_axes": None, "output_axes": None},
                "registered_name": None,
            },
            "bias_initializer": {
                "module": "keras.initializers",
                "class_name": "Zeros",
                "config": {},
                "registered_name": None,
            },
            "kernel_regularizer": None,
            "bias_regularizer": None,
        }
        if spec.class_name == "Conv2D":
            cfg.update(
                filters=f["filters"],
                kernel_size=list(f["kernel_size"]),
                strides=list(f["strides"]),
                padding=f["padding"],
                data_format=f["data_format"],
                dilation_rate=list(f["dilation_rate"]),
                groups=f["groups"],
                activation=f["activation"],
                use_bias=f["use_bias"],
                **init,
                activity_regularizer=None,
                kernel_constraint=None,
                bias_constraint=None,
            )
        else:
            cfg.update(
                units=f["units"],
                activation=f["activation"],
                use_bias=f["use_bias"],
                **init,
                kernel_constraint=None,
                bias_constraint=None,
                quantization_config=None,
            )
    elif spec.class_name == "MaxPooling2D":
        cfg.update(
            pool_size=list(f["pool_size"]),
            padding=f["padding"],
            strides=list(f["strides"]),
            data_format=f["data_format"],
        )
    elif spec.class_name == "Flatten":
        cfg.update(data_format=f["data_format"])
    elif spec.class_name == "Dropout":
        cfg.update(rate=f["rate"], seed=None, noise_shape=None)
    layer = {
        "module": "keras.layers",
        "class_name": spec.class_name,
        "config": cfg,
        "registered_name": None,
    }
    if input_shape is not None:
        layer["build_config"] = {"input_shape": input_shape}
    return layer


# Each layer's build input shape, as Keras records it (pooling and dropout record none).
_BUILD_SHAPES = (
    [None, 28, 28, 1],
    None,
    [None, 14, 14, 32],
    None,
    [None, 7, 7, 64],
    [None, 3136],
    None,
    [None, 100],
)


def book_config() -> dict:
    """The config.json Keras 3.15.1 writes for `keras_ref.model.build_model()` in a new session."""
    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {
                "batch_shape": list(INPUT_SHAPE),
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
                "name": "input_layer",
                "optional": False,
            },
            "registered_name": None,
        }
    ]
    for spec, path, shape in zip(BOOK_LAYERS, POSITIONAL_PATHS, _BUILD_SHAPES, strict=True):
        layers.append(_layer_config(spec, path, shape))
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "trainable": True,
            "dtype": dtype_policy(),
            "layers": layers,
            "build_input_shape": list(INPUT_SHAPE),
        },
        "registered_name": None,
        "build_config": {"input_shape": list(INPUT_SHAPE)},
        "compile_config": {},
    }


def legacy_book_config() -> dict:
    """The `model_config` Keras 3's legacy `.h5` save writes (no module / registered_name /
    build_config on layers; `use_legacy_config=True` in legacy_h5_format.py)."""
    config = book_config()
    layers = []
    for layer in config["config"]["layers"]:
        layers.append({"class_name": layer["class_name"], "config": layer["config"]})
    return {"class_name": "Sequential", "config": {**config["config"], "layers": layers}}


def _check_for_writing(weights: Mapping[str, np.ndarray], dst: Path) -> dict[str, np.ndarray]:
    check_tensors(weights, KERAS_SHAPES, f"{dst}: cannot write", shape_of=np.shape)
    return {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in KERAS_SHAPES}


def _write_keras3_h5(h5: h5py.File, weights: Mapping[str, np.ndarray]) -> None:
    """`layers/<path>/vars/{0,1}` for each layer, empty `vars` for the rest, as H5IOStore does."""
    layers = h5.create_group("layers")
    for spec, path in zip(BOOK_LAYERS, POSITIONAL_PATHS, strict=True):
        vars_group = layers.create_group(path).create_group("vars")
        vars_group.attrs["name"] = path
        if spec.weights:
            vars_group.create_dataset("0", data=weights[f"{spec.weights}/kernel"])
            vars_group.create_dataset("1", data=weights[f"{spec.weights}/bias"])
    h5.create_group("vars").attrs["name"] = "sequential"


def _weights_h5_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        _write_keras3_h5(h5, weights)
    return buffer.getvalue()


def write_keras_file(
    weights: Mapping[str, np.ndarray], dst: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write weights (structural names, Keras layout) to `.keras`, `.weights.h5` or legacy `.h5`,
    atomically (temporary file beside `dst`, then rename)."""
    dst = Path(dst)
    kind = keras_kind(dst)
    if kind is None:
        raise UserError(
            f"{dst}: unknown Keras extension {dst.suffix or '(none)'!r}; "
            f"expected .keras, .h5 or .weights.h5"
        )
    weights = _check_for_writing(weights, dst)

    def write_keras(tmp: Path) -> None:
        metadata = {
            "keras_version": KERAS_FORMAT_VERSION,
            "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
        with zipfile.ZipFile(tmp, "w") as zf:  # stored, not deflated, as Keras writes it
            zf.writestr(METADATA_MEMBER, json.dumps(metadata))
            zf.writestr(CONFIG_MEMBER, json.dumps(book_config()))
            zf.writestr(WEIGHTS_MEMBER, _weights_h5_bytes(weights))

    def write_weights_h5(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            _write_keras3_h5(h5, weights)

    def write_legacy_h5(tmp: Path) -> None:
        # legacy_h5_format.save_model_to_hdf5 without an optimizer: config attributes, then
        # model_weights/<layer>/<model>/<layer>/{kernel,bias} listed by weight_names.
        with h5py.File(tmp, "w") as h5:
            h5.attrs["backend"] = "tensorflow"
            h5.attrs["keras_version"] = KERAS_FORMAT_VERSION
            h5.attrs["model_config"] = json.dumps(legacy_book_config()).encode("utf8")
            group = h5.create_group("model_weights")
            group.attrs["layer_names"] = np.array([p.encode("utf8") for p in POSITIONAL_PATHS])
            group.attrs["backend"] = b"tensorflow"
            group.attrs["keras_version"] = KERAS_FORMAT_VERSION.encode("utf8")
            for spec, path in sorted(
                zip(BOOK_LAYERS, POSITIONAL_PATHS, strict=True), key=lambda x: x[1]
            ):
                layer_group = group.create_group(path)
                names = (
                    [f"sequential/{path}/{v}" for v in ("kernel", "bias")] if spec.weights else []
                )
                layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
                if spec.weights:
                    for name, var in zip(names, ("kernel", "bias"), strict=True):
                        layer_group.create_dataset(name, data=weights[f"{spec.weights}/{var}"])
            group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([])

    write = {"keras": write_keras, "weights.h5": write_weights_h5, "h5": write_legacy_h5}[kind]
    return atomic_write(dst, write, force=force)
