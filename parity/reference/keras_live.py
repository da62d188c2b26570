"""The Keras side of the check: Keras itself, holding the port's own weights — or, where it
cannot be imported, the numpy reference of its layers (`parity.reference.numpy_keras`).

The Keras model is built from the config this port writes for the model (only the fields the
port read, for supported built-in layer classes, each layer named by its positional path, not
by the file's name for it), layer by layer through Keras's functional API; each variable is
created holding the port's tensor — never a model Keras deserialised from the source file, so
nothing in a file is ever run by Keras either.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.hdf5 import aligned
from parity.formats.keras_json import written
from parity.reference.numpy_keras import NumpyReference
from parity.spec import Spec
from parity.verify.probes import probes


class KerasReference:
    """The Keras model of a spec with its weights, and a model giving every probe's output."""

    def __init__(self, spec: Spec, weights: Mapping[str, np.ndarray], source: str = "") -> None:
        from keras_ref.backend import keras  # TensorFlow's start-up lines silenced

        self.source = source
        out = written(spec, source)
        entries = out.config["config"]["layers"]
        entries = entries[1:]  # the InputLayer: made below
        tensorflow = keras.backend.backend() == "tensorflow"
        inputs = keras.Input(batch_shape=[None, *spec.input_shape])
        tensors = {spec.graph.input_name: inputs}
        wanted = {p.node for p in probes(spec) if p.pre}
        pre = {}
        for ns, new, entry in zip(spec.nodes, out.spec.nodes, entries, strict=True):
            if not ns.node.path:  # an operation node (`x + 3.0`): Keras's own op on tensors
                tensors[ns.node.name] = _operation(keras, ns, tensors)
                continue
            # unbuilt (no build_config): its variables are made when it is called, below, by
            # the initializers that hand over the port's tensors
            cfg = {k: v for k, v in entry.items()
                   if k not in ("name", "inbound_nodes", "build_config")}
            cfg["config"] = {**cfg["config"], "name": _safe(new)}
            split = ns.node.name in wanted
            if split:  # the layer without its activation, then the activation
                cfg["config"]["activation"] = "linear"
            layer = _layer(keras, ns.entry, cfg)
            if not ns.entry.assign_after_build:
                for var in ns.out.variables:
                    setattr(layer, ns.entry.initializers.get(var.name,
                                                             f"{var.name}_initializer"),
                            _Given(weights, ns.key(var), tensorflow))
            xs = [tensors[i] for i in ns.node.tensor_inputs]
            y = layer(xs if len(xs) > 1 else xs[0])
            if ns.entry.assign_after_build:
                for v, var in zip(layer.weights, ns.out.variables, strict=True):
                    v.assign(np.asarray(weights[ns.key(var)]))
                if ns.entry.finalize:
                    layer.finalize_state()
            self._check_variables(layer, ns)
            if split:
                pre[ns.node.name] = y
                y = keras.layers.Activation(ns.params.activation, name=f"{_safe(new)}_act")(y)
            tensors[ns.node.name] = y
        self.model = keras.Model(inputs, tensors[spec.graph.output], name="reference")
        self._inputs = inputs
        self._probed = [pre[p.node] if p.pre else tensors[p.node] for p in probes(spec)]
        self._cuts: dict[tuple[int, int], object] = {}
        self.description = f"keras {keras.__version__} (CPU)"

    @staticmethod
    def _check_variables(layer, ns) -> None:
        """Every variable must have come from the port's tensors, in the port's order."""
        got = [v.path.rsplit("/", 1)[-1] for v in layer.weights]
        want = [v.name for v in ns.out.variables]
        if ns.entry.assign_after_build:  # unnamed in Keras (LayerScale's is "variable")
            got = [tuple(v.shape) for v in layer.weights]
            want = [tuple(v.shape) for v in ns.out.variables]
        if got != want:
            raise UserError(f"{ns.where}: Keras built variables {got}, the port has {want}")

    def outputs(self, images: np.ndarray, start: int = 0,
                stop: int | None = None) -> list[np.ndarray]:
        """The probes' [start, stop) outputs on `images` (one batch): a model cut at those
        layers (made once per range), so that no others are kept."""
        stop = len(self._probed) if stop is None else stop
        cut = self._cuts.get((start, stop))
        if cut is None:
            from keras_ref.backend import keras

            cut = self._cuts[(start, stop)] = keras.Model(self._inputs,
                                                          self._probed[start:stop])
        out = _keras_call(lambda: cut.predict(images, verbose=0, batch_size=len(images)),
                          self.source)
        return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]

    def final(self, images: np.ndarray) -> np.ndarray:
        """The model's output on `images` (one batch)."""
        return np.asarray(_keras_call(
            lambda: self.model.predict(images, verbose=0, batch_size=len(images)), self.source))


def _layer(keras, entry, cfg: dict):
    """A Keras layer from the config we wrote: keras.layers' own classes by name, an
    application's layer from Keras's own module (`Entry.keras_class`)."""
    if entry.keras_class is None:
        return keras.layers.deserialize(cfg)
    import importlib

    module, name = entry.keras_class
    return getattr(importlib.import_module(module), name).from_config(cfg["config"])


def _operation(keras, ns, tensors):
    """An operation node through keras.ops: its tensors, and its number as a float32."""
    p = ns.params
    fn = {"add": keras.ops.add, "subtract": keras.ops.subtract, "multiply": keras.ops.multiply,
          "divide": keras.ops.true_divide}[p.op]
    xs = [tensors[i] for i in ns.node.tensor_inputs]
    if p.const is None:
        return fn(xs[0], xs[1])
    c = np.float32(p.const)
    return fn(c, xs[0]) if p.const_first else fn(xs[0], c)


def _safe(ns) -> str:
    """A layer's name in the reference: its positional path (conv2d, dense_1), made of our
    own characters; the reference computes the same whatever its layers are called."""
    # "at_" keeps them apart from the names Keras gives its operation nodes (add, add_1, …)
    return "at_" + (ns.node.path or ns.node.class_name.rsplit(".", 1)[-1].lower()).replace("/", "_")


def _keras_call(fn, source: str):
    """Keras's and TensorFlow's own exceptions while the reference runs, as our one line."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (a third party's boundary: any of its errors)
        raise UserError(f"{source}: Keras could not run the model ({type(err).__name__}: "
                        f"{first_line(err)})") from None


def keras_reference(
    spec: Spec, weights: Mapping[str, np.ndarray], source: str = ""
) -> KerasReference | NumpyReference:
    """Keras itself where it imports; the numpy reference of its layers where it does not."""
    try:
        from keras_ref.backend import keras  # noqa: F401
    except ImportError:
        return NumpyReference(spec, weights)
    return _keras_call(lambda: KerasReference(spec, weights, source), source)


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
