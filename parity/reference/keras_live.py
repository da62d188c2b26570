"""The two sides of a generic port's check, each layer's output in Keras's layout: the Keras
side (`keras_reference`: Keras itself, or where it cannot be imported the numpy reference of its
layers, `parity.reference.numpy_keras`) and the PyTorch side (`torch_layer_outputs`, read
with forward hooks).

The Keras model is built from the *checked* config this port writes (only the fields the
converters read, for supported built-in layer classes), each variable created holding the port's
own tensor — never a model Keras deserialised from the source file. The book's CNN alone has its
own runners, `parity.runners`, for `parity.check`'s named report and `parity.visualize`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.hdf5 import aligned
from parity.build import Built, ModelSpec, to_keras_layout
from parity.formats.keras_write import _as_sequential, model_config
from parity.reference.numpy_keras import layer_outputs


def torch_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(
        np.ascontiguousarray(images.transpose(0, 3, 1, 2) if images.ndim == 4 else images)
    )


class KerasReference:
    """The Keras model of a chain with its weights, built from the checked config.

    Each layer is deserialized from the config this port writes (only the fields the converters
    read, for supported built-in classes), unbuilt; its initializers are replaced by ones that
    return the port's own tensors, so every Keras variable is created holding its value: no
    random or zero initial copy, one layer's Keras-layout tensors in flight at a time, and on
    TensorFlow no copy at all of those tensors (see `_Given`)."""

    def __init__(
        self, spec: ModelSpec, built: Built, weights: Mapping[str, np.ndarray], source: str = ""
    ) -> None:
        from keras_ref.backend import keras  # TensorFlow's start-up lines silenced

        self.source = source
        seq = _as_sequential(spec)
        config = model_config(seq, [None] * len(seq.layers))["config"]
        tensorflow = keras.backend.backend() == "tensorflow"
        by_layer: dict[str, list[str]] = {}
        for row in built.rows:
            by_layer.setdefault(row.keras.rsplit("/", 1)[0], []).append(row.keras)
        layers = []
        for cfg, original in zip(config["layers"][1:], spec.layers, strict=True):
            # Named by its positional path (conv2d, dense_1, …), not by the file's name for it:
            # the reference computes the same either way, and a name is file text.
            cfg = {**cfg, "config": {**cfg["config"], "name": original.path}}
            layer = keras.layers.deserialize(cfg)
            for name in by_layer.get(original.path, []):
                var = name.rsplit("/", 1)[1]  # kernel, bias, gamma, beta, moving_mean, …
                setattr(layer, f"{var}_initializer", _Given(weights, name, tensorflow))
            layers.append(layer)
        self.model = keras.Sequential(
            [keras.Input(batch_shape=config["layers"][0]["config"]["batch_shape"]), *layers],
            name="reference",
        )
        for layer, original in zip(self.model.layers, spec.layers, strict=True):
            names = by_layer.get(original.path, [])
            if [v.path.rsplit("/", 1)[-1] for v in layer.weights] != [
                n.rsplit("/", 1)[1] for n in names
            ]:  # every variable must have come from the port's tensors, in the port's order
                raise UserError(f"{original.name}: Keras built variables "
                                f"{[v.path for v in layer.weights]}, the port has {names}")
        self.cut = keras.Model(self.model.inputs, [layer.output for layer in self.model.layers])
        self.description = f"keras {keras.__version__} (CPU)"

    def outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Every layer's output on `images` (one batch)."""
        out = _keras_call(
            lambda: self.cut.predict(images, verbose=0, batch_size=len(images)), self.source)
        return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]

    def final(self, images: np.ndarray) -> np.ndarray:
        """The model's output on `images` (one batch)."""
        return np.asarray(_keras_call(
            lambda: self.model.predict(images, verbose=0, batch_size=len(images)), self.source))


def _keras_call(fn, source: str):
    """Keras's and TensorFlow's own exceptions while the reference runs, as our one line."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (a third party's boundary: any of its errors)
        raise UserError(f"{source}: Keras could not run the model ({type(err).__name__}: "
                        f"{first_line(err)})") from None


class NumpyReference:
    """Where Keras cannot be imported (a GPU box with torch only): the float32 numpy
    implementation of the Keras layers in Keras's own layout (`parity.reference.numpy_keras`)."""

    description = "numpy float32 reference of the Keras layers (Keras not importable)"

    def __init__(self, spec: ModelSpec, weights: Mapping[str, np.ndarray]) -> None:
        self.spec = spec
        self.weights = {name: np.array(weights[name], dtype=np.float32) for name in weights}

    def outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Every layer's output on `images` (one batch)."""
        return layer_outputs(self.spec, self.weights, images)

    def final(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[-1]


def keras_reference(
    spec: ModelSpec, built: Built, weights: Mapping[str, np.ndarray], source: str = ""
) -> KerasReference | NumpyReference:
    """Keras itself where it imports; the numpy reference of its layers where it does not."""
    try:
        from keras_ref.backend import keras  # noqa: F401
    except ImportError:
        return NumpyReference(spec, weights)
    return _keras_call(lambda: KerasReference(spec, built, weights, source), source)


class _Given:
    """A Keras initializer that returns one of the port's tensors (checked against the shape
    Keras asks for).

    On TensorFlow the array is handed over through DLPack, which TensorFlow takes without a
    copy, and the variable keeps that buffer: the reference model holds the port's Keras-layout
    arrays themselves, not copies of them (a numpy array would be copied twice on the way)."""

    def __init__(self, weights: Mapping[str, np.ndarray], name: str, tensorflow: bool) -> None:
        self.weights, self.name, self.tensorflow = weights, name, tensorflow

    def __call__(self, shape, dtype=None):
        value = aligned(np.asarray(self.weights[self.name]))  # TensorFlow's own alignment
        self.weights = {}  # called once: the model must not keep the port's mapping alive
        if tuple(value.shape) != tuple(shape):
            raise UserError(f"{self.name}: Keras builds shape {tuple(shape)}, the port has "
                            f"{value.shape}")
        if self.tensorflow:
            import tensorflow as tf

            return tf.experimental.dlpack.from_dlpack(torch.from_numpy(value).__dlpack__())
        return value


@torch.no_grad()
def torch_layer_outputs(built: Built, images: np.ndarray) -> list[np.ndarray]:
    """Each Keras layer's output computed by the module (Keras layout), read with hooks."""
    module = built.module
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: captured.__setitem__(n, o))
        for n, m in module.named_children()
    ]
    try:
        x = torch_input(images).to(_device_of(module))
        module(x)
    finally:
        for h in hooks:
            h.remove()
    outs, previous = [], x
    for info in built.layers:
        previous = captured[info.modules[-1]] if info.modules else previous
        outs.append(to_keras_layout(info, previous.cpu().numpy()))
    return outs


def _device_of(module: torch.nn.Module) -> torch.device:
    tensor = next(iter(module.state_dict().values()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
