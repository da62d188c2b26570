"""PyTorch checkpoint files: round trips, the plain-state_dict contract, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

from fashion_cnn.errors import UserError
from torch_impl.checkpoint import load_state_dict, save_state_dict
from torch_impl.model import BookCNN


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_round_trip_is_exact_and_loads_the_plain_pytorch_way(tmp_path, suffix):
    torch.manual_seed(0)
    model = BookCNN(init="keras")
    path = save_state_dict(model, tmp_path / f"model{suffix}")
    loaded = load_state_dict(path)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    if suffix != ".safetensors":
        fresh = BookCNN()
        fresh.load_state_dict(torch.load(path, weights_only=True))  # what a PyTorch user types
        assert torch.equal(fresh.dense1.weight, model.dense1.weight)


def test_written_file_has_the_usual_mode_and_no_temporary_left(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_state_dict(BookCNN(), tmp_path / "model.pt")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_existing_destination_kept_without_force(tmp_path):
    path = save_state_dict(BookCNN(), tmp_path / "model.pt")
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"model\.pt: already exists \(use --force"):
        save_state_dict(BookCNN(), path)
    assert path.read_bytes() == before
    save_state_dict(BookCNN(), path, force=True)
    assert path.read_bytes() != before
