"""PyTorch checkpoint files of the book's CNN: `.pt` / `.pth` (a plain state_dict) and
`.safetensors`.

Reading never executes anything from the file: `torch.load(..., weights_only=True)` refuses any
pickle that carries more than tensors and containers, and safetensors holds no code at all.
Everything is validated — keys, shapes, dtype, finiteness — before a model is touched, and files
are written to a temporary name in the destination folder, then renamed.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.files import atomic_write
from torch_impl.model import BookCNN

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"

# state_dict key → shape, in the module's order (8 tensors, 333,526 parameters).
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    name: tuple(t.shape) for name, t in BookCNN().state_dict().items()
}


def checkpoint_kind(path: str | os.PathLike) -> str:
    """'torch' for .pt/.pth, 'safetensors' for .safetensors; anything else is refused."""
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    raise UserError(
        f"{path}: unknown checkpoint extension {suffix or '(none)'!r}; "
        f"expected .pt, .pth or .safetensors"
    )


def _read_raw(path: Path) -> Mapping[str, object]:
    kind = checkpoint_kind(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{path}: not a valid .safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler met a global it does not allow: a payload, never run.
        first = first_line(err, "unsafe pickle")
        raise UserError(
            f"{path}: refused: the pickle holds more than tensors (weights_only=True): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        msg = first_line(err)
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    except (IndexError, KeyError, TypeError, AttributeError, AssertionError) as err:
        # What the weights-only unpickler raises on bytes that are no pickle at all (random
        # bytes, a cut legacy-format file): its stack or memo runs out.
        msg = first_line(err)
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        # A training checkpoint (last.pt): model + optimizer + RNG states; take the model.
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return obj


def validate_state_dict(
    state: Mapping[str, object], source: str | os.PathLike, *, allow_nonfinite: bool = False
) -> dict[str, torch.Tensor]:
    """Check keys, shapes, dtype and finiteness against the book's CNN; return a plain dict.

    Raises UserError naming `source` and the first defect found.
    """
    missing = [k for k in EXPECTED_SHAPES if k not in state]
    extra = [k for k in state if k not in EXPECTED_SHAPES]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(map(str, extra))}")
        raise UserError(f"{source}: not the book's CNN: {'; '.join(parts)}")
    out = {}
    for key, shape in EXPECTED_SHAPES.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"{source}: {key} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != shape:
            raise UserError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected {shape}")
        if tensor.dtype != torch.float32:
            raise UserError(f"{source}: {key} has dtype {tensor.dtype}, expected torch.float32")
        if not allow_nonfinite and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{source}: {key} holds {bad} NaN/Inf values")
        out[key] = tensor
    return out


def load_state_dict(
    path: str | os.PathLike, *, allow_nonfinite: bool = False
) -> dict[str, torch.Tensor]:
    """Read and validate a .pt/.pth/.safetensors checkpoint of the book's CNN (CPU tensors)."""
    path = Path(path)
    return validate_state_dict(_read_raw(path), path, allow_nonfinite=allow_nonfinite)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, allow_nonfinite: bool = False
) -> BookCNN:
    """A BookCNN in eval mode holding the checkpoint's weights."""
    model = BookCNN()
    model.load_state_dict(load_state_dict(path, allow_nonfinite=allow_nonfinite))
    return model.to(device).eval()


def save_state_dict(
    state: Mapping[str, torch.Tensor] | nn.Module, dst: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write a validated state_dict as .pt/.pth (torch.save) or .safetensors, atomically.

    The bytes are made in memory first and written by Python, so a full disk is an OSError that
    names its errno (torch.save's own writer reports it as a bare RuntimeError)."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    validate_state_dict(state, dst, allow_nonfinite=True)
    if checkpoint_kind(dst) == "safetensors":
        from safetensors.torch import save

        data = save(state)
    else:
        data = torch_bytes(state)
    return atomic_write(dst, lambda tmp: tmp.write_bytes(data), force=force)


def torch_bytes(obj: object) -> bytes:
    """torch.save's bytes of `obj`, made in memory."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
