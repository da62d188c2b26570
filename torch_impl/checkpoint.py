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
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fashion_cnn.errors import UserError, first_line, one_line
from fashion_cnn.files import atomic_write
from fashion_cnn.validate import check_tensors, finite
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


# The book's CNN takes 1.3 MB; a training checkpoint (model, Adam's moments, best weights) 5 MB.
# Anything much larger is no checkpoint of it, and is refused before it is read.
MAX_CHECKPOINT_BYTES = 256 << 20

_GLOBAL = re.compile(r"GLOBAL ([\w.<>]+)")


def _check_size(path: Path, limit: int = MAX_CHECKPOINT_BYTES) -> None:
    size = path.stat().st_size
    if size > limit:
        what = (" for a checkpoint of the book's CNN (1.3 MB)" if limit == MAX_CHECKPOINT_BYTES
                else "")
        raise UserError(f"{path}: {size} bytes, more than {limit} allowed{what}")
    if zipfile.is_zipfile(path):
        # torch's zip format: records are inflated to their declared sizes; bound their sum.
        try:
            with zipfile.ZipFile(path) as zf:
                declared = sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as err:
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
        if declared > limit:
            raise UserError(
                f"{path}: its zip records declare {declared} bytes, more than {limit} allowed"
            )


def _refused_pickle(path: Path, err: Exception) -> UserError:
    """Our own line for a pickle the weights-only unpickler refused: what it references, never
    torch's advice (rerun with weights_only=False) nor its terminal colours."""
    text = str(err)
    found = _GLOBAL.search(text)
    if found:
        why = f"it references GLOBAL {found.group(1)!r}"
    else:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
        why = one_line(detail.split(". ", 1)[0].strip() or type(err).__name__)
    return UserError(
        f"{path}: refused: the pickle holds more than tensors and containers ({why}); "
        f"only tensors and containers are loaded, nothing from the file was run"
    )


def read_tensors(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Mapping[str, object]:
    """What a .pt/.pth/.safetensors file holds (a training checkpoint's "model"), read with
    `weights_only=True` and its errors as one line; the tensors are not yet checked (each goes
    through `tensor_problem` before its values are read). `max_bytes`: the file, and what its
    zip records declare, at most (the book's checkpoints: MAX_CHECKPOINT_BYTES)."""
    obj = read_checkpoint(path, max_bytes)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        # A training checkpoint (last.pt): model + optimizer + RNG states; take the model.
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return obj


def read_checkpoint(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> object:
    """The whole object a .pt/.pth/.safetensors file holds (a training checkpoint: model,
    optimizer, …), read with `weights_only=True`, its errors as one line; nothing checked."""
    kind = checkpoint_kind(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    _check_size(path, max_bytes)
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
            msg = first_line(err)
            raise UserError(f"{path}: not a valid .safetensors file ({msg})") from None
    try:
        with warnings.catch_warnings():
            # torch warns on stderr while it loads (sparse invariants, TypedStorage): a refused
            # file must print one line, and a good one nothing.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler met a global or an opcode it does not allow: never run.
        raise _refused_pickle(path, err) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        msg = first_line(err)
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    except (
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
        AssertionError,
        OverflowError,
        struct.error,
    ) as err:
        # What the weights-only unpickler raises on bytes that are no pickle at all (random
        # bytes, a cut legacy-format file, a damaged record; found by tests/test_fuzz.py): its
        # stack or memo runs out, an opcode's argument is cut short.
        msg = first_line(err)
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None
    return obj


def _tensor_kind(tensor: torch.Tensor) -> str | None:
    """What makes a tensor other than a plain dense CPU one, or None when it is one."""
    if type(tensor) not in (torch.Tensor, nn.Parameter):
        return f"a {type(tensor).__name__} (a tensor subclass)"
    if tensor.is_nested:
        return "a nested tensor"
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor (not dense)"
    if tensor.is_meta:
        return "a meta tensor (no data)"
    if tensor.is_quantized:
        return f"a quantized tensor ({tensor.dtype})"
    if tensor.device.type != "cpu":
        return f"a tensor on {tensor.device}"
    return None


def tensor_problem(name: str, value: object, dtype: torch.dtype | None = None) -> str | None:
    """The one gate every tensor read from a PyTorch file passes before anything reads its
    values (the book's checkpoints, last.pt, any model's .pt/.pth/.safetensors): a plain
    dense CPU tensor (of `dtype`, when given) whose storage holds every value it stands for —
    `torch.zeros(1).expand(n, n)` saves 4 bytes and stands for n² floats. Returns the problem,
    or None."""
    if not isinstance(value, torch.Tensor):
        return f"{name} is a {type(value).__name__}, not a tensor"
    kind = _tensor_kind(value)
    if kind is not None:
        return f"{name} is {kind}; only dense float32 tensors (strided, on the CPU) are loaded"
    if dtype is not None and value.dtype != dtype:
        return f"{name} has dtype {value.dtype}, expected {dtype}"
    size = value.element_size()
    held = value.untyped_storage().nbytes() // size - value.storage_offset()
    if value.numel() > max(held, 0):
        return (f"{name} stands for {value.numel():,} values but its storage holds "
                f"{max(held, 0):,} (an expanded view); refused")
    return None


def validate_state_dict(
    state: Mapping[str, object], source: str | os.PathLike, *, allow_nonfinite: bool = False
) -> dict[str, torch.Tensor]:
    """Check keys, shapes, layout, dtype and finiteness against the book's CNN; return a plain
    dict. Raises one UserError naming `source` and listing every problem."""

    def float32(key: str, tensor: torch.Tensor) -> str | None:
        return tensor_problem(key, tensor, torch.float32)

    check_tensors(
        state, EXPECTED_SHAPES, str(source),
        shape_of=lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else None,
        checks=[float32, finite(allow_nonfinite)],
        before_shape=lambda key, v: tensor_problem(key, v) if isinstance(v, torch.Tensor) else None,
        what="not the book's CNN: ",
    )
    return {key: state[key].contiguous() for key in EXPECTED_SHAPES}


def load_state_dict(
    path: str | os.PathLike, *, allow_nonfinite: bool = False
) -> dict[str, torch.Tensor]:
    """Read and validate a .pt/.pth/.safetensors checkpoint of the book's CNN (CPU tensors)."""
    path = Path(path)
    return validate_state_dict(read_tensors(path), path, allow_nonfinite=allow_nonfinite)


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
        return atomic_write(dst, lambda tmp: write_safetensors(state, tmp), force=force)
    data = torch_bytes(state)
    return atomic_write(dst, lambda tmp: tmp.write_bytes(data), force=force)


def write_safetensors(
    state: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' own streaming writer (no copy of the tensors in memory); its I/O error
    becomes the OSError it wraps, so that a full disk names its errno."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(dict(state), str(path), metadata=metadata)
    except SafetensorError as err:
        code = re.search(r"code: (\d+)", str(err))
        if code:
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from None
        raise OSError(first_line(err)) from None


def torch_bytes(obj: object) -> memoryview:
    """torch.save's bytes of `obj`, made in memory (a view of the buffer: no second copy)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()
