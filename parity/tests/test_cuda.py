"""The parity suite's CUDA variants: PyTorch on the GPU (TF32 off) against Keras on the CPU.

Skipped cleanly where PyTorch sees no CUDA GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.book import keras_to_torch
from parity.check import torch_device
from parity.tests.testdata import BOOK_NAMES as LAYERS
from parity.tests.testdata import BookSides
from parity.verify.compare import compare

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available to PyTorch"),
]


def test_every_layer_agrees_on_cuda(ckpt, eval_images):
    device = torch_device("cuda")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    images = eval_images[0][:500]
    sides = BookSides(ckpt.weights, device)  # Keras on the CPU
    keras_out, torch_out = sides.keras_outputs(images), sides.torch_outputs(images)
    for name in LAYERS:
        diff = compare(name, keras_out[name], torch_out[name])
        assert diff.passed, f"cuda: {name} differs: {diff}"


def test_identical_predictions_on_cuda(ckpt, eval_images):
    images, _ = eval_images
    sides = BookSides(ckpt.weights, torch_device("cuda"))
    keras_proba, torch_proba = sides.keras_probabilities(images), sides.torch_probabilities(images)
    assert compare("probabilities", keras_proba, torch_proba).passed
    assert np.array_equal(keras_proba.argmax(1), torch_proba.argmax(1))


def test_check_cli_on_cuda(keras_ckpts, tmp_path, data_dir, capsys):
    from parity.check import main
    from torch_impl.checkpoint import save_state_dict

    ckpt = keras_ckpts["trained"]
    pt = tmp_path / "trained.pt"
    save_state_dict({k: torch.from_numpy(v) for k, v in keras_to_torch(ckpt.weights).items()}, pt)
    code = main(
        [
            str(ckpt.files[".keras"]),
            str(pt),
            "--device",
            "cuda",
            "--samples",
            "200",
            "--data-dir",
            str(data_dir),
        ]
    )
    assert code == 0, capsys.readouterr().out
