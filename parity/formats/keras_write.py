"""Writing any supported model as a Keras file (`.keras`, legacy `.h5`, `.weights.h5`) in the
layout Keras 3.15.1 writes, without TensorFlow: the config from the converters' fields, the
weights at Keras's positional paths."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write
from fashion_cnn.validate import check_tensors
from parity.build import KerasLayer, ModelSpec, build, to_snake_case
from parity.keras_spec import (
    CONFIG_MEMBER,
    KERAS_FORMAT_VERSION,
    METADATA_MEMBER,
    WEIGHTS_MEMBER,
    dtype_policy,
    keras_kind,
    sequential_config,
)
from parity.layers import FIELDS

Shape = tuple[int, ...]


# --- writing Keras files ---------------------------------------------------------------------


def model_config(spec: ModelSpec, build_shapes: list[Shape | None]) -> dict:
    """The config.json Keras 3.15.1 writes for a Sequential of these layers."""
    layers = []
    for layer, shape in zip(spec.layers, build_shapes, strict=True):
        kept = {k: layer.config[k] for k in FIELDS[layer.class_name] if k in layer.config}
        cfg = {"name": layer.name, "trainable": True, "dtype": dtype_policy(), **kept}
        entry = {
            "module": "keras.layers",
            "class_name": layer.class_name,
            "config": cfg,
            "registered_name": None,
        }
        if shape is not None:
            entry["build_config"] = {"input_shape": [None, *shape]}
        layers.append(entry)
    return sequential_config(spec.name, [None, *spec.input_shape], layers)


def _as_sequential(spec: ModelSpec) -> ModelSpec:
    """A single-chain Functional written back as the Sequential it is: paths renumbered without
    the InputLayer."""
    counts: dict[str, int] = {}
    layers = []
    for layer in spec.layers:
        base = to_snake_case(layer.class_name)
        k = counts.get(base, 0)
        counts[base] = k + 1
        layers.append(KerasLayer(layer.class_name, layer.config, base if k == 0 else f"{base}_{k}"))
    return ModelSpec(spec.input_shape, tuple(layers), spec.name, functional=False)


def write_keras_model(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    dst: str | os.PathLike,
    *,
    force: bool = False,
) -> Path:
    """Write a chain and its Keras-layout weights (by "<path>/<var>") as `.keras`, legacy `.h5`
    or `.weights.h5` (weights only), in the layout Keras 3.15.1 writes, atomically.

    Each tensor is written straight from `weights` (a Mapping that may compute it on access):
    no second copy of the model is made in memory. A `.keras`'s `model.weights.h5` is built in
    an anonymous temporary file beside DST and streamed into the archive."""
    dst = Path(dst)
    kind = keras_kind(dst)
    if kind is None:
        raise UserError(f"{dst}: expected a .keras, .h5 or .weights.h5 destination")
    seq = _as_sequential(spec)
    renamed = {old.path: new.path for old, new in zip(spec.layers, seq.layers, strict=True)}
    built = build(seq, str(dst))
    layer_vars: dict[str, list[tuple[str, str]]] = {layer.path: [] for layer in seq.layers}
    renamed_weights = {}
    for name, array in weights.items():
        path, var = name.rsplit("/", 1)
        renamed_weights[f"{renamed.get(path, path)}/{var}"] = array
    check_tensors(
        renamed_weights,
        {r.keras: r.keras_shape for r in built.rows},
        str(dst),
        shape_of=np.shape,
        what="cannot write: ",
    )
    for row in built.rows:
        path, var = row.keras.rsplit("/", 1)
        layer_vars[path].append((var, row.keras))  # read from `renamed_weights` when written

    def tensor(name: str) -> np.ndarray:
        return np.ascontiguousarray(renamed_weights[name], np.float32)
    shapes: list[Shape | None] = [seq.input_shape, *(i.shape for i in built.layers[:-1])]
    build_shapes = [
        s if layer_vars[lay.path] or lay.class_name == "Flatten" else None
        for lay, s in zip(seq.layers, shapes, strict=True)
    ]
    config = model_config(seq, build_shapes)

    def write_h5_weights(h5: h5py.File) -> None:
        group = h5.create_group("layers")
        for layer in seq.layers:
            vars_group = group.create_group(layer.path).create_group("vars")
            vars_group.attrs["name"] = layer.name
            for i, (_, name) in enumerate(layer_vars[layer.path]):
                vars_group.create_dataset(str(i), data=tensor(name))
        h5.create_group("vars").attrs["name"] = seq.name

    def write_keras(tmp: Path) -> None:
        metadata = {
            "keras_version": KERAS_FORMAT_VERSION,
            "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
        with tempfile.TemporaryFile(dir=tmp.parent) as scratch:
            with h5py.File(scratch, "w") as h5:
                write_h5_weights(h5)
            scratch.seek(0)
            with zipfile.ZipFile(tmp, "w") as zf:  # stored, not deflated, as Keras writes it
                zf.writestr(METADATA_MEMBER, json.dumps(metadata))
                zf.writestr(CONFIG_MEMBER, json.dumps(config))
                with zf.open(WEIGHTS_MEMBER, "w", force_zip64=True) as member:
                    shutil.copyfileobj(scratch, member, 1 << 20)

    def write_weights_h5(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            write_h5_weights(h5)

    def write_legacy(tmp: Path) -> None:
        legacy = {
            "class_name": "Sequential",
            "config": {
                **config["config"],
                "layers": [
                    {"class_name": x["class_name"], "config": x["config"]}
                    for x in config["config"]["layers"]
                ],
            },
        }
        with h5py.File(tmp, "w") as h5:
            h5.attrs["backend"] = "tensorflow"
            h5.attrs["keras_version"] = KERAS_FORMAT_VERSION
            h5.attrs["model_config"] = json.dumps(legacy).encode("utf8")
            group = h5.create_group("model_weights")
            group.attrs["layer_names"] = np.array([x.name.encode("utf8") for x in seq.layers])
            group.attrs["backend"] = b"tensorflow"
            group.attrs["keras_version"] = KERAS_FORMAT_VERSION.encode("utf8")
            for layer in seq.layers:
                layer_group = group.create_group(layer.name)
                names = [f"{seq.name}/{layer.name}/{var}" for var, _ in layer_vars[layer.path]]
                layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
                for wname, (_, name) in zip(names, layer_vars[layer.path], strict=True):
                    layer_group.create_dataset(wname, data=tensor(name))
            group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([])

    write = {"keras": write_keras, "weights.h5": write_weights_h5, "h5": write_legacy}[kind]
    return atomic_write(dst, write, force=force)
