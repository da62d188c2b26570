"""PyTorch files of a ported model, which carry their architecture:

- `.pt` / `.pth`: a plain state_dict (`torch.save(module.state_dict())`), so that
  `module.load_state_dict(torch.load(path, weights_only=True), strict=True)` works; the Keras
  model it was built from travels as its config.json in the state_dict's own `_metadata[""]`
  entry (`keras_config`), which `torch.load(weights_only=True)` keeps and `load_state_dict`
  ignores;
- `.safetensors`: the same JSON in the header's metadata (`keras_config`).

The book's CNN keeps its plain `BookCNN` state_dict with no architecture; a file without one is
read as the book's CNN. Reading goes through `torch_impl.checkpoint` (weights_only, errors in
one line) and its one tensor gate, before any value is looked at.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write
from fashion_cnn.validate import check_tensors, finite
from parity import book
from parity.build import Built, KerasModel, build
from parity.formats.keras_json import model_config
from parity.formats.keras_v3 import json_of
from parity.formats.limits import MAX_JSON_BYTES, MAX_TORCH_FILE_BYTES
from parity.ir.keras_config import parse_model
from parity.spec import check
from torch_impl.checkpoint import read_tensors, tensor_problem, write_safetensors

ARCH_KEY = "keras_config"
TORCH_SUFFIXES = (".pt", ".pth", ".safetensors")


def architecture(module: KerasModel) -> str:
    """The module's Keras model as the config.json a `.keras` of it would hold."""
    return json.dumps(model_config(module.keras_spec))


def save_torch_model(module: KerasModel, dst: str | os.PathLike, *, force: bool = False):
    """Write the module's weights and its architecture as `.pt`/`.pth` or `.safetensors`; the
    book's CNN as the plain `BookCNN` state_dict it always was."""
    dst = Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in TORCH_SUFFIXES:
        raise UserError(f"{dst}: expected .pt, .pth or .safetensors")
    if book.is_book(module.keras_spec):
        from torch_impl.checkpoint import save_state_dict

        return save_state_dict(dict(module.state_dict()), dst, force=force)
    state = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in module.state_dict().items())
    arch = architecture(module)
    if suffix == ".safetensors":
        return atomic_write(
            dst, lambda tmp: write_safetensors(state, tmp, {ARCH_KEY: arch}), force=force
        )
    state._metadata = OrderedDict({"": {"version": 1, ARCH_KEY: arch}})  # type: ignore[attr-defined]
    return _save_streamed(state, dst, force)


def _save_streamed(obj: object, dst: Path, force: bool) -> Path:
    """`torch.save(obj)` into DST, atomically, streamed through Python's file: the bytes are
    never all held in memory (for a large model, another copy of its weights), and a full disk
    is the OSError naming its errno."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:  # torch's zip writer fails closing the cut file:
                cause = err.__context__  # the OSError of the write it was handling
                if isinstance(cause, OSError):
                    raise cause from None
                raise

    return atomic_write(dst, write, force=force)


def _read(path: Path) -> tuple[dict, str | None]:
    """The tensors and the architecture JSON (None when the file carries none)."""
    state = read_tensors(path, MAX_TORCH_FILE_BYTES)  # weights_only=True, errors in one line
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            arch = (f.metadata() or {}).get(ARCH_KEY)
    else:
        meta = getattr(state, "_metadata", None)
        root = meta.get("") if isinstance(meta, Mapping) else None
        arch = root.get(ARCH_KEY) if isinstance(root, Mapping) else None
    if arch is not None and (not isinstance(arch, str) or len(arch) > MAX_JSON_BYTES):
        raise UserError(f"{path}: its {ARCH_KEY} is not a JSON text of at most {MAX_JSON_BYTES}")
    return dict(state), arch


def carries_architecture(path: str | os.PathLike) -> bool:
    """A PyTorch file written by the port for a model other than the book's (its architecture
    stored beside the weights); False for anything else, whose reader says what is wrong."""
    path = Path(path)
    if path.suffix.lower() not in TORCH_SUFFIXES or not path.is_file():
        return False
    try:
        return _read(path)[1] is not None
    except UserError:
        return False


def read_torch(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Built:
    """A PyTorch file → the rebuilt module (weights loaded, eval mode) with its rows. A file
    with no architecture must be the book's CNN."""
    path = Path(path)
    source = str(path)
    state, arch = _read(path)
    spec = (check(parse_model(json_of(arch, ARCH_KEY, source), source), source)
            if arch is not None else book.spec())
    built = build(spec, source)
    expected = {r.torch: r.torch_shape for r in built.rows}
    expected.update({k: f.value.shape for k, f in built.fixed.items()})
    what = ("the tensors do not match the stored architecture: " if arch is not None
            else "not the book's CNN and no architecture stored: ")
    finite_check = finite(allow_nonfinite)  # numpy's isfinite on a view: no float copy

    row_dtypes = {r.torch: getattr(torch, r.dtype) for r in built.rows}

    def dtype_ok(name: str, t: object) -> str | None:
        # a fixed entry keeps its own dtype: num_batches_tracked int64, a zero bias float32;
        # a row its variable's: float32, int64 for a counter
        fixed = built.fixed.get(name)
        want = (torch.from_numpy(fixed.value).dtype if fixed is not None
                else row_dtypes.get(name, torch.float32))
        problem = tensor_problem(name, t, want)
        if problem is None and want == torch.float32:  # (passes all with --allow-nonfinite)
            return finite_check(name, t)
        return problem

    check_tensors(
        state, expected, source, what=what, checks=[dtype_ok],
        # the gate before anything else is asked of a tensor: dense, CPU, storage backed
        before_shape=lambda key, t: tensor_problem(key, t) if isinstance(t, torch.Tensor) else None,
        shape_of=lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else None,
    )
    declared = sum(t.numel() * t.element_size() for t in state.values())
    if declared > path.stat().st_size:  # each tensor's values are stored once in the file
        raise UserError(f"{source}: its tensors stand for {declared:,} bytes, more than the "
                        f"file's {path.stat().st_size:,}; refused")
    state = {k: t.contiguous() for k, t in state.items()}
    for key, fix in built.fixed.items():
        if fix.required and not np.array_equal(state[key].numpy(), fix.value):
            raise UserError(f"{source}: {key} must be {fix.value.flat[0]:g} (the Keras layer "
                            f"has center/scale off)")
    built.module.load_state_dict(state, strict=True, assign=True)
    built.module.eval()
    return built


# --- training files: the model and its optimizer ------------------------------------------------
# Laid out as torch_impl.train's last.pt where the two meet: {"model": the state_dict above
# (its architecture in its `_metadata`), "optimizer": the optimizer's `state_dict()`}, and the
# Keras side of the optimizer as JSON text: its config and the compile settings.
OPTIMIZER_KEY = "optimizer"
KERAS_OPTIMIZER_KEY, KERAS_COMPILE_KEY = "keras_optimizer", "keras_compile"


def save_torch_training(module: KerasModel, optimizer: dict, keras_optimizer: dict,
                        keras_compile: dict, dst: str | os.PathLike, *,
                        force: bool = False) -> Path:
    """A `.pt`/`.pth` of the module's weights (as `save_torch_model` writes them) and its
    optimizer's state_dict, which `torch_impl.train --resume-from` and `read_training` read."""
    dst = Path(dst)
    if dst.suffix.lower() not in (".pt", ".pth"):
        raise UserError(f"{dst}: --with-optimizer writes a .pt or .pth file")
    state = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in module.state_dict().items())
    if not book.is_book(module.keras_spec):
        state._metadata = OrderedDict(  # type: ignore[attr-defined]
            {"": {"version": 1, ARCH_KEY: architecture(module)}})
    payload = {"model": state, OPTIMIZER_KEY: optimizer,
               KERAS_OPTIMIZER_KEY: json.dumps(keras_optimizer),
               KERAS_COMPILE_KEY: json.dumps(keras_compile)}
    return _save_streamed(payload, dst, force)


def read_training(path: str | os.PathLike) -> tuple[object, object | None, object | None]:
    """A training file's optimizer state_dict (unchecked: `parity.optimizer_state.from_torch`
    checks every value), and its Keras optimizer config and compile settings (parsed JSON, or
    None where the file has none: a last.pt of torch_impl.train). None for the state_dict of a
    file without one."""
    from torch_impl.checkpoint import read_checkpoint

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return None, None, None
    obj = read_checkpoint(path, MAX_TORCH_FILE_BYTES)
    if not isinstance(obj, Mapping) or OPTIMIZER_KEY not in obj:
        return None, None, None
    texts = []
    for key in (KERAS_OPTIMIZER_KEY, KERAS_COMPILE_KEY):
        text = obj.get(key)
        if text is not None and (not isinstance(text, str) or len(text) > MAX_JSON_BYTES):
            raise UserError(f"{path}: its {key} is not a JSON text of at most {MAX_JSON_BYTES}")
        texts.append(None if text is None else json_of(text, key, str(path)))
    return obj[OPTIMIZER_KEY], texts[0], texts[1]
