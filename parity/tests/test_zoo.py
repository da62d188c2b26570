"""The zoo: real Keras models beyond the book's, each briefly trained on the real Fashion-MNIST (so
BatchNormalization's statistics are not trivial), saved by Keras itself as `.keras` and `.h5`,
and ported by the one port path (`parity.load_torch_model`, `parity.save_keras`).

For each model and format: PyTorch predicts within atol = rtol = 1e-5 of Keras on real test
images; every layer's output matches; Keras → PyTorch → Keras is bit-identical; the `.keras`
written back predicts as the original. And the other way: `nn.Sequential` models with
BatchNorm and strided convolutions, written by `save_keras`, predict in Keras as in PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from parity.verify.compare import ATOL, RTOL, compare

SEED = 42
TRAIN_IMAGES = 512  # one epoch of 8 batches of 64: enough to move every weight and BN statistic
EVAL_IMAGES = 500
FORMATS = (".keras", ".h5")
pytestmark = pytest.mark.slow  # seven short Keras training runs


def _zoo(keras) -> dict:
    """name → a function building the Keras model (called under one seed)."""
    L = keras.layers

    def seq(shape, layers):
        return lambda: keras.Sequential([keras.Input(shape), *layers()])

    def mlp_dropout_hw():  # chapter 7, with no channel axis, as a (single-chain) Functional
        inputs = keras.Input((28, 28))
        x = L.Flatten()(inputs)
        x = L.Dense(100, activation="relu")(x)
        x = L.Dropout(0.3)(x)
        return keras.Model(inputs, L.Dense(10, activation="softmax")(x))

    from keras_ref.model import build_model

    return {
        "book": build_model,
        "mlp": seq(
            (28, 28, 1),
            lambda: [
                L.Flatten(),
                L.Dense(100, activation="relu"),
                L.Dense(10, activation="softmax"),
            ],
        ),
        "mlp_dropout_hw": mlp_dropout_hw,
        "cnn_bn_strided": seq(
            (28, 28, 1),
            lambda: [
                L.Conv2D(8, 3, padding="same", use_bias=False),
                L.BatchNormalization(),
                L.ReLU(),
                L.Conv2D(16, 3, strides=2, padding="same", activation="relu"),  # 28 → 14, pads 0/1
                L.Conv2D(16, 4, padding="same"),  # even kernel: pads 1 top/left, 2 bottom/right
                L.Conv2D(16, 4, strides=2, padding="same"),  # 14 → 7
                L.BatchNormalization(center=False),
                L.Activation("elu"),
                L.Flatten(),
                L.Dense(32, use_bias=False),
                L.BatchNormalization(),
                L.Activation("gelu"),
                L.Dropout(0.2),
                L.Dense(10, activation="softmax"),
            ],
        ),
        "cnn_pool_dilated": seq(
            (28, 28, 1),
            lambda: [
                L.Conv2D(8, (1, 5), activation="tanh"),  # valid: (28, 24, 8)
                L.Conv2D(8, (5, 1), padding="same", activation="swish"),
                L.AveragePooling2D(3, strides=2, padding="same"),  # (14, 12, 8), pads 0/1
                L.Conv2D(16, 3, dilation_rate=2, activation="relu"),  # (10, 8, 16)
                L.MaxPooling2D(3, strides=2, padding="same"),  # (5, 4, 16), pads 0/1 with -inf
                L.GlobalAveragePooling2D(),
                L.Dense(10, activation="softmax"),
            ],
        ),
        "cnn_misc": seq(
            (28, 28, 1),
            lambda: [
                L.Rescaling(2.0, offset=-1.0),
                L.ZeroPadding2D(((1, 2), (0, 1))),  # (31, 29, 1)
                L.Conv2D(8, 3, strides=2, activation="selu"),  # (15, 14, 8)
                L.AveragePooling2D(3, strides=1, padding="same"),  # symmetric: padding left out
                L.AveragePooling2D(2),  # (7, 7, 8)
                L.MaxPooling2D(2, strides=1, padding="same"),
                L.Flatten(),
                L.BatchNormalization(),  # on the flat H,W,C vector: permuted to C,H,W
                L.Dense(10),
                L.Softmax(),
            ],
        ),
        "reshape_gmp": seq(
            (784,),
            lambda: [
                L.Reshape((28, 28, 1)),
                L.Conv2D(8, 3, activation="relu6"),
                L.GlobalMaxPooling2D(),
                L.Dense(10, activation="softmax"),
            ],
        ),
    }


def keras_images(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The (N, 28, 28, 1) test images reshaped to what the model takes."""
    return np.ascontiguousarray(images.reshape(len(images), *shape))


def torch_images(images: np.ndarray) -> torch.Tensor:
    """Keras-layout inputs → PyTorch's: NHWC → NCHW for images, others unchanged."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy() if images.ndim == 4 else images)


@dataclass
class ZooModel:
    name: str
    files: dict[str, Path]
    input_shape: tuple[int, ...]
    images: np.ndarray  # Keras layout
    probabilities: np.ndarray  # Keras's own predict
    layer_outputs: list[np.ndarray]  # every layer's output, the InputLayer left out
    weights: list[np.ndarray]  # model.get_weights()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, data_dir, eval_images) -> dict[str, ZooModel]:
    import keras

    from fashion_cnn.fashion_mnist import load_data

    (train_input, train_target), _ = load_data(str(data_dir))
    train = (train_input[:TRAIN_IMAGES] / 255.0).astype(np.float32)
    out = tmp_path_factory.mktemp("zoo")
    models = {}
    for name, make in _zoo(keras).items():
        keras.utils.set_random_seed(SEED)
        model = make()
        shape = tuple(model.input_shape[1:])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(
            keras_images(train, shape), train_target[:TRAIN_IMAGES], epochs=1, batch_size=64,
            verbose=0,
        )
        files = {}
        for suffix in FORMATS:
            files[suffix] = out / f"{name}{suffix}"
            model.save(files[suffix])
        images = keras_images(eval_images[0][:EVAL_IMAGES], shape)
        body = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
        cut = keras.Model(model.inputs, [layer.output for layer in body])
        outputs = [np.asarray(o) for o in cut.predict(images, verbose=0)]
        models[name] = ZooModel(
            name, files, shape, images, np.asarray(model.predict(images, verbose=0)), outputs,
            model.get_weights(),
        )
    return models


ZOO = ("book", "mlp", "mlp_dropout_hw", "cnn_bn_strided", "cnn_pool_dilated", "cnn_misc",
       "reshape_gmp")


def test_zoo_names_are_the_fixtures():
    import keras

    assert tuple(_zoo(keras)) == ZOO


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", ZOO)
def test_predicts_as_keras_layer_by_layer(zoo, name, suffix):
    from parity.pipeline import read_source
    from parity.verify.capture import layer_outputs
    from parity.verify.probes import probes

    z = zoo[name]
    src = read_source(z.files[suffix])
    module = src.built.module
    assert not module.training
    with torch.no_grad():
        probabilities = module(torch_images(z.images)).numpy()
    diff = compare("probabilities", z.probabilities, probabilities, atol=ATOL, rtol=RTOL)
    assert diff.passed, f"{name}{suffix}: probabilities differ by {diff.max_abs:.3e}"
    # every Keras layer's output (Keras's own model), against the check's capture of the module
    outs = [o for p, o in zip(probes(src.spec), layer_outputs(src.built, z.images), strict=True)
            if not p.pre]
    assert len(outs) == len(z.layer_outputs)
    failures = []
    for info, keras_out, out in zip(src.built.layers, z.layer_outputs, outs, strict=True):
        d = compare(info.name, keras_out, out)
        if not d.passed:
            failures.append(f"{d.name} ({info.class_name}) max |diff| {d.max_abs:.3e}")
    assert not failures, f"{name}{suffix}: " + "; ".join(failures)
    print(f"{name}{suffix}: max |diff| of probabilities {diff.max_abs:.3e}")


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", ZOO)
def test_round_trip_is_bit_identical(zoo, name, suffix, tmp_path):
    import parity
    from parity.build import build, keras_to_torch, torch_to_keras
    from parity.formats import read_keras as read_keras_model

    z = zoo[name]
    read = read_keras_model(z.files[suffix])
    assert len(read.weights) == len(z.weights)
    for (key, array), original in zip(read.weights.items(), z.weights, strict=True):
        assert np.array_equal(array, original), f"{name}{suffix}: {key} read differently"
    built = build(read.spec, "x")
    back = torch_to_keras(built, keras_to_torch(built, read.weights, "x"), "x")
    for key, array in read.weights.items():
        assert back[key].tobytes() == array.tobytes(), f"{key} changed in Keras → torch → Keras"
    module = parity.load_torch_model(z.files[suffix])
    for torch_suffix in (".pt", ".safetensors"):  # through a PyTorch file and back, bit for bit
        from parity.formats.torch_files import save_torch_model

        pt = tmp_path / f"model{torch_suffix}"
        save_torch_model(module, pt)
        reread = parity.load_torch_model(pt).state_dict()
        assert list(reread) == list(module.state_dict())
        for key, tensor in module.state_dict().items():
            assert reread[key].dtype == tensor.dtype, f"{name}{torch_suffix}: {key} dtype"
            assert reread[key].numpy().tobytes() == tensor.numpy().tobytes(), f"{key} changed"
    for out_suffix in FORMATS:
        dst = tmp_path / f"back{out_suffix}"
        parity.save_keras(module, dst, z.input_shape)
        again = read_keras_model(dst).weights
        assert [a.tobytes() for a in again.values()] == [w.tobytes() for w in z.weights]


@pytest.mark.parametrize("name", ZOO)
def test_keras_written_back_predicts_as_the_original(zoo, name, tmp_path):
    import keras

    import parity

    z = zoo[name]
    dst = tmp_path / "back.keras"
    parity.save_keras(parity.load_torch_model(z.files[".keras"]), dst, z.input_shape)
    reloaded = keras.models.load_model(dst)
    assert np.array_equal(np.asarray(reloaded.predict(z.images, verbose=0)), z.probabilities)


def test_book_cnn_keys_are_book_cnns(zoo):
    import parity
    from torch_impl.model import BookCNN

    module = parity.load_torch_model(zoo["book"].files[".keras"])
    BookCNN().load_state_dict(module.state_dict(), strict=True)
    assert [n for n, _ in module.named_children()] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "dense1", "relu3",
        "dropout", "dense2", "softmax",
    ]


# --- the other direction: PyTorch modules → Keras --------------------------------------------


def _torch_models() -> dict[str, nn.Sequential]:
    torch.manual_seed(SEED)
    a = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),  # symmetric padding: not TF's 'same' at stride 2
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(32, 10),
        nn.Softmax(dim=1),
    )
    b = nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)),
        nn.Conv2d(1, 4, (3, 5), stride=(2, 1), bias=False),
        nn.BatchNorm2d(4, affine=False),
        nn.SiLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 8, 3, padding="same"),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    g = torch.Generator().manual_seed(SEED)
    for model in (a, b):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # statistics that are not trivial
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    nn.init.normal_(m.weight, 1.0, 0.2, generator=g)
                    nn.init.normal_(m.bias, 0.0, 0.2, generator=g)
        model.eval()
    return {"strided_bn": a, "padded_bn_gap": b}


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", ["strided_bn", "padded_bn_gap"])
def test_save_keras_predicts_as_pytorch(name, suffix, tmp_path, eval_images):
    import keras

    import parity

    module = _torch_models()[name]
    dst = parity.save_keras(module, tmp_path / f"{name}{suffix}", (28, 28, 1))
    images = eval_images[0][:EVAL_IMAGES]
    with torch.no_grad():
        want = module(torch_images(images)).numpy()
    got = np.asarray(keras.models.load_model(dst).predict(images, verbose=0))
    diff = compare("outputs", got, want)
    assert diff.passed, f"{name}{suffix}: Keras differs from PyTorch by {diff.max_abs:.3e}"
