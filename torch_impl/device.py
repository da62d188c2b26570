"""Devices and numerics: one place that turns a `--device` value into a torch.device, for every
CLI, and the seeding and float32 settings a deterministic run needs.

`auto` picks the best device present: CUDA, then Apple's MPS, then the CPU. A device that was
asked for by name and is not present is a UserError — never a silent fallback to the CPU.
On CUDA, TF32 is switched off so that float32 matmuls and convolutions stay float32 (TF32
rounds their inputs to 10 mantissa bits, far outside the 1e-5 parity tolerances).
"""

from __future__ import annotations

import platform
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from fashion_cnn.cli import DEVICE_CHOICES
from fashion_cnn.errors import UserError
from fashion_cnn.thread_tuner import ThreadTuner, candidate_counts
from fashion_cnn.threads import chosen_automatically, usable_cpus


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


def seed_everything(seed: int) -> None:
    """Seed every generator a run may draw from: python, numpy, torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def numerics(device: torch.device) -> Iterator[None]:
    """Deterministic float32 for the duration of a run; the global settings are put back after.

    CPU kernels are deterministic once asked to be. On CUDA, cuDNN is pinned to deterministic
    algorithms and TF32 is off (the book's numbers are float32); max-pool's CUDA backward has no
    deterministic kernel, so `use_deterministic_algorithms` is left alone there.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            disable_tf32()
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic = saved[1]
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]
        torch.backends.cuda.matmul.allow_tf32 = saved[4]


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda or "",
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        cpu = platform.processor() or platform.machine()
        try:
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
            cpu = models[0] if models else cpu
        except OSError:
            pass
        return f"{cpu} ({torch.get_num_threads()} threads)"
    return device.type


def thread_tuner(threads: int, device: torch.device, distributed: bool) -> ThreadTuner | None:
    """The count's tuner where the command line chose it (`threads` 0: auto), on one CPU
    process (a rank of N would time the others' waits too); None elsewhere: a fixed
    --threads N or OMP_NUM_THREADS, a library call, a GPU, torchrun."""
    if threads or not chosen_automatically() or device.type != "cpu" or distributed:
        return None
    start = torch.get_num_threads()
    counts = candidate_counts(usable_cpus(), start)
    return ThreadTuner(counts, start, torch.set_num_threads) if len(counts) > 1 else None
