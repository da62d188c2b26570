"""8-3 on both sides: `python -m keras_ref.visualize` and `python -m torch_impl.visualize` on real
data and a briefly trained real checkpoint (Keras, and the identical weights as a PyTorch file)."""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch

from torch_impl import visualize as tv
from torch_impl.checkpoint import load_model

pytestmark = pytest.mark.slow  # a Keras fit and both 8-3 CLIs

TRAINED_STAT = re.compile(r"^trained conv1 weight mean (\S+) std (\S+)$", re.M)
KERAS_PNGS = ("conv1-hist.png", "conv1-kernels.png", "untrained-conv1-hist.png",
              "untrained-conv1-kernels.png", "input.png", "conv1-maps.png",
              "conv2-maps.png")
TORCH_PNGS = ("conv1-hist.png", "conv1-kernels.png", "input.png", "conv1-maps.png",
              "conv2-maps.png", "prediction.png", "history.png")


def _run(main, argv):
    """Call a CLI main in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, raw_data, data_dir):
    """A Keras model of the book fitted for two epochs on 512 real training images, saved as
    .keras, with its history.json; the same weights as a PyTorch .pt (parity.port)."""
    import keras

    from keras_ref.model import build_model
    from parity.port import port

    root = tmp_path_factory.mktemp("ckpts")
    (train_input, train_target), _ = raw_data
    keras.utils.set_random_seed(7)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = train_input[:512].reshape(-1, 28, 28, 1) / 255.0
    fit = model.fit(x, train_target[:512], epochs=2, batch_size=32, verbose=0,
                    validation_data=(x[:128], train_target[:128]))
    model.save(root / "model.keras")
    port(root / "model.keras", root / "model.pt", samples=64, data_dir=data_dir)
    # The port holds conv1's kernel, HWIO (3, 3, 1, 32) → OIHW (32, 1, 3, 3).
    conv1 = torch.load(root / "model.pt", weights_only=True)["conv1.weight"].numpy()
    np.testing.assert_array_equal(conv1, model.layers[0].weights[0].numpy().transpose(3, 2, 0, 1))
    (root / "history.json").write_text(json.dumps({"framework": "keras (test)",
                                                   "history": fit.history}))
    return root


@pytest.fixture(scope="module")
def keras_run(ckpts, data_dir):
    from keras_ref.visualize import main

    out = ckpts / "keras-out"
    code, stdout, stderr = _run(main, [str(ckpts / "model.keras"), "--out", str(out),
                                       "--data-dir", str(data_dir)])
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def torch_run(ckpts, data_dir):
    """The torch CLI with everything on (--history). Returns (out, stdout, numbers)."""
    out = ckpts / "torch-out"
    args = tv.build_parser().parse_args([
        str(ckpts / "model.pt"), "--out", str(out),
        "--history", str(ckpts / "history.json"), "--data-dir", str(data_dir)])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        numbers = tv.visualize(args)
    return out, buf.getvalue(), numbers


def test_feature_maps_are_the_models_own_relu_outputs(ckpts, raw_data):
    (train_input, _), _ = raw_data
    model = load_model(ckpts / "model.pt")
    image = tv.book_image(train_input, 0)
    assert image.shape == (1, 1, 28, 28) and image.dtype == torch.float32
    assert torch.equal(image[0, 0], torch.from_numpy((train_input[0] / 255.0).astype(np.float32)))
    maps = tv.feature_maps(model, image)
    assert maps["conv1"].shape == (32, 28, 28)
    assert maps["conv2"].shape == (64, 14, 14)
    with torch.no_grad():
        relu1 = model.relu1(model.conv1(image))
        relu2 = model.relu2(model.conv2(model.pool1(relu1)))
    np.testing.assert_array_equal(maps["conv1"], relu1[0].numpy(), err_msg="conv1 maps")
    np.testing.assert_array_equal(maps["conv2"], relu2[0].numpy(), err_msg="conv2 maps")
    assert maps["conv1"].min() >= 0 and maps["conv1"].max() > 0


def test_torch_prints_the_weights_statistics(torch_run, ckpts):
    _, stdout, numbers = torch_run
    weight = torch.load(ckpts / "model.pt", weights_only=True)["conv1.weight"].numpy()
    assert "conv1 weight (32, 1, 3, 3) (Keras layout (3, 3, 1, 32)), bias (32,)" in stdout
    mean, std = map(float, TRAINED_STAT.search(stdout).groups())
    # printed with 6 decimals: within half of 1e-6, plus the float32 rounding of 288-term sums
    assert mean == pytest.approx(float(weight.mean()), abs=1e-6)
    assert std == pytest.approx(float(weight.std()), abs=1e-6)
    trained, glorot, default = numbers.stats
    np.testing.assert_array_equal(trained.weight, weight)
    assert trained.keras_shape == (3, 3, 1, 32) and trained.bias.shape == (32,)
    # Untrained conv1 (fan-in 9, fan-out 288): Glorot U(±√(6/297)), PyTorch's default U(±1/3).
    # A sample of 288 draws: its std lies within 15% of the distribution's in all but ~1e-6 of
    # draws (a sampling bound, not a rounding one).
    assert glorot.std == pytest.approx(np.sqrt(6 / 297) / np.sqrt(3), rel=0.15)
    assert default.std == pytest.approx((1 / 3) / np.sqrt(3), rel=0.15)
    for s in (glorot, default):
        assert f"{s.label} conv1 weight mean {s.mean:.6f} std {s.std:.6f}" in stdout


def test_keras_prints_the_same_statistics(keras_run, torch_run):
    _, keras_out = keras_run
    _, torch_out, _ = torch_run
    k_mean, k_std = map(float, TRAINED_STAT.search(keras_out).groups())
    t_mean, t_std = map(float, TRAINED_STAT.search(torch_out).groups())
    # both printed with 6 decimals from the same weights: two half-units of the last digit
    assert (k_mean, k_std) == pytest.approx((t_mean, t_std), abs=2e-6)
    assert "trained conv1 weights (3, 3, 1, 32), bias (32,)" in keras_out
    glorot_std = float(re.search(r"untrained \(Glorot uniform\) conv1 weight mean \S+ std (\S+)",
                                 keras_out).group(1))
    assert glorot_std == pytest.approx(np.sqrt(6 / 297) / np.sqrt(3), rel=0.15)
    assert "conv1 feature maps (1, 28, 28, 32), conv2 feature maps (1, 14, 14, 64)" in keras_out


@pytest.mark.parametrize("side", ["keras", "torch"])
def test_every_png_written(side, keras_run, torch_run):
    import matplotlib.image

    out = (keras_run if side == "keras" else torch_run)[0]
    names = KERAS_PNGS if side == "keras" else TORCH_PNGS
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        path = out / name
        assert path.stat().st_size > 1000, f"{side}/{name} is empty"
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height > 100 and width > 100, f"{side}/{name} is {width}×{height}"


def test_prediction_is_a_distribution(torch_run):
    _, stdout, numbers = torch_run
    probs = numbers.probs
    # ten float32 probabilities sum to 1 within ten float32 roundings of 1
    assert probs.shape == (10,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert re.search(r"^val_scaled\[0\]: predicted .+ \(p=\S+\), true Bag$", stdout, re.M)


def test_korean_class_names_or_a_note(ckpts, data_dir, tmp_path):
    code, out, err = _run(tv.main, [str(ckpts / "model.pt"), "--out", str(tmp_path),
                                    "--lang", "ko", "--data-dir", str(data_dir)])
    assert code == 0, err
    if tv.korean_font():
        assert "true 가방" in out and "note:" not in err
    else:
        assert "true Bag" in out and "no Korean font" in err


@pytest.mark.parametrize("fmt", ["keras", "flat"])
def test_history_of_either_trainer(fmt, ckpts):
    doc = json.loads((ckpts / "history.json").read_text())
    if fmt == "flat":  # loss lists at the top level
        doc = doc["history"]
    path = ckpts / f"history-{fmt}.json"
    path.write_text(json.dumps(doc))
    history = tv.read_history(path)
    assert len(history.loss) == len(history.val_loss) == 2
    # the same floats through JSON and back: pytest.approx's default 1e-6 only absorbs repr
    assert history.val_loss == pytest.approx(json.loads((ckpts / "history.json").read_text())
                                             ["history"]["val_loss"])


def _one_line_error(code, err, *needles):
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_one_line_exit_1(ckpts, data_dir, tmp_path):
    from keras_ref import visualize as kv

    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes((ckpts / "model.pt").read_bytes()[:500])
    bad_keras = tmp_path / "bad.keras"
    bad_keras.write_bytes(b"not a zip")
    bad_hist = tmp_path / "history.json"
    bad_hist.write_text('{"history": {"loss": []}}')
    out = tmp_path / "out"
    data = ["--data-dir", str(data_dir), "--out", str(out)]
    pt, keras_file = str(ckpts / "model.pt"), str(ckpts / "model.keras")
    _one_line_error(*_run(tv.main, [str(bad_pt), *data])[::2], "bad.pt")
    _one_line_error(*_run(kv.main, [str(bad_keras), *data])[::2], "bad.keras")
    _one_line_error(*_run(tv.main, [pt, "--index", "60000", *data])[::2], "out of range")
    _one_line_error(*_run(kv.main, [keras_file, "--index", "60000", *data])[::2], "out of range")
    _one_line_error(*_run(tv.main, [pt, "--val-index", "12000", *data])[::2], "out of range")
    _one_line_error(*_run(tv.main, [pt, "--history", str(bad_hist), *data])[::2], "history.json")
    assert not out.exists(), "nothing may be written when an input is bad"


def test_korean_font_has_hangul_or_english_with_a_note(monkeypatch, capsys):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = tv.korean_font()
    if font is not None:  # the font found really draws Hangul
        face = FT2Font(font_manager.findfont(font, fallback_to_default=False))
        assert all(face.get_char_index(ord(c)) for c in "".join(tv.CLASS_NAMES_KO).replace(" ", ""))
        assert tv.class_names("ko") == (tv.CLASS_NAMES_KO, font)
    monkeypatch.setattr(tv, "KOREAN_FONTS", ("No Such Font",))
    assert tv.class_names("ko") == (tv.CLASS_NAMES, None)
    assert "no Korean font found" in capsys.readouterr().err
