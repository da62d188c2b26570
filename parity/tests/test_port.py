"""`python -m parity.port`: a non-book Keras model to PyTorch files that carry their
architecture, back to Keras with no other input, a `.weights.h5` with `--config`, and
`--module-py`'s readable source file."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch

from parity.port import main as port_main
from parity.tests.testdata import all_agree, generated_module
from parity.verify.compare import real_disagreements

SAMPLES = "200"
pytestmark = pytest.mark.slow  # a short Keras training run


@pytest.fixture(scope="module")
def bn_model(tmp_path_factory, data_dir):
    """A small CNN with BatchNormalization and a stride-2 'same' conv, one short epoch of
    training on real images, saved by Keras as .keras and .weights.h5."""
    import keras

    from fashion_cnn.fashion_mnist import load_data

    L = keras.layers
    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        L.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
        L.BatchNormalization(),
        L.ReLU(),
        L.AveragePooling2D(2, padding="same"),
        L.Flatten(),
        L.Dense(16, activation="gelu"),
        L.Dense(10, activation="softmax"),
    ])
    (x, y), _ = load_data(str(data_dir))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit((x[:256] / 255.0).astype(np.float32)[..., None], y[:256], epochs=1, verbose=0)
    out = tmp_path_factory.mktemp("model-port")
    model.save(out / "bn.keras")
    model.save_weights(out / "bn.weights.h5")
    return out / "bn.keras", out / "bn.weights.h5", model.get_weights()



def test_keras_to_pt_with_module_py_and_back(bn_model, tmp_path, capsys, eval_images):
    import keras

    import parity
    from parity.formats import read_keras as read_keras_model

    src, _, original = bn_model
    pt, py = tmp_path / "bn.pt", tmp_path / "model.py"
    assert port_main([str(src), str(pt), "--generic", "--module-py", str(py),
                      "--samples", SAMPLES]) == 0
    out = capsys.readouterr().out
    assert "Keras layer" in out and "PyTorch module" in out and "transform" in out
    # layer names as Keras gave them in this process: conv2d, or conv2d_5 after other models
    assert re.search(r"\nconv2d(_\d+)? \(Conv2D\) +pad1, conv1 ", out), out
    assert all_agree(out, 200), out

    # the .pt is a plain state_dict that the generated source file loads strictly
    generated = generated_module(py, "generated_model").Model()
    generated.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    generated.eval()
    x = torch.from_numpy(eval_images[0][:64].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        want = parity.load_torch_model(src)(x)
        assert torch.equal(generated(x), want)
        assert torch.equal(parity.load_torch_model(pt)(x), want)
    text = py.read_text()
    assert "class Model(nn.Module):" in text and "# (N, 8, 14, 14)" in text
    assert re.search(r"\('conv2d(_\d+)?', 'Conv2D', \('pad1', 'conv1'\)\)", text), text

    # back to Keras with no other input: bit-identical weights, the same predictions
    back = tmp_path / "back.keras"
    assert port_main([str(pt), str(back), "--samples", SAMPLES]) == 0
    weights = read_keras_model(back).weights
    assert [w.tobytes() for w in weights.values()] == [w.tobytes() for w in original]
    reloaded = keras.models.load_model(back)
    np.testing.assert_array_equal(
        reloaded.predict(eval_images[0][:64], verbose=0),
        keras.models.load_model(src).predict(eval_images[0][:64], verbose=0),
    )


def test_safetensors_carries_its_architecture(bn_model, tmp_path, capsys):
    import parity

    src, _, _ = bn_model
    st = tmp_path / "bn.safetensors"
    assert port_main([str(src), str(st), "--samples", SAMPLES]) == 0
    module = parity.load_torch_model(st)
    assert [n for n, _ in module.named_children()][:4] == ["pad1", "conv1", "bn1", "relu1"]
    assert port_main([str(st), str(tmp_path / "again.h5"), "--samples", SAMPLES]) == 0


def test_weights_h5_needs_its_config(bn_model, tmp_path, capsys):
    src, weights_h5, _ = bn_model
    dst = tmp_path / "w.pt"
    assert port_main([str(weights_h5), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "holds no config and is read as the book's CNN: for another model give --config" in err
    assert not dst.exists()
    assert port_main([str(weights_h5), str(dst), "--config", str(src), "--samples", SAMPLES]) == 0
    assert dst.exists()


def test_book_pt_loads_as_the_book_module(keras_ckpts, tmp_path):
    """A plain BookCNN state_dict (no architecture) is the book's CNN, softmax included."""
    import parity
    from torch_impl.model import BookCNN

    pt = tmp_path / "book.pt"
    assert port_main([str(keras_ckpts["trained"].files[".keras"]), str(pt), "--samples", "50"]) == 0
    module = parity.load_torch_model(pt)
    BookCNN().load_state_dict(module.state_dict(), strict=True)
    book = BookCNN()
    book.load_state_dict(torch.load(pt, weights_only=True))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(module(x), book.eval().predict_proba(x))


def test_check_compares_any_model_layer_by_layer(bn_model, tmp_path, capsys, keras_ckpts):
    from parity.check import main as check_main

    src, _, _ = bn_model
    pt = tmp_path / "bn.pt"
    assert port_main([str(src), str(pt), "--samples", "50"]) == 0
    capsys.readouterr()
    assert check_main([str(src), str(pt), "--samples", "50", "--test-images", "200"]) == 0
    out = capsys.readouterr().out
    for layer in ("conv2d", "batch_normalization", "re_lu", "average_pooling2d", "dense"):
        assert re.search(rf"\n{layer}(_\d+)? ", out), out
    assert "PASS" in out
    book = keras_ckpts["random"].files[".keras"]
    assert check_main([str(book), str(pt), "--samples", "50", "--test-images", "50"]) == 1
    assert "not the architecture of" in capsys.readouterr().err


def test_a_shape_fashion_mnist_cannot_fill_uses_seeded_images_and_says_so(tmp_path, capsys):
    import keras

    L = keras.layers
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((32, 32, 3)), L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
        L.GlobalAveragePooling2D(), L.Dense(2, activation="softmax"),
    ])
    src = tmp_path / "rgb.keras"
    model.save(src)
    assert port_main([str(src), str(tmp_path / "rgb.pt"), "--samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "20 seeded uniform [0, 1) images of shape (32, 32, 3)" in out
    assert "(Fashion-MNIST does not fit it)" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available to PyTorch")
def test_check_of_a_non_book_model_on_cuda(bn_model, tmp_path, capsys):
    """The check's PyTorch side on the GPU (TF32 off), Keras on the CPU."""
    from parity.check import main as check_main

    src, _, _ = bn_model
    pt = tmp_path / "bn.pt"
    assert port_main([str(src), str(pt), "--samples", "50"]) == 0
    report = tmp_path / "report.json"
    assert check_main([str(src), str(pt), "--device", "cuda", "--samples", "100",
                       "--test-images", "1000", "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] and " on cuda" in data["torch_side"], data["torch_side"]


def test_functional_chain_with_batchnorm_ports_exactly(tmp_path, capsys, eval_images):
    """Conv2D → BatchNormalization → ReLU …, built with keras.Input and called layer by layer.
    Keras 3.15 writes a `mask` keyword into each BatchNormalization's inbound call; the port
    used to take it for a second input and refuse every such model."""
    import keras

    import parity

    L = keras.layers
    keras.utils.set_random_seed(3)
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(8, 3, strides=2, padding="same")(x)
    x = L.BatchNormalization(center=False)(x)
    x = L.Activation("relu")(x)
    x = L.Flatten()(x)
    outputs = L.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(3)
    for layer in model.layers:  # statistics that are not the initial ones
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.3, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    src, pt = tmp_path / "functional_bn.keras", tmp_path / "functional_bn.pt"
    model.save(src)
    layers = json.loads(zipfile.ZipFile(src).read("config.json"))["config"]["layers"]
    kwargs = [n["kwargs"] for layer in layers if layer["class_name"] == "BatchNormalization"
              for n in layer["inbound_nodes"]]
    assert kwargs and all("mask" in k for k in kwargs), kwargs  # the case the bug was about

    assert port_main([str(src), str(pt), "--samples", SAMPLES]) == 0, capsys.readouterr().err
    assert all_agree(capsys.readouterr().out, 200)
    images = eval_images[0][:256]
    with torch.no_grad():
        ours = parity.load_torch_model(pt)(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    theirs = model.predict(images, verbose=0)
    # float32 sums in two orders (≤ 72-term convolutions, a 392-term dense): atol = rtol = 1e-5
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-5)
    assert not len(real_disagreements(theirs, ours.numpy()))  # argmax equal, or a tie in atol
