"""Real checkpoints for the parity suite and the bad-input tests, made once per test session.

Two Keras models of the book, built in one process (so the second's layers are named conv2d_2,
dense_3 …, as in a second session): one with Keras's random initialisation, one briefly trained
(one seeded epoch of Adam on 3,000 real training images), each saved by Keras itself in every
format it writes — `.keras`, legacy `.h5` and `.weights.h5` — the trained one with its optimizer
state. Plus a TF 2.x-style legacy `.h5` (`model_weights/<name>/<name>/kernel:0`), restructured
with h5py from Keras's own file, since TF 2.x itself cannot be installed beside Keras 3.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from parity.book import KERAS_NAMES

SEED = 42  # keras.utils.set_random_seed, as the book seeds it
TRAIN_IMAGES = 3000  # one epoch of 94 batches of 32: seconds on two cores, well past random init
FORMATS = (".keras", ".h5", ".weights.h5")


@dataclass(frozen=True)
class KerasCheckpoints:
    """One Keras model saved in every format, with the weights it held (structural names)."""

    name: str
    files: dict[str, Path]  # ".keras" / ".h5" / ".weights.h5" → file
    weights: dict[str, np.ndarray]  # model.get_weights() by structural Keras name
    layer_names: list[str]  # layer.name of each layer (conv2d_2 … in the second model)
    probabilities: np.ndarray  # the Keras model's own predict() on the first 1,000 test images


def _tf2_style_h5(src: Path, dst: Path) -> None:
    """Rewrite Keras 3's legacy `.h5` in the layout TF 2.x wrote: weights at
    `model_weights/<layer>/<layer>/kernel:0`, InputLayer's `batch_input_shape`, Adam's moments
    at `optimizer_weights/Adam/<layer>/kernel/m:0`."""
    with h5py.File(src, "r") as old, h5py.File(dst, "w") as new:
        config = json.loads(old.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "InputLayer":
                layer["config"]["batch_input_shape"] = layer["config"].pop("batch_shape")
        new.attrs["model_config"] = json.dumps(config).encode("utf8")
        new.attrs["keras_version"] = b"2.4.0"
        new.attrs["backend"] = b"tensorflow"
        group = new.create_group("model_weights")
        names = [
            n.decode() if isinstance(n, bytes) else n
            for n in old["model_weights"].attrs["layer_names"]
        ]
        group.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            src_group = old["model_weights"][name]
            wnames = [
                w.decode() if isinstance(w, bytes) else w for w in src_group.attrs["weight_names"]
            ]
            layer_group = group.create_group(name)
            tf2_names = [f"{name}/{w.rsplit('/', 1)[1]}:0" for w in wnames]
            layer_group.attrs["weight_names"] = np.array([n.encode() for n in tf2_names])
            for wname, tf2_name in zip(wnames, tf2_names, strict=True):
                layer_group.create_dataset(tf2_name, data=src_group[wname][()])
        opt = new.create_group("optimizer_weights")
        opt_names = []
        # Keras names the optimizer's group "adam", or "adam_1", … after other Adams in the process.
        (adam,) = old["optimizer_weights"].values()
        for i, ds in enumerate(adam.values()):
            opt_name = f"Adam/{i}:0"
            opt.create_dataset(opt_name, data=ds[()])
            opt_names.append(opt_name.encode())
        opt.attrs["weight_names"] = np.array(opt_names)


def _save_all(model, out: Path, name: str, images: np.ndarray) -> KerasCheckpoints:
    files = {}
    for suffix in FORMATS:
        path = out / f"{name}{suffix}"
        if suffix == ".weights.h5":
            model.save_weights(path)
        else:
            model.save(path)
        files[suffix] = path
    weights = dict(zip(KERAS_NAMES, model.get_weights(), strict=True))
    probabilities = np.asarray(model.predict(images[:1000], verbose=0))
    return KerasCheckpoints(
        name, files, weights, [layer.name for layer in model.layers], probabilities
    )


@functools.cache
def make_checkpoints(out: Path, data_dir: str | None = None) -> dict[str, KerasCheckpoints]:
    """Build and save both models into `out` (once per process and folder)."""
    import keras

    from fashion_cnn.fashion_mnist import book_split, load_data
    from keras_ref.model import build_model
    from parity.pipeline import load_test_images

    images, _ = load_test_images(data_dir)
    keras.utils.set_random_seed(SEED)
    random = build_model()
    random_ckpts = _save_all(random, out, "random", images)

    trained = build_model()  # the second model of the session: conv2d_2, …, dense_3
    trained.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    (train_input, train_target), _ = load_data(data_dir)
    train_scaled, _, train_target, _ = book_split(train_input, train_target)
    trained.fit(
        train_scaled[:TRAIN_IMAGES].reshape(-1, 28, 28, 1).astype(np.float32),
        train_target[:TRAIN_IMAGES],
        epochs=1,
        batch_size=32,
        verbose=0,
    )
    trained_ckpts = _save_all(trained, out, "trained", images)
    _tf2_style_h5(trained_ckpts.files[".h5"], out / "trained-tf2.h5")
    trained_ckpts.files["tf2.h5"] = out / "trained-tf2.h5"
    return {"random": random_ckpts, "trained": trained_ckpts}


def session_checkpoints(tmp_path_factory, data_dir) -> dict[str, KerasCheckpoints]:
    """The checkpoints for a pytest session: one folder under its base temp, built once even
    when several test folders ask (each asks through its own session fixture)."""
    out = tmp_path_factory.getbasetemp() / "keras-checkpoints"
    out.mkdir(exist_ok=True)
    return make_checkpoints(out, str(data_dir))


AGREEMENT = re.compile(r"predictions agreeing: (\d+)/(\d+)(?: \(and (\d+) ties within atol \S+\))?")


def all_agree(out: str, samples: int) -> bool:
    """Whether a port's output says every prediction of `samples` agrees, counting as agreeing
    those that differ only by a tie within tolerance (on untrained models two classes can lie
    within 1e-7 of each other, and which one wins is then a matter of rounding)."""
    found = AGREEMENT.search(out)
    if found is None:
        return False
    agreeing, total, ties = int(found[1]), int(found[2]), int(found[3] or 0)
    return total == samples and agreeing + ties == samples


BOOK_NAMES = ("conv1", "pool1", "conv2", "pool2", "flatten", "dense1", "logits", "probabilities")


class BookSides:
    """The two sides of the port's own check on the book's CNN holding `weights` (Keras layout,
    by structural name): every compared output by the book's names (Dropout, the identity at
    inference, left out), and the probabilities over many images."""

    def __init__(self, weights, device="cpu", *, use_keras: bool = True) -> None:
        from parity import book
        from parity.build import build, keras_to_torch
        from parity.reference.keras_live import KerasReference
        from parity.reference.numpy_keras import NumpyReference

        spec = book.spec()
        self.keras = (KerasReference if use_keras else NumpyReference)(spec, weights)
        self.built = build(spec, "the book's CNN")
        self.built.module.load_state_dict(keras_to_torch(self.built, weights, "weights"),
                                          assign=True)
        self.built.module.to(device).eval()
        self.device = device

    @staticmethod
    def _named(outputs: list) -> dict:
        kept = outputs[:6] + outputs[7:]  # the probes: conv … dense, dropout, logits, output
        return dict(zip(BOOK_NAMES, kept, strict=True))

    def keras_outputs(self, images):
        return self._named(self.keras.outputs(images))

    def torch_outputs(self, images):
        from parity.verify.capture import layer_outputs

        return self._named(layer_outputs(self.built, images))

    def keras_probabilities(self, images):
        return np.concatenate([self.keras.final(images[i : i + 1000])
                               for i in range(0, len(images), 1000)])

    def torch_probabilities(self, images):
        import torch

        from parity.verify.capture import torch_input

        with torch.no_grad():
            return np.concatenate([
                self.built.module(torch_input(images[i : i + 1000]).to(self.device)).cpu().numpy()
                for i in range(0, len(images), 1000)])


# --- Keras models from registry kinds (the property test's and the registry tests' builder) ---


def keras_layer(keras, kind: str, cfg: dict):
    """A Keras layer of a registry kind: keras.layers' own by class name, an application's
    layer from Keras's package (`Entry.keras_class`)."""
    import importlib

    from parity.layers import REGISTRY

    entry = REGISTRY[kind]
    if entry.keras_class is not None:
        module, name = entry.keras_class
        return getattr(importlib.import_module(module), name).from_config(dict(cfg))
    return keras.layers.deserialize({"module": "keras.layers", "class_name": kind,
                                     "config": dict(cfg)})


def keras_call(keras, kind: str, cfg: dict, xs: list):
    """A node on Keras tensors: an operation (`x + 3.0`, `x * y`) through keras.ops, where
    `cfg` is the call's number and side (`Entry.sample` of an operation); else the layer."""
    if kind.startswith("keras.src.ops."):
        op = {"Add": keras.ops.add, "Subtract": keras.ops.subtract,
              "Multiply": keras.ops.multiply, "TrueDivide": keras.ops.true_divide}[
                  kind.rsplit(".", 1)[-1]]
        if "value" not in cfg:
            return op(xs[0], xs[1])
        c = np.float32(cfg["value"])
        return op(c, xs[0]) if cfg["first"] else op(xs[0], c)
    layer = keras_layer(keras, kind, cfg)
    return layer(xs if len(xs) > 1 else xs[0])


def generated_module(path, name: str):
    """A `--module-py` source file imported as a module named `name` (as a user would)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
