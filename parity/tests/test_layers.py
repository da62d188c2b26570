"""Every feature map and output of the two frameworks from identical weights, on real test images,
and the parity.check command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parity.book import keras_to_torch
from parity.check import main as check_main
from parity.tests.testdata import BOOK_NAMES as LAYERS
from parity.tests.testdata import BookSides
from parity.verify.compare import compare

SAMPLES = 500  # images for the layer-by-layer comparison (the full 10,000 for predictions)


def test_every_layer_agrees_within_tolerance(ckpt, eval_images):
    images = eval_images[0][:SAMPLES]
    sides = BookSides(ckpt.weights)
    keras_out, torch_out = sides.keras_outputs(images), sides.torch_outputs(images)
    assert tuple(keras_out) == tuple(torch_out) == LAYERS
    for name in LAYERS:
        diff = compare(name, keras_out[name], torch_out[name])
        assert diff.passed, f"{ckpt.name}: {name} differs: max |diff| {diff.max_abs:.3e}, {diff}"
    # The Keras side is the model Keras saved: our rebuilt copy predicts what it predicted.
    assert compare("saved model", ckpt.probabilities[:SAMPLES], keras_out["probabilities"]).passed

@pytest.mark.slow

def test_identical_predictions_on_the_whole_test_set(ckpt, eval_images):
    images, labels = eval_images
    sides = BookSides(ckpt.weights)
    keras_proba, torch_proba = sides.keras_probabilities(images), sides.torch_probabilities(images)
    assert len(images) == 10_000
    assert compare("probabilities", keras_proba, torch_proba).passed
    differ = np.nonzero(keras_proba.argmax(1) != torch_proba.argmax(1))[0]
    assert differ.size == 0, f"{ckpt.name}: argmax differs on test images {differ[:10]}"
    if ckpt.name == "trained":
        assert (torch_proba.argmax(1) == labels).mean() > 0.6  # one epoch on 3,000 images


def test_numpy_reference_of_keras_layers_agrees_with_keras(keras_ckpts, eval_images):
    """The stand-in used where Keras cannot be imported computes what Keras computes."""
    weights = keras_ckpts["trained"].weights
    images = eval_images[0][:100]
    with_keras = BookSides(weights).keras_outputs(images)
    without = BookSides(weights, use_keras=False).keras_outputs(images)
    for name in LAYERS:
        diff = compare(name, with_keras[name], without[name])
        assert diff.passed, f"numpy reference: {name} differs from Keras: {diff}"


def _save_torch(weights, path):
    from torch_impl.checkpoint import save_state_dict

    save_state_dict({k: torch.from_numpy(v) for k, v in keras_to_torch(weights).items()}, path)
    return path

@pytest.mark.slow

def test_check_cli_passes_on_a_faithful_pair(keras_ckpts, tmp_path, data_dir, capsys):
    ckpt = keras_ckpts["trained"]
    pt = _save_torch(ckpt.weights, tmp_path / "trained.pt")
    report_path = tmp_path / "report.json"
    code = check_main(
        [
            str(ckpt.files[".keras"]),
            str(pt),
            "--samples",
            "200",
            "--json",
            str(report_path),
            "--data-dir",
            str(data_dir),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["first_failure"] is None
    assert [layer["name"] for layer in report["layers"]] == list(LAYERS)
    # every layer within the report's own elementwise bound, atol + rtol·|keras|
    # (parity.verify.compare)
    assert all(layer["passed"] for layer in report["layers"]), report["layers"]
    assert report["test_set"]["images"] == "10000 Fashion-MNIST test images"
    assert report["test_set"]["real_disagreements"] == 0  # the rest agree, or tie within atol
    assert report["test_set"]["keras_accuracy"] == report["test_set"]["torch_accuracy"]
    assert "PASS" in out and "dense1" in out


def test_check_cli_names_the_first_differing_layer(keras_ckpts, tmp_path, data_dir, capsys):
    """Random Keras weights against trained PyTorch weights: conv1 already differs."""
    pt = _save_torch(keras_ckpts["trained"].weights, tmp_path / "trained.pt")
    code = check_main(
        [
            str(keras_ckpts["random"].files[".h5"]),
            str(pt),
            "--samples",
            "50",
            "--test-images",
            "500",
            "--data-dir",
            str(data_dir),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "FAIL: first differing layer conv1" in captured.out
    assert captured.err.strip().splitlines()[-1].endswith("first at conv1")


def test_check_cli_with_dense1_plainly_transposed_fails_at_dense1(
    keras_ckpts, tmp_path, data_dir, capsys
):
    from torch_impl.checkpoint import save_state_dict

    weights = keras_ckpts["trained"].weights
    state = keras_to_torch(weights)
    state["dense1.weight"] = np.ascontiguousarray(weights["dense/kernel"].T)
    pt = tmp_path / "transposed.safetensors"
    save_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, pt)
    code = check_main(
        [
            str(keras_ckpts["trained"].files[".weights.h5"]),
            str(pt),
            "--test-images",
            "500",
            "--samples",
            "50",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert code == 1
    assert "first differing layer dense1" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without a GPU")
def test_check_cli_cuda_without_gpu_is_a_clear_error(keras_ckpts, tmp_path, capsys):
    pt = _save_torch(keras_ckpts["random"].weights, tmp_path / "random.pt")
    code = check_main([str(keras_ckpts["random"].files[".keras"]), str(pt), "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("error: device 'cuda'"), err
    assert "no CUDA GPU is available" in err, err
