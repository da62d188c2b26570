"""The book's CNN as the config Keras 3.15.1 writes for it (`config.json` of a `.keras`, and the
legacy `.h5`'s `model_config`): the architecture a weights-only file or a plain `BookCNN`
state_dict is read as. Files themselves are written by `parity.formats.keras_write` for
every model."""

from __future__ import annotations

from parity.keras_spec import (
    BOOK_LAYERS,
    INPUT_SHAPE,
    POSITIONAL_PATHS,
    LayerSpec,
    dtype_policy,
    sequential_config,
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
        _layer_config(spec, path, shape)
        for spec, path, shape in zip(BOOK_LAYERS, POSITIONAL_PATHS, _BUILD_SHAPES, strict=True)
    ]
    return sequential_config("sequential", list(INPUT_SHAPE), layers)


def legacy_book_config() -> dict:
    """The `model_config` Keras 3's legacy `.h5` save writes (no module / registered_name /
    build_config on layers; `use_legacy_config=True` in legacy_h5_format.py)."""
    config = book_config()
    layers = []
    for layer in config["config"]["layers"]:
        layers.append({"class_name": layer["class_name"], "config": layer["config"]})
    return {"class_name": "Sequential", "config": {**config["config"], "layers": layers}}
