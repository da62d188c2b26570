"""Bad checkpoints are refused cleanly: exit 1, one line on stderr naming the file and the defect,
no traceback, nothing from the file run, the destination not created.

Every bad file is a real checkpoint (saved by Keras or PyTorch) with one defect put in.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fashion_cnn.errors import UserError
from parity.book import keras_to_torch
from parity.pipeline import load_into
from parity.port import main as port_main
from torch_impl.checkpoint import load_state_dict, save_state_dict
from torch_impl.model import BookCNN


@pytest.fixture
def real_pt(keras_ckpts, tmp_path) -> Path:
    """A real PyTorch checkpoint (the random Keras model's weights, mapped)."""
    path = tmp_path / "real.pt"
    state = keras_to_torch(keras_ckpts["random"].weights)
    save_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


def refused(capsys, src: Path, dst: Path, *fragments: str, extra: tuple = ()) -> str:
    """Port src → dst; assert the clean refusal; return the error line."""
    code = port_main([str(src), str(dst), "--samples", "50", *extra])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1, f"{src.name} was not refused"
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(src) in lines[0] or str(dst) in lines[0], f"the file is not named: {lines[0]}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not dst.exists(), "the destination was created"
    assert not list(dst.parent.glob(f".{dst.name}.*")), "a temporary file was left behind"
    return lines[0]


def rewrite_keras(src: Path, dst: Path, *, config=None, weights=None, drop: str | None = None):
    """Copy a real .keras, changing its config (a function of the dict), its weights file (a
    function of the open h5py.File) or dropping one member."""
    with zipfile.ZipFile(src) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    if config is not None:
        cfg = json.loads(members["config.json"])
        config(cfg)
        members["config.json"] = json.dumps(cfg).encode()
    if weights is not None:
        buffer = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buffer, "r+") as h5:
            weights(h5)
        members["model.weights.h5"] = buffer.getvalue()
    if drop:
        del members[drop]
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _layer(cfg: dict, index: int) -> dict:
    """The index-th layer after the InputLayer."""
    return [x for x in cfg["config"]["layers"] if x["class_name"] != "InputLayer"][index]


# --- .keras archives


def test_truncated_keras(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "truncated.keras"
    data = keras_ckpts["random"].files[".keras"].read_bytes()
    src.write_bytes(data[: len(data) // 2])
    refused(capsys, src, tmp_path / "out.pt", "not a valid .keras file")


def test_non_zip_keras(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "not-a-zip.keras"
    shutil.copy(keras_ckpts["random"].files[".h5"], src)
    refused(capsys, src, tmp_path / "out.pt", "not a readable zip")


@pytest.mark.parametrize("member", ["model.weights.h5", "config.json", "metadata.json"])
def test_missing_zip_member(keras_ckpts, tmp_path, capsys, member):
    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "m.keras", drop=member)
    refused(capsys, src, tmp_path / "out.pt", f"the .keras archive has no {member}")


def _implies(tensor: str, stored: tuple, implied: tuple) -> str:
    return f"{tensor} has shape {stored}, but the model's config implies {implied}"


@pytest.mark.parametrize(
    ("index", "key", "value", "message"),
    [
        (5, "units", 128, _implies("layers/dense/vars/0 (dense/kernel)", (3136, 100), (3136, 128))),
        (0, "kernel_size", [5, 5],
         _implies("layers/conv2d/vars/0 (conv2d/kernel)", (3, 3, 1, 32), (5, 5, 1, 32))),
        (2, "padding", "valid",
         _implies("layers/dense/vars/0 (dense/kernel)", (3136, 100), (2304, 100))),
        (2, "strides", [2, 2],
         _implies("layers/dense/vars/0 (dense/kernel)", (3136, 100), (576, 100))),
        (1, "pool_size", [3, 3],
         _implies("layers/dense/vars/0 (dense/kernel)", (3136, 100), (2304, 100))),
    ],
)
def test_config_contradicting_its_weights(keras_ckpts, tmp_path, capsys, index, key, value,
                                          message):
    """The book's weights under an edited config whose shapes no longer fit: refused, naming the
    tensor, its stored shape and the shape the config implies (every port reads the config)."""

    def edit(cfg):
        _layer(cfg, index)["config"][key] = value

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "arch.keras", config=edit)
    refused(capsys, src, tmp_path / "out.pt", message)


@pytest.mark.parametrize(
    ("index", "key", "value", "module"),
    [(7, "activation", "sigmoid", "Sigmoid()"), (6, "rate", 0.5, "Dropout(p=0.5")],
)
def test_config_edit_keeping_every_shape_is_another_model(
    keras_ckpts, tmp_path, capsys, index, key, value, module
):
    """An edit that keeps every weight's shape (an activation, a dropout rate) is another valid
    model: it ports as that model, checked against Keras, with its architecture stored (it is no
    longer the book's CNN, so not a plain BookCNN state_dict)."""
    from parity import load_torch_model
    from parity.formats.torch_files import carries_architecture

    def edit(cfg):
        _layer(cfg, index)["config"][key] = value

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "arch.keras", config=edit)
    dst = tmp_path / "out.pt"
    assert port_main([str(src), str(dst), "--samples", "50"]) == 0
    assert "every layer within tolerance" in capsys.readouterr().out
    assert carries_architecture(dst)
    assert module in repr(load_torch_model(dst))


def test_config_with_another_input_shape(keras_ckpts, tmp_path, capsys):
    def edit(cfg):
        cfg["config"]["layers"][0]["config"]["batch_shape"] = [None, 32, 32, 3]

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "in.keras", config=edit)
    refused(capsys, src, tmp_path / "out.pt",
            _implies("layers/conv2d/vars/0 (conv2d/kernel)", (3, 3, 1, 32), (3, 3, 3, 32)))


def test_config_with_a_missing_layer(keras_ckpts, tmp_path, capsys):
    def edit(cfg):
        cfg["config"]["layers"].pop(4)  # the second MaxPooling2D (0 is the InputLayer)

    src = rewrite_keras(
        keras_ckpts["random"].files[".keras"], tmp_path / "short.keras", config=edit
    )
    refused(capsys, src, tmp_path / "out.pt",
            _implies("layers/dense/vars/0 (dense/kernel)", (3136, 100), (12544, 100)))


def test_weights_contradicting_their_own_config(keras_ckpts, tmp_path, capsys):
    def edit(h5):
        kernel = h5["layers/dense/vars/0"][()]
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = kernel[:, :50]

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "w.keras", weights=edit)
    refused(
        capsys,
        src,
        tmp_path / "out.pt",
        "layers/dense/vars/0 (dense/kernel) has shape "
        "(3136, 50), but the model's config implies (3136, 100)",
    )


def test_missing_tensor(keras_ckpts, tmp_path, capsys):
    def edit(h5):
        del h5["layers/dense_1/vars/1"]

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "w.keras", weights=edit)
    refused(capsys, src, tmp_path / "out.pt", "missing tensor layers/dense_1/vars/1 (dense_1/bias)")


def test_extra_tensor(keras_ckpts, tmp_path, capsys):
    def edit(h5):
        h5["layers/dense/vars/2"] = np.zeros(100, np.float32)

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "w.keras", weights=edit)
    refused(capsys, src, tmp_path / "out.pt", "unexpected tensor layers/dense/vars/2")


def test_wrong_dtype(keras_ckpts, tmp_path, capsys):
    def edit(h5):
        bias = h5["layers/conv2d/vars/1"][()]
        del h5["layers/conv2d/vars/1"]
        h5["layers/conv2d/vars/1"] = bias.astype(np.float64)

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "w.keras", weights=edit)
    refused(capsys, src, tmp_path / "out.pt", "(conv2d/bias) has dtype float64, expected float32")


def _nan_edit(h5):
    h5["layers/conv2d_1/vars/0"][0, 0, 0, 0] = np.nan


def test_nan_refused_unless_allowed(keras_ckpts, tmp_path, capsys):
    src = rewrite_keras(
        keras_ckpts["random"].files[".keras"], tmp_path / "nan.keras", weights=_nan_edit
    )
    dst = tmp_path / "out.pt"
    refused(capsys, src, dst, "layers/conv2d_1/vars/0 (conv2d_1/kernel) holds 1 NaN/Inf value")

    assert port_main([str(src), str(dst), "--samples", "50", "--allow-nonfinite"]) == 0
    assert "with NaN/Inf outputs (--allow-nonfinite)" in capsys.readouterr().out
    state = load_state_dict(dst, allow_nonfinite=True)
    assert (
        torch.isnan(state["conv2.weight"][0, 0, 0, 0])
        and int(state["conv2.weight"].isnan().sum()) == 1
    )
    with pytest.raises(UserError, match="conv2.weight holds 1 NaN/Inf values"):
        load_state_dict(dst)


def test_nan_in_a_torch_checkpoint(real_pt, tmp_path, capsys):
    state = load_state_dict(real_pt)
    state["dense2.bias"][3] = float("inf")
    src = tmp_path / "inf.safetensors"
    save_state_dict(state, src)
    refused(capsys, src, tmp_path / "out.keras", "dense2.bias holds 1 NaN/Inf values")


# --- layers that are not the book's: refused, never run


def test_lambda_layer_is_refused_and_never_run(tmp_path, capsys, keras_ckpts):
    """A real .keras with a Lambda whose code creates a file: refused, and the file never
    appears (Keras's deserialization, which can rebuild the bytecode, is never called)."""
    import keras

    marker = tmp_path / "lambda-ran"

    def touch(x, path=str(marker)):
        open(path, "w").close()  # the payload: would create a file if the layer ever ran
        return x

    from keras_ref.model import build_model

    book_layers = build_model().layers
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(touch), *book_layers])
    src = tmp_path / "lambda.keras"
    model.save(src)
    marker.unlink()  # building the model ran it once, symbolically; now start clean
    refused(
        capsys,
        src,
        tmp_path / "out.pt",
        "layer 0 (lambda",
        "is a Lambda",
        "refused without running it",
    )
    assert not marker.exists(), "the Lambda's code ran"


def test_unknown_layer_class_is_refused(keras_ckpts, tmp_path, capsys):
    def edit(cfg):
        layer = _layer(cfg, 6)
        layer.update(module="evil.layers", class_name="Dropout", registered_name="Custom>Dropout")

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "u.keras", config=edit)
    refused(
        capsys,
        src,
        tmp_path / "out.pt",
        f"layer 6 ({keras_ckpts['random'].layer_names[6]}) is a evil.layers.Dropout",
        "refused without running it",
    )

    def edit2(cfg):
        _layer(cfg, 4)["class_name"] = "MyFlatten"

    src = rewrite_keras(keras_ckpts["random"].files[".keras"], tmp_path / "v.keras", config=edit2)
    refused(
        capsys, src, tmp_path / "out.pt", f"({keras_ckpts['random'].layer_names[4]}) is a MyFlatten"
    )


# --- legacy .h5


def test_truncated_h5(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "truncated.h5"
    data = keras_ckpts["trained"].files[".h5"].read_bytes()
    src.write_bytes(data[: len(data) // 3])
    refused(capsys, src, tmp_path / "out.pt", "not a readable HDF5 file")


def test_legacy_h5_config_not_this_architecture(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "arch.h5"
    shutil.copy(keras_ckpts["trained"].files[".h5"], src)
    with h5py.File(src, "r+") as h5:
        cfg = json.loads(h5.attrs["model_config"])
        _layer(cfg, 0)["config"]["filters"] = 16
        h5.attrs["model_config"] = json.dumps(cfg).encode()
    name = keras_ckpts["trained"].layer_names[0]
    refused(capsys, src, tmp_path / "out.pt", f"model_weights/{name}/", "(conv2d/kernel) has shape "
            "(3, 3, 1, 32), but the model's config implies (3, 3, 1, 16)")


def test_legacy_h5_missing_tensor(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "missing.h5"
    shutil.copy(keras_ckpts["trained"].files[".h5"], src)
    name = keras_ckpts["trained"].layer_names[5]  # the first Dense
    with h5py.File(src, "r+") as h5:
        group = h5["model_weights"][name]
        names = [
            w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]
        ]
        del group[next(w for w in names if w.endswith("bias"))]
    refused(capsys, src, tmp_path / "out.pt", "missing tensor", name)


def test_weights_h5_with_a_wrong_shape(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "w.weights.h5"
    shutil.copy(keras_ckpts["random"].files[".weights.h5"], src)
    with h5py.File(src, "r+") as h5:
        kernel = h5["layers/conv2d_1/vars/0"][()]
        del h5["layers/conv2d_1/vars/0"]
        h5["layers/conv2d_1/vars/0"] = kernel[:, :, :, :32]
    refused(
        capsys,
        src,
        tmp_path / "out.pt",
        "layers/conv2d_1/vars/0 (conv2d_1/kernel) has shape (3, 3, 32, 32)",
    )


# --- PyTorch files


class Payload:
    """Unpickling this calls open(path, 'w'): a file appears if the pickle is ever run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pt_with_pickle_payload_is_refused_and_not_run(real_pt, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    state = torch.load(real_pt, weights_only=True)
    state["conv1.extra"] = Payload(str(marker))
    src = tmp_path / "payload.pt"
    torch.save(state, src)
    assert not marker.exists()
    refused(capsys, src, tmp_path / "out.keras", "refused: the pickle holds more than tensors")
    assert not marker.exists(), "the pickle's payload ran"


def test_pt_with_an_extra_tensor(real_pt, tmp_path, capsys):
    state = torch.load(real_pt, weights_only=True)
    state["dense3.weight"] = torch.zeros(3)
    src = tmp_path / "extra.pth"
    torch.save(state, src)
    refused(capsys, src, tmp_path / "out.keras", "unexpected dense3.weight")


def test_truncated_pt(real_pt, tmp_path, capsys):
    src = tmp_path / "truncated.pt"
    src.write_bytes(real_pt.read_bytes()[:5000])
    refused(capsys, src, tmp_path / "out.h5", "not a readable PyTorch checkpoint")


def _safetensors_file(real_pt: Path, tmp_path: Path) -> bytes:
    path = tmp_path / "real.safetensors"
    save_state_dict(load_state_dict(real_pt), path)
    return path.read_bytes()


def test_oversized_safetensors_header(real_pt, tmp_path, capsys):
    data = _safetensors_file(real_pt, tmp_path)
    src = tmp_path / "oversized.safetensors"
    src.write_bytes((1 << 40).to_bytes(8, "little") + data[8:])
    refused(capsys, src, tmp_path / "out.keras", "not a valid .safetensors file")


def test_malformed_safetensors_header(real_pt, tmp_path, capsys):
    data = _safetensors_file(real_pt, tmp_path)
    size = int.from_bytes(data[:8], "little")
    src = tmp_path / "malformed.safetensors"
    src.write_bytes(data[:8] + b"{" * size + data[8 + size :])
    refused(capsys, src, tmp_path / "out.keras", "not a valid .safetensors file")


# --- a failed load leaves an in-memory model untouched


def test_failed_load_leaves_the_model_untouched(keras_ckpts, tmp_path):
    src = rewrite_keras(
        keras_ckpts["random"].files[".keras"], tmp_path / "nan.keras", weights=_nan_edit
    )
    torch.manual_seed(0)
    model = BookCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="NaN/Inf"):
        load_into(model, src)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    load_into(model, keras_ckpts["random"].files[".keras"])  # and a good file does load
    assert not torch.equal(before["conv1.weight"], model.state_dict()["conv1.weight"])


# --- parity.check refuses the same files the same way


def test_check_cli_refuses_bad_files(keras_ckpts, real_pt, tmp_path, capsys):
    from parity.check import main as check_main

    truncated = tmp_path / "truncated.keras"
    data = keras_ckpts["random"].files[".keras"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    odd = tmp_path / "model.ckpt"
    odd.write_bytes(real_pt.read_bytes())
    report = tmp_path / "report.json"
    for argv, message in (
        ([str(truncated), str(real_pt)], f"{truncated}: not a valid .keras file"),
        ([str(keras_ckpts["random"].files[".keras"]), str(odd)], f"{odd}: unknown checkpoint"),
        ([str(real_pt), str(real_pt)], f"{real_pt}: not a Keras checkpoint"),
    ):
        assert check_main([*argv, "--json", str(report)]) == 1
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), err
        assert "Traceback" not in err
        assert not report.exists()


def test_malformed_h5_tree(keras_ckpts, tmp_path, capsys):
    """A dataset where Keras writes a group, and a group where a weight should be."""
    src = tmp_path / "tree.weights.h5"
    shutil.copy(keras_ckpts["random"].files[".weights.h5"], src)
    with h5py.File(src, "r+") as h5:
        del h5["layers/dense"]
        h5["layers/dense"] = np.zeros(3, np.float32)
    line = refused(capsys, src, tmp_path / "out.pt")
    assert "layers/dense/vars/0" in line or "malformed Keras file" in line

    src = tmp_path / "tree2.weights.h5"
    shutil.copy(keras_ckpts["random"].files[".weights.h5"], src)
    with h5py.File(src, "r+") as h5:
        del h5["layers/conv2d/vars/1"]
        h5.create_group("layers/conv2d/vars/1")
    refused(capsys, src, tmp_path / "out.pt", "layers/conv2d/vars/1 is not a dataset")


def test_random_bytes_as_pt(tmp_path, capsys, rng):
    """Bytes that are no pickle at all (the weights-only unpickler's stack runs out)."""
    for i in range(20):
        src = tmp_path / f"garbage{i}.pt"
        src.write_bytes(b"\x80\x02" + rng.bytes(int(rng.integers(1, 300))))
        refused(capsys, src, tmp_path / "out.keras")
