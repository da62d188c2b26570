"""The evaluate and predict CLIs on real data and a real (briefly trained) checkpoint.

The checkpoint is made here: the book's CNN with Keras's init, trained for a few dozen steps with
plain PyTorch on real training images, saved as .pt and as .safetensors. Every number the CLIs
print is checked against an independent computation with the same model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fashion_cnn.fashion_mnist import CLASS_NAMES, CLASS_NAMES_KO
from parity.verify.compare import sum_rtol
from torch_impl import evaluate as evaluate_cli
from torch_impl import predict as predict_cli
from torch_impl.checkpoint import load_model, save_state_dict
from torch_impl.evaluate import evaluate
from torch_impl.model import BookCNN
from torch_impl.predict import load_image

pytestmark = pytest.mark.slow  # CLIs over the whole data set, in subprocesses too

TRAIN_STEPS = 30  # ≈63% validation accuracy: well above chance (10%), in seconds
TRAIN_SEED = 0
# Losses summed in other orders: the CLI's (float32 per-batch sums, added in float64) against a
# float64 log-softmax, batches of another size, Keras's evaluate. The terms are positive, so two
# orders of their sum agree within sum_rtol(n) of the sum itself (n ≤ 3,000 images); each term
# moves by at most 2·max|Δlogit|, and a logit is a 3,136-term float32 dot product (dense1): the
# bound of the longest sum covers both.
LOSS_RTOL = sum_rtol(3136)
# Probabilities printed by predict (float32 softmax, written as JSON floats) against softmax of
# the same logits computed here in float64: float32 rounding of values ≤ 1, a few 1e-8 each.
PROB_ATOL = 1e-6
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, book_data):
    """The same briefly trained weights as .pt and as .safetensors."""
    torch.manual_seed(TRAIN_SEED)
    model = BookCNN(init="keras")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = book_data.train_x[: TRAIN_STEPS * 32], book_data.train_y[: TRAIN_STEPS * 32]
    model.train()
    for xb, yb in zip(x.split(32), y.split(32), strict=True):
        optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("ckpt")
    pt = save_state_dict(model, folder / "cnn.pt")
    st = save_state_dict(model, folder / "cnn.safetensors")
    return pt, st


@pytest.fixture(scope="module")
def model(checkpoints):
    return load_model(checkpoints[0], "cpu")


def reference_metrics(model, x, y):
    """Accuracy and mean cross-entropy computed independently: float64 log-softmax by hand."""
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(1000)]).double()
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    loss = -log_p[torch.arange(len(y)), y].mean().item()
    correct = int((logits.argmax(dim=1) == y).sum())
    return correct, loss


def reference_proba(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


def run_ok(main, argv, capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"exit {code}: {captured.err}"
    assert captured.err == "", captured.err
    return captured.out


def run_error(main, argv, capsys) -> str:
    """A failure the user can act on: exit 1, one line on stderr, nothing on stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1, f"expected exit 1, got {code}; stderr {captured.err!r}"
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def usage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    return err


def save_png(path: Path, image: torch.Tensor, mode: str = "L", scale: int = 1) -> Path:
    """A (1, 28, 28) data set image as the 8-bit PNG it came from (x = uint8 / 255)."""
    pixels = np.rint(image[0].numpy().astype(np.float64) * 255.0).astype(np.uint8)
    png = Image.fromarray(pixels, mode="L").convert(mode)
    if scale != 1:
        png = png.resize((28 * scale, 28 * scale), Image.Resampling.NEAREST)
    png.save(path)
    return path


# --- evaluate ---------------------------------------------------------------------------------


def test_evaluate_function_matches_an_independent_computation(model, book_data):
    x, y = book_data.val_x[:1000], book_data.val_y[:1000]
    correct, loss = reference_metrics(model, x, y)
    model.train()  # evaluate() switches to eval for the pass and restores the mode
    result = evaluate(model, x, y, batch_size=128)
    assert model.training
    model.eval()
    assert result.correct == correct and result.total == 1000
    assert result.accuracy == correct / 1000
    assert result.loss == pytest.approx(loss, rel=LOSS_RTOL)
    assert 0.3 < result.accuracy < 1.0, "the briefly trained model should beat chance (0.1)"
    # The batch size changes nothing but float rounding.
    other = evaluate(model, x, y, batch_size=37)
    assert other.correct == correct and other.loss == pytest.approx(loss, rel=LOSS_RTOL)


def test_evaluate_cli_text_and_json(checkpoints, model, book_data, data_dir, capsys):
    pt, st = checkpoints
    x, y = book_data.split("test")
    correct, loss = reference_metrics(model, x[:2000], y[:2000])
    argv = [str(pt), "--split", "test", "--limit", "2000", "--device", "cpu"]
    out = run_ok(evaluate_cli.main, [*argv, "--data-dir", str(data_dir)], capsys)
    assert out.count("\n") == 1
    assert f"accuracy {correct / 2000:.4f} ({correct}/2000 correct)" in out
    assert f"loss {loss:.4f}" in out and out.startswith("test:")

    # --json, from the .safetensors file, on the validation split (the default).
    argv = [str(st), "--json", "--limit", "3000", "--data-dir", str(data_dir)]
    record = json.loads(run_ok(evaluate_cli.main, argv, capsys))
    x, y = book_data.split("val")
    correct, loss = reference_metrics(model, x[:3000], y[:3000])
    assert record["split"] == "val" and record["total"] == 3000
    assert record["correct"] == correct and record["accuracy"] == correct / 3000
    assert record["loss"] == pytest.approx(loss, rel=LOSS_RTOL)
    assert record["checkpoint"] == str(st) and record["device"] in ("cpu", "cuda:0", "mps")


# --- predict ----------------------------------------------------------------------------------


def test_predict_json_by_index(checkpoints, model, book_data, data_dir, capsys):
    pt, _ = checkpoints
    argv = [str(pt), "--index", "0", "7", "--json", "--top", "10", "--device", "cpu"]
    out = run_ok(predict_cli.main, [*argv, "--data-dir", str(data_dir)], capsys)
    preds = json.loads(out)["predictions"]
    expected = reference_proba(model, book_data.val_x[[0, 7]])
    assert [p["source"] for p in preds] == ["val[0]", "val[7]"]
    for pred, probs, index in zip(preds, expected, (0, 7), strict=True):
        np.testing.assert_allclose(pred["probabilities"], probs, atol=PROB_ATOL, rtol=0)
        assert pred["predicted"] == int(probs.argmax())
        assert pred["name"] == CLASS_NAMES[pred["predicted"]]
        assert pred["probability"] == pytest.approx(float(probs.max()), abs=PROB_ATOL)
        assert pred["label"] == int(book_data.val_y[index])
        assert [t["class"] for t in pred["top"]] == list(np.argsort(-probs, kind="stable"))
    assert preds[0]["label"] == 8  # the book's first validation image is a Bag


def test_predict_default_is_first_val_image_in_english(
    checkpoints, model, book_data, data_dir, capsys
):
    out = run_ok(predict_cli.main, [str(checkpoints[0]), "--data-dir", str(data_dir)], capsys)
    probs = reference_proba(model, book_data.val_x[:1])[0]
    best = int(probs.argmax())
    head, *rest = out.strip().splitlines()
    assert head.startswith(f"val[0]: {CLASS_NAMES[best]} ({best}), probability {probs[best]:.4f}")
    assert "label Bag (8)" in head
    assert len(rest) == 3  # --top 3 by default
    assert f"{probs[best]:.4f}  {CLASS_NAMES[best]} ({best})" in rest[0]


def test_predict_in_the_books_korean(checkpoints, model, book_data, data_dir, capsys):
    out = run_ok(
        predict_cli.main,
        [str(checkpoints[1]), "--lang", "ko", "--top", "1", "--data-dir", str(data_dir)],
        capsys,
    )
    best = int(reference_proba(model, book_data.val_x[:1])[0].argmax())
    assert f"val[0]: {CLASS_NAMES_KO[best]} ({best})" in out
    assert "label 가방 (8)" in out
    assert not any(name in out for name in CLASS_NAMES)


def test_predict_png_round_trip(checkpoints, model, book_data, data_dir, tmp_path, capsys):
    """A test image saved as PNG (grayscale, RGB, and 2× larger) is classified like the image
    taken from the data set by index."""
    image = book_data.test_x[3]
    gray = save_png(tmp_path / "gray.png", image)
    rgb = save_png(tmp_path / "rgb.png", image, mode="RGB")
    big = save_png(tmp_path / "big.png", image, scale=2)
    # The PNG decodes to the data set's exact float32 pixels.
    assert torch.equal(load_image(gray), image) and torch.equal(load_image(rgb), image)

    files = [str(path) for path in (checkpoints[0], gray, rgb, big)]
    argv = [*files, "--index", "3", "--split", "test", "--json", "--data-dir", str(data_dir)]
    out = run_ok(predict_cli.main, argv, capsys)
    preds = json.loads(out)["predictions"]
    assert [p["source"] for p in preds] == [str(gray), str(rgb), str(big), "test[3]"]
    by_file, by_rgb, by_big, by_index = preds
    assert by_file["label"] is None and by_index["label"] == int(book_data.test_y[3])
    expected = reference_proba(model, image[None])[0]
    for pred in (by_file, by_rgb, by_index):
        np.testing.assert_allclose(pred["probabilities"], expected, atol=PROB_ATOL, rtol=0)
        assert pred["predicted"] == int(expected.argmax())
    assert by_big["predicted"] == by_index["predicted"]  # resized back from 56×56 with Lanczos
    # ten float32 probabilities ≤ 1 sum to 1 within 10 float32 roundings of 1 (≈ 6e-7 each)
    assert sum(by_big["probabilities"]) == pytest.approx(1.0, abs=1e-5)


# --- errors: exit 1 with one line, or argparse's exit 2 ---------------------------------------


@pytest.mark.parametrize("main", [evaluate_cli.main, predict_cli.main], ids=["evaluate", "predict"])
def test_bad_checkpoints_are_refused_in_one_line(main, tmp_path, rng, capsys):
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert "unknown checkpoint extension '.h5'" in run_error(main, [str(h5)], capsys)
    assert "no such file" in run_error(main, [str(tmp_path / "missing.pt")], capsys)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(rng.bytes(256))
    assert "garbage.pt" in run_error(main, [str(garbage)], capsys)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\xff" * 64)
    assert "garbage.safetensors" in run_error(main, [str(bad_st)], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("main", [evaluate_cli.main, predict_cli.main], ids=["evaluate", "predict"])
def test_cuda_without_a_gpu_is_an_error_not_a_fallback(main, checkpoints, capsys):
    line = run_error(main, [str(checkpoints[0]), "--device", "cuda"], capsys)
    assert "no CUDA GPU" in line
    assert "--device" in usage_error(main, [str(checkpoints[0]), "--device", "tpu"], capsys)


def test_predict_bad_images_and_indices(checkpoints, data_dir, tmp_path, rng, capsys):
    pt = str(checkpoints[0])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(rng.bytes(300))
    assert "garbage.png: not a readable image" in run_error(
        predict_cli.main, [pt, str(garbage)], capsys
    )
    # A real PNG cut in half: the header reads, the pixels do not.
    whole = save_png(tmp_path / "whole.png", torch.from_numpy(rng.random((1, 28, 28))))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert "cut.png: not a readable image" in run_error(predict_cli.main, [pt, str(cut)], capsys)
    # 16-bit pixels: refused, not clipped to white by an 8-bit conversion.
    deep = tmp_path / "deep.png"
    Image.fromarray((rng.random((28, 28)) * 65535).astype(np.uint16)).save(deep)
    assert "not supported" in run_error(predict_cli.main, [pt, str(deep)], capsys)
    assert "no such image file" in run_error(
        predict_cli.main, [pt, str(tmp_path / "no.png")], capsys
    )
    line = run_error(
        predict_cli.main, [pt, "--index", "12000", "--data-dir", str(data_dir)], capsys
    )
    assert line == "error: --index 12000 is out of range for val (0 to 11999)"
    line = run_error(
        predict_cli.main,
        [pt, "--index", "10000", "--split", "test", "--data-dir", str(data_dir)],
        capsys,
    )
    assert "out of range for test (0 to 9999)" in line


def test_usage_errors_exit_2(checkpoints, capsys):
    pt = str(checkpoints[0])
    assert "--split" in usage_error(evaluate_cli.main, [pt, "--split", "train"], capsys)
    assert "--batch-size" in usage_error(evaluate_cli.main, [pt, "--batch-size", "0"], capsys)
    assert "CKPT" in usage_error(evaluate_cli.main, [], capsys)
    assert "--lang" in usage_error(predict_cli.main, [pt, "--lang", "fr"], capsys)
    assert "--top" in usage_error(predict_cli.main, [pt, "--top", "0"], capsys)
    assert "--index" in usage_error(predict_cli.main, [pt, "--index", "abc"], capsys)
    assert "--index" in usage_error(predict_cli.main, [pt, "--index", "-1"], capsys)


@pytest.mark.parametrize("module", ["torch_impl.evaluate", "torch_impl.predict"])
def test_module_entry_point_exits_1_without_traceback(module, tmp_path):
    """`python -m …` as the user types it: the exit status and stderr of a refused file."""
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK")
    proc = subprocess.run(
        [sys.executable, "-m", module, str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: unknown checkpoint extension '.keras'; expected .pt, .pth or .safetensors"
    ]
    assert proc.stdout == ""


def test_help_says_images_are_light_on_dark(capsys):
    with pytest.raises(SystemExit) as exc:
        predict_cli.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "light garment on a dark background" in text and "never inverted" in text


def test_evaluate_equals_kerass_model_evaluate(model, book_data):
    """The same weights in the book's Keras model (through the mapping table): Keras's
    `model.evaluate` reports the same loss and accuracy as `evaluate`."""
    pytest.importorskip("keras")
    from keras_ref.model import build_model
    from parity.book import KERAS_NAMES, torch_to_keras

    x, y = book_data.val_x[:3000], book_data.val_y[:3000]
    named = torch_to_keras({k: v.numpy() for k, v in model.state_dict().items()})
    keras_model = build_model()
    keras_model.set_weights([named[name] for name in KERAS_NAMES])
    keras_model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    nhwc = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
    keras_loss, keras_accuracy = keras_model.evaluate(nhwc, y.numpy(), batch_size=256, verbose=0)

    result = evaluate(model, x, y)
    assert result.loss == pytest.approx(keras_loss, rel=LOSS_RTOL)
    # Keras keeps accuracy as a float32 mean: k/3000 rounded to float32 is within 3e-8 of it
    assert result.accuracy == pytest.approx(keras_accuracy, abs=1e-6)
