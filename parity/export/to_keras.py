"""`parity.save_keras`: an `nn.Sequential` of supported PyTorch modules (or a module this port
built) → a `.keras` or `.h5` that plain `keras.models.load_model` opens.

Each PyTorch module is turned into its Keras layer(s) by the registry entry that names its class
(`Entry.torch_classes`, `Entry.from_torch`), the variables in Keras layout. The model they make
is then parsed by the port's own reader, rebuilt in PyTorch by the same converters as any file,
and run beside the source module on seeded inputs: a module is written only when the Keras model
it describes computes what it computes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError
from parity.build import KerasModel, build, keras_to_torch, torch_to_keras
from parity.formats import parse, write_keras
from parity.ir.keras_config import to_snake_case
from parity.layers import REGISTRY, In
from parity.spec import Spec
from parity.verify.compare import ATOL, RTOL

Shape = tuple[int, ...]


def _torch_entries() -> dict[type, type]:
    """torch.nn class → the registry entry whose `from_torch` takes it."""
    found = {}
    for entry in REGISTRY.values():
        for name in entry.torch_classes:
            found[getattr(nn, name)] = entry
    return found


def _flat_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        if type(child) is nn.Sequential:
            out += [(f"{name}.{n}", m) for n, m in _flat_modules(child)]
        else:
            out.append((name, child))
    return out


def _absorbed(modules: list[tuple[str, nn.Module]], i: int, entries: dict) -> bool:
    """Whether a Linear takes the output of module i through elementwise modules only."""
    for _, m in modules[i + 1 :]:
        if isinstance(m, nn.Linear):
            return True
        entry = entries.get(type(m))
        if not (isinstance(m, nn.Identity) or (entry is not None and entry.passes_flatten)):
            return False
    return False


def sequential_to_keras(module: nn.Module, input_shape: Shape, dst: str) -> tuple[Spec, dict]:
    """The Keras model (a checked spec) and its weights (Keras layout, "<path>/<var>")."""
    if type(module) is not nn.Sequential:
        raise UserError(f"{dst}: cannot write a {type(module).__name__}: only an nn.Sequential "
                        f"of supported modules or a module built by this port")
    modules = _flat_modules(module)
    entries = _torch_entries()
    state = In(tuple(input_shape))
    layers: list[dict] = []
    weights: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i, (name, m) in enumerate(modules):
        where = f"{dst}: module {name} ({type(m).__name__})"
        if isinstance(m, nn.Identity):
            continue
        entry = entries.get(type(m))
        if entry is None:
            raise UserError(f"{where} has no exact Keras counterpart here; supported: "
                            f"{', '.join(sorted({c.__name__ for c in entries}))}")
        flattens_chw = (isinstance(m, nn.Flatten) and len(state.shape) == 3
                        and state.shape[:2] != (1, 1))
        if flattens_chw and not _absorbed(modules, i, entries):
            raise UserError(f"{where}: flattens in C,H,W order and no Linear follows to absorb "
                            f"it; Keras flattens in H,W,C order")
        for class_name, cfg, vars_ in entry.from_torch(m, state, where):
            base = to_snake_case(class_name)
            k = counts.get(base, 0)
            counts[base] = k + 1
            path = base if k == 0 else f"{base}_{k}"
            layers.append({"module": "keras.layers", "class_name": class_name,
                           "registered_name": None, "config": {"name": path, **cfg}})
            for var, array in vars_:
                weights[f"{path}/{var}"] = np.ascontiguousarray(array, np.float32)
            ns_entry = REGISTRY[class_name]
            out = ns_entry.infer(ns_entry.parse(cfg, where), [state], where)
            state = In(out.shape, out.flat_from)
    if not layers:
        raise UserError(f"{dst}: the module holds no layers")
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, *input_shape],
                                                "name": "input_layer"}}, *layers]}}
    return parse(config, dst), weights


def save_keras(
    module: nn.Module, path: str | os.PathLike, input_shape: Shape, *, force: bool = False
) -> Path:
    """Write `module` as a Keras `.keras` or `.h5` (input_shape in Keras order, e.g. (28, 28, 1)).

    The Keras model is rebuilt in PyTorch and run beside `module` on seeded inputs first; the
    file is written only when both agree within atol = rtol = 1e-5.
    """
    dst = str(path)
    if isinstance(module, KerasModel):
        spec = module.keras_spec
        weights = torch_to_keras(build(spec, dst), module.state_dict(), dst)
    else:
        spec, weights = sequential_to_keras(module, tuple(input_shape), dst)
    if tuple(input_shape) != spec.input_shape:
        raise UserError(
            f"{dst}: input_shape {tuple(input_shape)} differs from the module's {spec.input_shape}"
        )
    _check_same(module, spec, weights, dst)
    return write_keras(path, spec, weights, force=force)


def _check_same(module: nn.Module, spec: Spec, weights: dict, dst: str) -> None:
    built = build(spec, dst)
    rebuilt = built.module
    rebuilt.load_state_dict(keras_to_torch(built, weights, dst), strict=True, assign=True)
    shape = spec.input_shape
    torch_shape = (shape[2], shape[0], shape[1]) if len(shape) == 3 else shape
    x = torch.from_numpy(np.random.default_rng(0).random((4, *torch_shape), dtype=np.float32))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want, got = module(x), rebuilt.eval()(x)
    finally:
        module.train(was_training)
    if want.shape != got.shape or not torch.allclose(got, want, atol=ATOL, rtol=RTOL):
        diff = (got - want).abs().max().item() if want.shape == got.shape else float("inf")
        raise UserError(
            f"{dst}: refused: the Keras model would not compute what the module "
            f"computes (max |diff| {diff:.3e} on seeded inputs)"
        )
