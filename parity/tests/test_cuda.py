"""The parity suite's CUDA variants: PyTorch on the GPU (TF32 off) against Keras on the CPU.

Skipped cleanly where PyTorch sees no CUDA GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.mapping import keras_to_torch
from parity.runners import KerasSide, torch_device, torch_model, torch_outputs, torch_probabilities
from parity.verify.compare import LAYERS, compare

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU available to PyTorch"),
]


def test_every_layer_agrees_on_cuda(ckpt, eval_images):
    device = torch_device("cuda")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    images = eval_images[0][:500]
    keras_out = KerasSide(ckpt.weights).outputs(images)  # Keras on the CPU
    torch_out = torch_outputs(torch_model(keras_to_torch(ckpt.weights), device), images)
    for name in LAYERS:
        diff = compare(name, keras_out[name], torch_out[name])
        assert diff.passed, f"cuda: {name} differs: {diff}"


def test_identical_predictions_on_cuda(ckpt, eval_images):
    images, _ = eval_images
    keras_proba = KerasSide(ckpt.weights).probabilities(images)
    model = torch_model(keras_to_torch(ckpt.weights), torch_device("cuda"))
    torch_proba = torch_probabilities(model, images)
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
