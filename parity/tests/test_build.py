"""The port's parts: the book's CNN as one case of it (its rows are the book's table, from its
Keras 3 and legacy configs), each activation against Keras's own function, and bad inputs
refused in one line (nothing written)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from fashion_cnn.errors import UserError
from parity import book
from parity.book import TABLE
from parity.build import build
from parity.formats import parse
from parity.formats import read_keras as read_keras_model
from parity.formats.keras_json import legacy_config, model_config
from torch_impl.model import BookCNN


def _written_config():
    return model_config(book.spec())


@pytest.mark.parametrize("config", [book.config, _written_config,
                                    lambda: legacy_config(_written_config())])
def test_book_cnn_rows_are_the_book_table(config, rng):
    built = build(parse(config(), "book"), "book")
    assert [(r.keras, r.torch, r.keras_shape, r.torch_shape) for r in built.rows] == [
        (r.keras, r.torch, r.keras_shape, r.torch_shape) for r in TABLE
    ]
    for generic, row in zip(built.rows, TABLE, strict=True):
        assert generic.transform.name == row.transform.name
        array = rng.standard_normal(row.keras_shape).astype(np.float32)
        assert np.array_equal(generic.transform.to_torch(array), row.transform.to_torch(array))
        back = rng.standard_normal(row.torch_shape).astype(np.float32)
        assert np.array_equal(generic.transform.to_keras(back), row.transform.to_keras(back))
    state = built.module.state_dict()  # meta tensors: built modules hold no weights yet
    book = BookCNN().state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [
        (k, tuple(v.shape)) for k, v in book.items()
    ]


def test_a_chain_of_named_layers_keeps_their_names():
    """The book's numbering is for layers Keras named itself (`conv2d`, `dense_1`); a chain whose
    layers were named, as VGG16's are, keeps those names (and the book's CNN its own keys)."""
    cfg = book.config()
    layers = cfg["config"]["layers"]
    names = ["block1_conv1", "block1_pool", "block2_conv1", "block2_pool", "flatten", "fc1",
             "drop", "predictions"]
    named = [layer for layer in layers if layer["class_name"] != "InputLayer"]
    assert len(named) == len(names)
    for layer, name in zip(named, names, strict=True):
        layer["config"]["name"] = name
    keys = list(build(parse(cfg, "named"), "named").module.state_dict())
    assert keys == ["block1_conv1.weight", "block1_conv1.bias", "block2_conv1.weight",
                    "block2_conv1.bias", "fc1.weight", "fc1.bias", "predictions.weight",
                    "predictions.bias"], keys
    assert list(build(book.spec(), "book").module.state_dict()) == list(BookCNN().state_dict())

def test_a_name_that_is_not_plain_never_becomes_code():
    """A layer name with characters beyond letters, digits and `_ . / -` (quotes, a newline,
    more than 60 of them) is data only: its module is named after its kind, numbered where
    the kind is taken; plain names stay as `identifier` makes them."""
    cfg = book.config()
    named = [layer for layer in cfg["config"]["layers"] if layer["class_name"] != "InputLayer"]
    names = ['conv""" + x + """', "block1/pool", "c" * 61, "block2-pool", "flatten", "fc1\n",
             "2drop", "dense"]
    for layer, name in zip(named, names, strict=True):
        layer["config"]["name"] = name
    keys = list(build(parse(cfg, "named"), "named").module.state_dict())
    assert keys == ["conv.weight", "conv.bias", "conv_2.weight", "conv_2.bias", "dense.weight",
                    "dense.bias", "dense_2.weight", "dense_2.bias"], keys
    modules = list(build(parse(cfg, "named"), "named").module._modules)
    assert modules == ["conv", "conv_relu", "block1_pool", "conv_2", "conv_2_relu", "block2_pool",
                       "flatten", "dense", "dense_relu", "layer_2drop", "dense_2",
                       "dense_2_softmax"], modules



@pytest.mark.parametrize(
    "name",
    [
        "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "elu", "selu",
        "celu", "gelu", "silu", "swish", "softplus", "softsign", "hard_sigmoid", "hard_silu",
        "hard_swish", "hard_tanh", "tanh_shrink", "soft_shrink", "hard_shrink", "log_sigmoid",
        "mish", "exponential",
    ],
)
def test_activation_matches_keras(name, rng):
    import keras

    from parity.layers.activations import activation_modules

    x = (rng.standard_normal((64, 10)) * 4).astype(np.float32)
    want = np.asarray(keras.activations.get(name)(x))
    (kind, module), = activation_modules(name, (10,))
    got = module(torch.from_numpy(x)).numpy()
    # Elementwise functions (no sums, so no order): each library's float32 exp/tanh/erf is within
    # a few ulps (~1e-6 relative) of the exact value; atol covers outputs near zero.
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)


def test_unknown_activation_and_relu_threshold_are_refused():
    from parity.layers.activations import ReLU, activation_name

    with pytest.raises(UserError, match="activation 'sparsemax' has no exact PyTorch"):
        activation_name("sparsemax", "x")
    with pytest.raises(UserError, match="threshold=0.5"):
        ReLU.parse({"threshold": 0.5}, "x")


def _refused(make_model, tmp_path, match: str) -> None:
    """Keras writes the model; the port refuses it in one line and writes nothing."""
    import parity
    from parity.port import port

    model = make_model()
    tmp_path.mkdir()
    for suffix in (".keras", ".h5"):
        src = tmp_path / f"bad{suffix}"
        model.save(src)
        before = sorted(tmp_path.iterdir())
        with pytest.raises(UserError, match=match) as err:
            parity.load_torch_model(src)
        assert "\n" not in str(err.value)
        assert str(src) in str(err.value)
        dst = tmp_path / "out.pt"
        with pytest.raises(UserError, match=match):
            port(src, dst)
        assert sorted(tmp_path.iterdir()) == before


def test_bad_inputs_are_refused_in_one_line(tmp_path):
    import keras

    L = keras.layers

    def lstm():
        return keras.Sequential([keras.Input((28, 28)), L.LSTM(4), L.Dense(10)])

    def channels_first():
        return keras.Sequential(
            [keras.Input((1, 28, 28)), L.Conv2D(4, 3, data_format="channels_first")]
        )

    def shared_layer():
        inputs = keras.Input((784,))
        dense = L.Dense(784)
        return keras.Model(inputs, dense(dense(inputs)))

    def two_outputs():
        inputs = keras.Input((784,))
        x = L.Dense(4)(inputs)
        return keras.Model(inputs, [x, L.Dense(2)(x)])

    def rms_layer_norm():
        return keras.Sequential([keras.Input((28, 28, 1)), L.LayerNormalization(rms_scaling=True)])

    _refused(lstm, tmp_path / "lstm", r"layer 0 \(lstm\w*\) is a LSTM, which this port does not")
    _refused(channels_first, tmp_path / "cf", r"Conv2D\): data_format='channels_first'; only")
    _refused(shared_layer, tmp_path / "shared", r"is called 2 times \(a shared layer\)")
    _refused(two_outputs, tmp_path / "outputs", r"several outputs; only one is supported")
    _refused(rms_layer_norm, tmp_path / "rms", r"LayerNormalization\): rms_scaling is not")


def test_a_lambda_is_refused_unread(tmp_path):
    config = book.config()
    config["config"]["layers"][2]["class_name"] = "Lambda"
    with pytest.raises(UserError, match=r"layer 1 \(max_pooling2d\) is a Lambda, which"):
        parse(config, "x.keras")


@pytest.fixture
def book_h5(keras_ckpts):
    return keras_ckpts["random"].files[".h5"]


def _hostile_copy(src, dst, edit) -> None:
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as h5:
        edit(h5)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h5: _replace(h5, lambda g, n: g.__setitem__(n, h5py.ExternalLink("/etc/x", "/a"))),
         r"is an external link \(to '/a' in '/etc/x'\); refused"),
        (lambda h5: _replace(h5, lambda g, n: g.create_dataset(n, (3, 3, 1, 32), "f4",
                                                               external=[("/etc/x", 0, 1152)])),
         "has external raw storage"),
        (lambda h5: _replace(h5, lambda g, n: g.create_dataset(n, (10**6, 3, 1, 32), "f4")),
         r"has shape \(1000000, 3, 1, 32\), but the model's config implies \(3, 3, 1, 32\)"),
        (lambda h5: _replace_group(h5), "is an external link"),
        (lambda h5: _replace(h5, lambda g, n: g.create_dataset(n, (3, 3, 1, 32), "f4",
                                                               chunks=(1, 1, 1, 32))),
         r"declares 1152 bytes but stores 0; refused"),
        (lambda h5: _replace(h5, lambda g, n: g.create_dataset(n, (3, 3, 1, 32), "f4",
                                                               shuffle=True)),
         r"is stored with the filter\(s\) shuffle"),
    ],
)
def test_hostile_h5_is_refused_before_reading(book_h5, tmp_path, edit, match):
    dst = tmp_path / "hostile.h5"
    _hostile_copy(book_h5, dst, edit)
    with pytest.raises(UserError, match=match):
        read_keras_model(dst)


def test_a_deflated_dataset_is_inflated_with_a_cap(book_h5, tmp_path):
    """Deflate is the one filter read (by keras_files's capped inflater): the same weights."""
    dst = tmp_path / "gzip.h5"
    kernel = read_keras_model(book_h5).weights["conv2d/kernel"]
    _hostile_copy(book_h5, dst, lambda h5: _replace(
        h5, lambda g, n: g.create_dataset(n, data=kernel, compression="gzip", chunks=(3, 3, 1, 8))
    ))
    assert np.array_equal(read_keras_model(dst).weights["conv2d/kernel"], kernel)


def _replace(h5: h5py.File, make) -> None:
    """Replace the first conv kernel (model_weights/<conv>/…/kernel) by what `make` creates."""
    group = h5["model_weights"]
    conv = next(n for n in group if n.startswith("conv2d"))
    names = [n.decode() if isinstance(n, bytes) else n for n in group[conv].attrs["weight_names"]]
    parent, leaf = names[0].rsplit("/", 1)
    del group[conv][names[0]]
    make(group[conv][parent], leaf)


def _replace_group(h5: h5py.File) -> None:
    """The group holding the first conv kernel becomes an external link (never followed)."""
    group = h5["model_weights"]
    conv = next(n for n in group if n.startswith("conv2d"))
    names = [n.decode() if isinstance(n, bytes) else n for n in group[conv].attrs["weight_names"]]
    parent = names[0].rsplit("/", 1)[0].split("/")[0]
    del group[conv][parent]
    group[conv][parent] = h5py.ExternalLink("/nonexistent/outside.h5", "/")


def test_save_keras_refuses_what_it_cannot_map(tmp_path):
    import parity

    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Upsample(scale_factor=2))
    dst = tmp_path / "x.keras"
    with pytest.raises(UserError, match=r"module 2 \(Upsample\) has no exact Keras counterpart"):
        parity.save_keras(module, dst, (28, 28, 1))
    assert not dst.exists()
    with pytest.raises(UserError, match=r"cannot write a BookCNN: only an nn.Sequential"):
        parity.save_keras(BookCNN(), dst, (28, 28, 1))
    flat_out = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(UserError, match="flattens in C,H,W order and no Linear follows"):
        parity.save_keras(flat_out, dst, (28, 28, 1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a fresh interpreter
def test_parity_imports_no_framework_until_used():
    import subprocess
    import sys

    code = (
        "import sys, parity, parity.book, parity.formats, parity.spec\n"
        "assert 'torch' not in sys.modules, 'parity loaded torch'\n"
        "assert callable(parity.load_torch_model) and 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_deflated_keras_archive_is_read_too(keras_ckpts, tmp_path):
    """Keras stores model.weights.h5 uncompressed and it is read in place; an archive someone
    re-zipped with deflate is inflated instead (within the size bound), with the same result."""
    import zipfile

    src = keras_ckpts["trained"].files[".keras"]
    dst = tmp_path / "deflated.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    a, b = read_keras_model(src).weights, read_keras_model(dst).weights
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
