"""PyTorch files of a generically ported model, which carry their architecture, and
`parity.load_torch_model` for every format.

- `.pt` / `.pth`: a plain state_dict (`torch.save(module.state_dict())`), so that
  `module.load_state_dict(torch.load(path, weights_only=True), strict=True)` works; the Keras
  chain it was built from travels as JSON in the state_dict's own `_metadata[""]` entry
  (`keras_config`), which `torch.load(weights_only=True)` keeps and `load_state_dict` ignores.
- `.safetensors`: the same JSON in the header's metadata (`keras_config`).

The book's CNN keeps its plain `BookCNN` state_dict with no architecture, as before; a file
without one is read as the book's CNN.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write
from fashion_cnn.validate import check_tensors, finite
from parity.build import Built, KerasSequential, build, parse_config
from parity.formats.keras_read import _json, load_keras_as_torch
from parity.formats.keras_write import model_config
from parity.keras_files import book_config
from parity.keras_spec import MAX_JSON_BYTES, check_config, keras_kind
from torch_impl.checkpoint import tensor_problem, torch_bytes, write_safetensors

ARCH_KEY = "keras_config"


def architecture(module: KerasSequential) -> str:
    """The module's Keras chain as the config.json a `.keras` of it would hold."""
    spec = module.keras_spec
    return json.dumps(model_config(spec, [None] * len(spec.layers)))


def is_book_cnn(module: KerasSequential) -> bool:
    """The module is the book's CNN (`BookCNN`'s architecture and keys)."""
    try:
        check_config(json.loads(architecture(module)), "the module")
    except UserError:
        return False
    return True


def save_torch_model(module: KerasSequential, dst: str | os.PathLike, *, force: bool = False):
    """Write the module's weights and its architecture as `.pt`/`.pth` or `.safetensors`; the
    book's CNN as the plain `BookCNN` state_dict it always was."""
    dst = Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in (".pt", ".pth", ".safetensors"):
        raise UserError(f"{dst}: expected .pt, .pth or .safetensors")
    if is_book_cnn(module):
        from torch_impl.checkpoint import save_state_dict

        return save_state_dict(dict(module.state_dict()), dst, force=force)
    state = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in module.state_dict().items())
    arch = architecture(module)
    if suffix == ".safetensors":
        return atomic_write(
            dst, lambda tmp: write_safetensors(state, tmp, {ARCH_KEY: arch}), force=force
        )
    state._metadata = OrderedDict({"": {"version": 1, ARCH_KEY: arch}})  # type: ignore[attr-defined]
    data = torch_bytes(state)
    # made in memory, written by Python: a full disk is an OSError naming its errno
    return atomic_write(dst, lambda tmp: tmp.write_bytes(data), force=force)


def _read_torch(path: Path) -> tuple[dict, str | None]:
    """The tensors and the architecture JSON (None when the file carries none)."""
    from torch_impl.checkpoint import _read_raw  # weights_only=True, errors in one line

    state = _read_raw(path)
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
    """A PyTorch file written by the generic port (its architecture stored beside the weights);
    False for anything else, whose own reader reports what is wrong with it."""
    path = Path(path)
    if path.suffix.lower() not in (".pt", ".pth", ".safetensors") or not path.is_file():
        return False
    try:
        return _read_torch(path)[1] is not None
    except UserError:
        return False


def torch_built(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Built:
    """A PyTorch file → the rebuilt module (weights loaded, eval mode) with its rows. A file
    with no architecture must be the book's CNN."""
    path = Path(path)
    source = str(path)
    state, arch = _read_torch(path)
    config = _json(arch, ARCH_KEY, source) if arch is not None else book_config()
    built = build(parse_config(config, source), source)
    expected = {r.torch: r.torch_shape for r in built.rows}
    expected.update({k: f.value.shape for k, f in built.fixed.items()})
    if arch is None:  # the book's plain state_dict holds no num_batches_tracked (no BN)
        what = "not the book's CNN and no architecture stored: "
    else:
        what = "the tensors do not match the stored architecture: "

    # numpy's isfinite on a view: torch's makes a float copy of the tensor on the way
    finite_check = finite(allow_nonfinite)

    def dtype_ok(name: str, t: object) -> str | None:
        # a fixed entry keeps its own dtype: num_batches_tracked int64, a zero bias float32
        fixed = built.fixed.get(name)
        want = torch.from_numpy(fixed.value).dtype if fixed is not None else torch.float32
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


def load_torch_model(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> nn.Module:
    """Any supported file → `nn.Module` in eval mode with its weights loaded.

    `.keras` / `.h5`: the module built from the file's Keras config. `.pt` / `.pth` /
    `.safetensors` written by this port: rebuilt from the architecture they carry; a plain
    state_dict of the book's CNN: the book's module. Images are NCHW (an (H, W) Keras input
    stays (N, H, W)); the outputs are what Keras outputs (probabilities after a softmax).
    """
    kind = keras_kind(path)
    if kind in ("keras", "h5"):
        return load_keras_as_torch(path, allow_nonfinite=allow_nonfinite)
    if kind == "weights.h5":
        raise UserError(f"{path}: a .weights.h5 holds no architecture; use the .keras or .h5")
    return torch_built(path, allow_nonfinite=allow_nonfinite).module
