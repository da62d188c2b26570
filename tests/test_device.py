"""torch_impl.device.resolve_device: the one place a --device value becomes a torch.device."""

from __future__ import annotations

import pytest
import torch

from fashion_cnn.errors import UserError
from torch_impl.device import resolve_device

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()


def test_auto_picks_the_best_device_present():
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "tpu", "cuda:x", "", "cpu:1", "meta"])
def test_malformed_or_unsupported_devices_are_user_errors(spec):
    with pytest.raises(UserError, match="device"):
        resolve_device(spec)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_fails_instead_of_falling_back(spec):
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        resolve_device(spec)


@pytest.mark.skipif(HAS_MPS, reason="this machine has Apple MPS")
def test_mps_without_mps_fails():
    with pytest.raises(UserError, match="MPS is not available"):
        resolve_device("mps")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_turns_tf32_off_and_checks_the_index():
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    with pytest.raises(UserError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
