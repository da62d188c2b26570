"""One place that turns a `--device` value into a torch.device, for every CLI.

`auto` picks the best device present: CUDA, then Apple's MPS, then the CPU. A device that was
asked for by name and is not present is a UserError — never a silent fallback to the CPU.
On CUDA, TF32 is switched off so that float32 matmuls and convolutions stay float32 (TF32
rounds their inputs to 10 mantissa bits, far outside the 1e-5 parity tolerances).
"""

from __future__ import annotations

import torch

from fashion_cnn.errors import UserError

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def disable_tf32() -> None:
    """Full float32 precision on CUDA (PyTorch enables TF32 for cuDNN convolutions by default)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def resolve_device(spec: str) -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` | `mps` → a present torch.device (TF32 off on CUDA).

    Raises UserError, naming the device, when it is malformed or not present on this machine.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif _mps_available():
            spec = "mps"
        else:
            spec = "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {spec!r}; expected {DEVICE_CHOICES}") from None

    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UserError(f"unknown device {spec!r}; expected {DEVICE_CHOICES}")
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {spec!r} requested but no CUDA GPU is available "
                f"(use --device cpu or --device auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                f"device {spec!r} requested but this machine has {count} CUDA GPU(s) "
                f"(cuda:0 … cuda:{count - 1})"
            )
        disable_tf32()
        return device
    if device.type == "mps":
        if not _mps_available():
            raise UserError(
                f"device {spec!r} requested but Apple MPS is not available "
                f"(use --device cpu or --device auto)"
            )
        return device
    raise UserError(f"unsupported device {spec!r}; expected {DEVICE_CHOICES}")


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU and CUDA: oneDNN and cuDNN run convolutions in NHWC natively, and
    NCHW inputs pay for a reorder on every call. Same numbers either way."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
