"""Each direction through files, in every format: Keras's own files → PyTorch files, PyTorch files
→ Keras files that real Keras opens; optimizer state, second-session names, TF 2.x layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from parity.book import KERAS_NAMES, keras_to_torch, torch_to_keras
from parity.formats import read_keras
from parity.port import main as port_main
from parity.tests.testdata import all_agree
from parity.verify.compare import compare
from torch_impl.checkpoint import load_model, load_state_dict, save_state_dict
from torch_impl.model import BookCNN, predict_proba

KERAS_FORMATS = (".keras", ".h5", ".weights.h5")
TORCH_FORMATS = (".pt", ".pth", ".safetensors")
SAMPLES = "100"  # test images port checks before writing (the parity itself is tested elsewhere)


def _port(src, dst, data_dir, *extra) -> None:
    code = port_main(
        [str(src), str(dst), "--samples", SAMPLES, "--data-dir", str(data_dir), *extra]
    )
    assert code == 0, f"port {src} → {dst} failed"


@pytest.mark.parametrize("src_format", KERAS_FORMATS)
@pytest.mark.parametrize("dst_format", TORCH_FORMATS)
def test_keras_file_to_torch_file(keras_ckpts, src_format, dst_format, tmp_path, data_dir, capsys):
    ckpt = keras_ckpts["trained"]
    dst = tmp_path / f"model{dst_format}"
    _port(ckpt.files[src_format], dst, data_dir)
    out = capsys.readouterr().out
    assert "(8 tensors, 333,526 parameters)" in out
    assert all_agree(out, int(SAMPLES)), out
    # What a PyTorch user does with it: a plain state_dict, loaded weights_only.
    if dst_format == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(dst)
    else:
        state = torch.load(dst, weights_only=True)
    model = BookCNN()
    model.load_state_dict(state)
    for key, value in keras_to_torch(ckpt.weights).items():
        assert np.array_equal(model.state_dict()[key].numpy(), value), f"{key} differs"


@pytest.mark.parametrize("src_format", TORCH_FORMATS)
@pytest.mark.parametrize("dst_format", KERAS_FORMATS)
def test_torch_file_to_keras_file_that_keras_loads(
    keras_ckpts, src_format, dst_format, tmp_path, data_dir, eval_images
):
    import keras

    from keras_ref.model import build_model

    state = keras_to_torch(keras_ckpts["trained"].weights)
    src = tmp_path / f"model{src_format}"
    save_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, src)
    dst = tmp_path / f"ported{dst_format}"
    _port(src, dst, data_dir)

    # Our reader gives back the exact PyTorch weights, in Keras layout.
    assert all(
        np.array_equal(read_keras(dst).weights[k], v) for k, v in torch_to_keras(state).items()
    )
    # Real Keras opens it and predicts what the PyTorch source predicts.
    if dst_format == ".weights.h5":
        model = build_model()
        model.load_weights(dst)
    else:
        model = keras.models.load_model(dst)
    images = eval_images[0][:500]
    keras_proba = np.asarray(model.predict(images, verbose=0))
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    torch_proba = predict_proba(load_model(src), nchw).numpy()
    assert compare("probabilities", keras_proba, torch_proba).passed
    assert np.array_equal(keras_proba.argmax(1), torch_proba.argmax(1))
    for name, value in zip(KERAS_NAMES, model.get_weights(), strict=True):
        assert np.array_equal(value, torch_to_keras(state)[name]), f"{name} differs in Keras"


def test_round_trip_through_files_is_bit_identical(keras_ckpts, tmp_path, data_dir):
    """Keras → PyTorch → Keras and PyTorch → Keras → PyTorch, through files."""
    ckpt = keras_ckpts["random"]
    _port(ckpt.files[".keras"], tmp_path / "a.safetensors", data_dir)
    _port(tmp_path / "a.safetensors", tmp_path / "b.keras", data_dir)
    back = read_keras(tmp_path / "b.keras").weights
    assert all(np.array_equal(back[k], ckpt.weights[k]) for k in KERAS_NAMES)

    torch.manual_seed(5)
    save_state_dict(BookCNN(), tmp_path / "c.pt")
    _port(tmp_path / "c.pt", tmp_path / "d.h5", data_dir)
    _port(tmp_path / "d.h5", tmp_path / "e.pth", data_dir)
    first, last = load_state_dict(tmp_path / "c.pt"), load_state_dict(tmp_path / "e.pth")
    assert all(torch.equal(first[k], last[k]) for k in first)


@pytest.mark.parametrize("fmt", [".keras", ".h5", ".weights.h5", "tf2.h5"])
def test_optimizer_state_is_never_taken_for_weights(keras_ckpts, fmt):
    """model.save after compile + fit keeps Adam's moments beside the weights, with exactly the
    weights' shapes; the reader returns the weights (model.get_weights()), not the moments."""
    ckpt = keras_ckpts["trained"]
    read = read_keras(ckpt.files[fmt])
    assert len(read.optimizer) == 18  # iteration, learning rate, 2 moments × 8 variables
    for name in KERAS_NAMES:
        assert np.array_equal(read.weights[name], ckpt.weights[name]), f"{fmt}: {name}"
    # The moments really are there, same shapes, different values.
    path = ckpt.files[fmt]
    with h5py.File(path, "r") if fmt != ".keras" else _keras_h5(path) as h5:
        moments = [ds[()] for name in read.optimizer if (ds := _find(h5, name)) is not None]
    shaped = [m for m in moments if m.shape == ckpt.weights["dense/kernel"].shape]
    kernel = ckpt.weights["dense/kernel"]
    assert len(shaped) == 2 and not any(np.array_equal(m, kernel) for m in shaped)


def _keras_h5(path: Path) -> h5py.File:
    import io
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r")


def _find(h5: h5py.File, name: str):
    for root in ("", "optimizer_weights/"):
        if f"{root}{name}" in h5:
            return h5[f"{root}{name}"]
    return None


def test_second_session_names_still_map(keras_ckpts):
    """The trained model was the second built in its process: its layers are conv2d_2, dense_3 …,
    while Keras 3 stores its weights at layers/conv2d, layers/dense_1 …; the readers go by
    structure and map it all the same."""
    ckpt = keras_ckpts["trained"]
    assert ckpt.layer_names[0] != "conv2d" and ckpt.layer_names[-1] != "dense_1"
    for fmt in (".keras", ".h5", "tf2.h5"):
        read = read_keras(ckpt.files[fmt])
        assert [n.node.name for n in read.spec.nodes] == ckpt.layer_names
        assert all(np.array_equal(read.weights[k], ckpt.weights[k]) for k in KERAS_NAMES)


def test_tf2_style_legacy_h5_is_read(keras_ckpts):
    """The book's `best-cnn-model.h5` as TF 2.x wrote it: model_weights/<name>/<name>/kernel:0."""
    ckpt = keras_ckpts["trained"]
    path = ckpt.files["tf2.h5"]
    with h5py.File(path, "r") as h5:
        name = ckpt.layer_names[0]
        assert f"model_weights/{name}/{name}/kernel:0" in h5
    read = read_keras(path)
    assert read.layout.startswith("legacy-h5")
    assert all(np.array_equal(read.weights[k], ckpt.weights[k]) for k in KERAS_NAMES)


def test_writing_keras_files_works_without_tensorflow(keras_ckpts, tmp_path, data_dir):
    """A process where TensorFlow and Keras cannot be imported still ports PyTorch → Keras (the
    check before writing then runs the numpy reference of the Keras layers)."""
    state = keras_to_torch(keras_ckpts["trained"].weights)
    src = tmp_path / "model.pt"
    save_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, src)
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from parity.port import main\n"
        f"rc = main([{str(src)!r}, {str(tmp_path / 'out.keras')!r}, '--samples', '100',"
        f" '--data-dir', {str(data_dir)!r}])\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ.copy(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "numpy float32 reference" in result.stdout
    back = read_keras(tmp_path / "out.keras").weights
    assert all(np.array_equal(back[k], v) for k, v in torch_to_keras(state).items())
