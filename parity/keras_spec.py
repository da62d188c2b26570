"""The book's CNN as a Keras config describes it, and the check that a file's config is it.

Only JSON values are compared: Keras's own deserialization (which can rebuild a Lambda's
bytecode) is never called. Also the file kinds (by extension) and the positional paths Keras 3
stores a Sequential's weights under.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fashion_cnn.errors import UserError
from parity.mapping import TABLE

# The Keras version whose file layout the writers mirror (keras/src/saving/saving_lib.py and
# keras/src/legacy/saving/legacy_h5_format.py of that release).
KERAS_FORMAT_VERSION = "3.15.1"

KERAS_SUFFIX = ".keras"
WEIGHTS_H5_SUFFIX = ".weights.h5"
H5_SUFFIX = ".h5"

# A `.keras` zip's members, and a bound on what is read of each (the book's weights take 1.3 MB,
# with Adam's two moments 4 MB): a zip bomb or a foreign archive is refused before it is inflated.
CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER = "config.json", "metadata.json", "model.weights.h5"
MAX_JSON_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 256 << 20


def keras_kind(path: str | os.PathLike) -> str | None:
    """'keras', 'weights.h5' or 'h5' from the file name; None for anything else."""
    name = Path(path).name.lower()
    if name.endswith(KERAS_SUFFIX):
        return "keras"
    if name.endswith(WEIGHTS_H5_SUFFIX):
        return "weights.h5"
    if name.endswith(H5_SUFFIX):
        return "h5"
    return None



# Keras's defaults for the fields a config may leave out (older files omit `groups`, say).
_DEFAULTS = {
    "Conv2D": {
        "strides": (1, 1),
        "padding": "valid",
        "data_format": "channels_last",
        "dilation_rate": (1, 1),
        "groups": 1,
        "activation": "linear",
        "use_bias": True,
    },
    "MaxPooling2D": {"strides": None, "padding": "valid", "data_format": "channels_last"},
    "Flatten": {"data_format": "channels_last"},
    "Dense": {"activation": "linear", "use_bias": True},
    "Dropout": {"noise_shape": None},
}


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the book's Sequential: class, the config fields that decide its maths, and
    (for layers with weights) the structural name of its weights in `parity.mapping.TABLE`."""

    class_name: str
    fields: dict = field(default_factory=dict)
    weights: str | None = None  # structural prefix: "conv2d", "dense_1", …


_CONV = {
    "kernel_size": (3, 3),
    "strides": (1, 1),
    "padding": "same",
    "data_format": "channels_last",
    "dilation_rate": (1, 1),
    "groups": 1,
    "activation": "relu",
    "use_bias": True,
}
_POOL = {"pool_size": (2, 2), "strides": (2, 2), "padding": "valid", "data_format": "channels_last"}

BOOK_LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("Conv2D", {"filters": 32, **_CONV}, "conv2d"),
    LayerSpec("MaxPooling2D", dict(_POOL)),
    LayerSpec("Conv2D", {"filters": 64, **_CONV}, "conv2d_1"),
    LayerSpec("MaxPooling2D", dict(_POOL)),
    LayerSpec("Flatten", {"data_format": "channels_last"}),
    LayerSpec("Dense", {"units": 100, "activation": "relu", "use_bias": True}, "dense"),
    LayerSpec("Dropout", {"rate": 0.4, "noise_shape": None}),
    LayerSpec("Dense", {"units": 10, "activation": "softmax", "use_bias": True}, "dense_1"),
)
INPUT_SHAPE = (None, 28, 28, 1)  # NHWC, batch free
KNOWN_CLASSES = {"InputLayer"} | {spec.class_name for spec in BOOK_LAYERS}

# Keras 3 stores a Sequential's layers at positional paths named after their class in snake case
# (keras.src.utils.naming.to_snake_case), numbered per class: conv2d, conv2d_1, max_pooling2d, …
_SNAKE = {
    "Conv2D": "conv2d",
    "MaxPooling2D": "max_pooling2d",
    "Flatten": "flatten",
    "Dense": "dense",
    "Dropout": "dropout",
}


def _positional_paths() -> list[str]:
    counts: dict[str, int] = {}
    paths = []
    for spec in BOOK_LAYERS:
        base = _SNAKE[spec.class_name]
        k = counts.get(base, 0)
        counts[base] = k + 1
        paths.append(base if k == 0 else f"{base}_{k}")
    return paths


POSITIONAL_PATHS = _positional_paths()  # layers/<path>/vars/<i>, in BOOK_LAYERS order
# Structural weight name → shape, from the one mapping table.
KERAS_SHAPES = {row.keras: row.keras_shape for row in TABLE}


def _norm(value):
    """JSON lists → tuples, so [3, 3] and (3, 3) compare equal; a bare int kernel size stays."""
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    return value


def dtype_name(dtype) -> str | None:
    """A layer's dtype: "float32", or Keras 3's {"class_name": "DTypePolicy", "config": {…}}."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, Mapping):
        cfg = dtype.get("config")
        if isinstance(cfg, Mapping):
            return cfg.get("name")
    return repr(dtype)


def _field(class_name: str, cfg: Mapping, name: str):
    value = _norm(cfg.get(name, _DEFAULTS.get(class_name, {}).get(name)))
    if name in ("kernel_size", "strides", "pool_size", "dilation_rate") and isinstance(value, int):
        value = (value, value)
    if class_name == "MaxPooling2D" and name == "strides" and value is None:
        value = _norm(cfg.get("pool_size"))  # Keras: strides default to the pool size
    if name == "data_format" and value is None:
        value = "channels_last"
    return value


def is_custom(layer: Mapping) -> bool:
    """Whether a layer's config names a class registered outside keras.layers (a custom layer,
    whose code lives elsewhere): refused whatever its class name says."""
    cls = layer.get("class_name")
    return layer.get("registered_name") not in (None, cls) or layer.get("module") not in (
        None,
        "keras.layers",
    )


def layer_config(layer: Mapping) -> Mapping:
    """A layer's `config`, or {} where a malformed file has something else there."""
    cfg = layer.get("config")
    return cfg if isinstance(cfg, Mapping) else {}


def _input_shapes(model_cfg: Mapping, layers: list) -> list[tuple[str, tuple]]:
    """Every input shape the config states, with where it says so."""
    found = []
    if "build_input_shape" in model_cfg and model_cfg["build_input_shape"] is not None:
        found.append(("build_input_shape", _norm(model_cfg["build_input_shape"])))
    for layer in layers:
        cfg = layer_config(layer)
        for key in ("batch_shape", "batch_input_shape"):
            if cfg.get(key) is not None:
                found.append((f"{cfg.get('name', layer.get('class_name'))}.{key}", _norm(cfg[key])))
    return found


def check_config(config: object, source: str) -> list[str]:
    """Check that a model config is the book's CNN; return its layer names in BOOK_LAYERS order.

    Refuses any class outside the handful this architecture uses (a Lambda, a custom layer) before
    anything else, then names the first layer and field that differ from the book's model.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping):
        raise UserError(f"{source}: the model config is not a Keras model config")
    layers = config["config"].get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, Mapping) for x in layers):
        raise UserError(f"{source}: the model config has no list of layers")
    # Layers are numbered as Keras's `model.layers` numbers them: the InputLayer not counted.
    body = [x for x in layers if x.get("class_name") != "InputLayer"]
    index = {id(x): f"layer {i}" for i, x in enumerate(body)}
    for layer in layers:
        cls = layer.get("class_name")
        cfg = layer_config(layer)
        custom = is_custom(layer)
        if not isinstance(cls, str) or cls not in KNOWN_CLASSES or custom:
            what = f"{layer.get('module')}.{cls}" if custom else cls
            raise UserError(
                f"{source}: {index.get(id(layer), 'the input layer')} ({cfg.get('name', '?')}) "
                f"is a {what}, not a layer of the book's CNN; refused without running it"
            )
    if config.get("class_name") != "Sequential":
        raise UserError(
            f"{source}: the model is a {config.get('class_name')}, not the book's Sequential"
        )
    for where, shape in _input_shapes(config["config"], layers):
        if shape != INPUT_SHAPE:
            raise UserError(
                f"{source}: input shape {where} is {shape}, the book's CNN takes {INPUT_SHAPE}"
            )
    names = []
    for i, spec in enumerate(BOOK_LAYERS):
        if i >= len(body):
            raise UserError(
                f"{source}: the model ends after {len(body)} layers; the book's CNN "
                f"has {len(BOOK_LAYERS)}, next a {spec.class_name}"
            )
        layer = body[i]
        cfg = layer_config(layer)
        name = cfg.get("name", f"#{i}")
        if layer.get("class_name") != spec.class_name:
            raise UserError(
                f"{source}: layer {i} ({name}) is a {layer.get('class_name')}; "
                f"the book's CNN has a {spec.class_name} there"
            )
        for key, want in spec.fields.items():
            got = _field(spec.class_name, cfg, key)
            if got != want:
                raise UserError(
                    f"{source}: layer {i} ({name}, {spec.class_name}) has "
                    f"{key}={got!r}; the book's CNN has {want!r}"
                )
        dtype = dtype_name(cfg.get("dtype"))
        if dtype not in (None, "float32"):
            raise UserError(
                f"{source}: layer {i} ({name}) computes in {dtype}; the book's CNN is float32"
            )
        names.append(name)
    if len(body) > len(BOOK_LAYERS):
        extra = body[len(BOOK_LAYERS)]
        raise UserError(
            f"{source}: layer {len(BOOK_LAYERS)} "
            f"({layer_config(extra).get('name', '?')}, "
            f"{extra.get('class_name')}) is one more than the book's CNN has"
        )
    return names


def dtype_policy() -> dict:
    """A layer's `dtype` as Keras 3 writes it in a config: float32."""
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "float32"},
        "registered_name": None,
    }


def sequential_config(name: str, batch_shape: list, layers: list[dict]) -> dict:
    """The config.json Keras 3.15.1 writes for a Sequential: its InputLayer, then `layers`."""
    input_layer = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {
            "batch_shape": list(batch_shape),
            "dtype": "float32",
            "sparse": False,
            "ragged": False,
            "name": "input_layer",
            "optional": False,
        },
        "registered_name": None,
    }
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": name,
            "trainable": True,
            "dtype": dtype_policy(),
            "layers": [input_layer, *layers],
            "build_input_shape": list(batch_shape),
        },
        "registered_name": None,
        "build_config": {"input_shape": list(batch_shape)},
        "compile_config": {},
    }
