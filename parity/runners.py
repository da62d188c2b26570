"""Running the same weights in both frameworks on the same images, every output in Keras layout.

The Keras side is `keras_ref.model.build_model()` with the weights assigned — never a model that
Keras deserialized from a file, so nothing in a checkpoint is ever run. Keras (and TensorFlow) are
imported only here, lazily; where Keras cannot be imported (a GPU box with torch only), a float32
numpy implementation of the Keras layers in Keras's own layout stands in and says so.
The PyTorch side reads its feature maps with forward hooks on the module's named layers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fashion_cnn.errors import UserError
from parity.mapping import KERAS_NAMES
from parity.verify.compare import LAYERS, nchw_to_keras
from torch_impl.device import resolve_device
from torch_impl.model import BookCNN

# PyTorch submodule → compared output (Keras's Conv2D/Dense outputs include their ReLU).
TORCH_NODES = {
    "relu1": "conv1",
    "pool1": "pool1",
    "relu2": "conv2",
    "pool2": "pool2",
    "flatten": "flatten",
    "relu3": "dense1",
    "dense2": "logits",
}
BATCH = 1000  # images per forward pass: bounded memory for the 10,000-image test set


def torch_device(name: str) -> torch.device:
    """A torch device for --device (cpu or cuda[:N]); on CUDA TF32 is off, as parity needs."""
    device = resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected cpu or cuda")
    return device


def torch_model(
    state: Mapping[str, np.ndarray | torch.Tensor], device: str | torch.device = "cpu"
) -> BookCNN:
    """A BookCNN in eval mode holding `state` (numpy arrays or tensors by state_dict key)."""
    model = BookCNN()
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)).clone() for k, v in state.items()})
    return model.to(device).eval()


@torch.no_grad()
def torch_outputs(model: BookCNN, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Every compared output of the PyTorch model, in Keras layout (float32 numpy).

    Read with forward hooks on the named submodules. (torchvision's create_feature_extractor
    would do the same through torch.fx, but importing it pulls in torch._dynamo and Triton, whose
    native library segfaults when TensorFlow was loaded first in the process.)
    """
    device = next(model.parameters()).device
    feats: dict[str, torch.Tensor] = {}
    handles = [
        getattr(model, node).register_forward_hook(
            lambda _module, _inputs, output, name=name: feats.__setitem__(name, output)
        )
        for node, name in TORCH_NODES.items()
    ]
    try:
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(device)
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    out = {name: nchw_to_keras(name, t.cpu().numpy()) for name, t in feats.items()}
    out["probabilities"] = torch.softmax(feats["logits"], dim=1).cpu().numpy()
    return {name: out[name] for name in LAYERS}


@torch.no_grad()
def torch_probabilities(model: BookCNN, images_nhwc: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    parts = []
    for i in range(0, len(images_nhwc), BATCH):
        x = torch.from_numpy(np.ascontiguousarray(images_nhwc[i : i + BATCH].transpose(0, 3, 1, 2)))
        parts.append(model.predict_proba(x.to(device)).cpu().numpy())
    return np.concatenate(parts)


class KerasSide:
    """The book's Keras model holding given weights (structural names, Keras layout)."""

    def __init__(self, weights: Mapping[str, np.ndarray], *, use_keras: bool = True) -> None:
        self.weights = {k: np.asarray(weights[k], dtype=np.float32) for k in KERAS_NAMES}
        self.model = None
        if use_keras:
            try:
                from keras_ref.backend import keras  # noqa: F401  (TF or any Keras 3 backend)
            except ImportError:
                use_keras = False
        if use_keras:
            from keras_ref.backend import keras
            from keras_ref.model import build_model

            self.model = build_model()
            self.model.set_weights([self.weights[k] for k in KERAS_NAMES])
            self.description = f"keras {keras.__version__} ({keras.backend.backend()} backend, CPU)"
        else:
            self.description = "numpy float32 reference of the Keras layers (Keras not importable)"

    def outputs(self, images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
        """Every compared output: each layer's output, the logits (the last Dense without its
        softmax: a linear clone holding its weights), and the probabilities."""
        images = np.asarray(images_nhwc, dtype=np.float32)
        if self.model is None:
            return _numpy_outputs(self.weights, images)
        from keras_ref.backend import keras

        layers = self.model.layers  # conv, pool, conv, pool, flatten, dense, dropout, dense
        x = inputs = keras.Input(shape=images.shape[1:])
        feats = []
        for layer in layers:
            x = layer(x)
            feats.append(x)
        linear = keras.layers.Dense(layers[-1].units, activation=None)
        logits = linear(feats[6])
        linear.set_weights(layers[-1].get_weights())
        extractor = keras.Model(inputs, [*feats[:6], logits, feats[7]])
        out = extractor.predict(images, batch_size=BATCH, verbose=0)
        return {name: np.asarray(arr) for name, arr in zip(LAYERS, out, strict=True)}

    def probabilities(self, images_nhwc: np.ndarray) -> np.ndarray:
        images = np.asarray(images_nhwc, dtype=np.float32)
        if self.model is None:
            return np.concatenate(
                [
                    _numpy_outputs(self.weights, images[i : i + BATCH])["probabilities"]
                    for i in range(0, len(images), BATCH)
                ]
            )
        return np.asarray(self.model.predict(images, batch_size=BATCH, verbose=0))


def _conv_same_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras Conv2D(padding='same', 3×3, stride 1) + ReLU in NHWC/HWIO."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # N,H,W,C,3,3
    return np.maximum(np.tensordot(windows, kernel, axes=([4, 5, 3], [0, 1, 2])) + bias, 0)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _numpy_outputs(w: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    conv1 = _conv_same_relu(x, w["conv2d/kernel"], w["conv2d/bias"])
    pool1 = _maxpool2(conv1)
    conv2 = _conv_same_relu(pool1, w["conv2d_1/kernel"], w["conv2d_1/bias"])
    pool2 = _maxpool2(conv2)
    flat = pool2.reshape(len(x), -1)  # H,W,C order, as Keras's Flatten
    dense1 = np.maximum(flat @ w["dense/kernel"] + w["dense/bias"], 0)
    logits = dense1 @ w["dense_1/kernel"] + w["dense_1/bias"]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba = shifted / shifted.sum(axis=1, keepdims=True)
    values = (conv1, pool1, conv2, pool2, flat, dense1, logits, proba)
    return {n: v.astype(np.float32) for n, v in zip(LAYERS, values, strict=True)}


def load_test_images(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The real 10,000 test images, scaled as the book scales them (NHWC float32), and labels."""
    from fashion_cnn.fashion_mnist import load_data

    _, (test_input, test_target) = load_data(data_dir)
    images = (test_input.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    return images, test_target.astype(np.int64)
