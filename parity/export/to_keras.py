"""`parity.save_keras`: an `nn.Sequential` of supported PyTorch modules (or a module this port
built) → a `.keras` or `.h5` that plain `keras.models.load_model` opens.

One small function per PyTorch module class (`parity.layers.to_keras`) gives the Keras
layer(s) and their variables in Keras layout. The chain they describe is then rebuilt in
PyTorch by the Keras → PyTorch converters (`parity.build.build`) and run beside the source
module on seeded inputs: a module is written only when the Keras model it describes computes
what it computes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError
from parity.build import (
    KerasLayer,
    KerasSequential,
    ModelSpec,
    build,
    keras_to_torch,
    to_snake_case,
    torch_to_keras,
)
from parity.formats.keras_write import write_keras_model
from parity.keras_spec import dtype_policy
from parity.layers.to_keras import ACTIVATIONS, PASS_FLATTEN, TO_KERAS, State, params_ok
from parity.verify.compare import ATOL, RTOL

Shape = tuple[int, ...]


def _flat_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        if type(child) is nn.Sequential:
            out += [(f"{name}.{n}", m) for n, m in _flat_modules(child)]
        else:
            out.append((name, child))
    return out


def _dense_follows(modules: list[tuple[str, nn.Module]], i: int) -> bool:
    for _, m in modules[i + 1 :]:
        if isinstance(m, nn.Linear):
            return True
        if (
            not isinstance(m, PASS_FLATTEN)
            and type(m) not in ACTIVATIONS
            and not isinstance(m, nn.LeakyReLU | nn.Softmax | nn.Hardtanh)
        ):
            return False
    return False


def sequential_to_keras(module: nn.Module, input_shape: Shape, dst: str) -> tuple[ModelSpec, dict]:
    """The Keras chain (ModelSpec) and its weights (Keras layout, "<path>/<var>")."""
    if type(module) is not nn.Sequential:
        raise UserError(
            f"{dst}: cannot write a {type(module).__name__}: only an nn.Sequential "
            f"of supported modules or a module built by this port"
        )
    modules = _flat_modules(module)
    state = State(tuple(input_shape))
    layers: list[KerasLayer] = []
    weights: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for i, (name, m) in enumerate(modules):
        where = f"{dst}: module {name} ({type(m).__name__})"
        fn = TO_KERAS.get(type(m))
        if fn is None or not params_ok(m):
            raise UserError(
                f"{where} has no exact Keras counterpart here; supported: "
                f"{', '.join(sorted({c.__name__ for c in TO_KERAS}))}"
            )
        if isinstance(m, nn.Flatten) and len(state.shape) == 3 and state.shape[:2] != (1, 1):
            if not _dense_follows(modules, i):
                raise UserError(
                    f"{where}: flattens in C,H,W order and no Linear follows to "
                    f"absorb it; Keras flattens in H,W,C order"
                )
        for class_name, cfg, vars_ in fn(m, state, where):
            base = to_snake_case(class_name)
            k = counts.get(base, 0)
            counts[base] = k + 1
            path = base if k == 0 else f"{base}_{k}"
            cfg = {"name": path, "trainable": True, "dtype": dtype_policy(), **cfg}
            layer = KerasLayer(class_name, cfg, path)
            layers.append(layer)
            for var, array in vars_:
                weights[f"{path}/{var}"] = np.ascontiguousarray(array, np.float32)
        # the shape from the Keras → PyTorch converters; the C,H,W order of a Flatten pending
        # until the Linear that takes it (checked above to follow)
        spec = ModelSpec(tuple(input_shape), tuple(layers))
        info = build(spec, dst).layers if layers else []
        if isinstance(m, nn.Flatten) and len(state.shape) == 3:
            flat_from = state.shape if state.shape[:2] != (1, 1) else None
        else:
            flat_from = None if isinstance(m, nn.Linear) else state.flat_from
        if info:
            state = State(info[-1].shape, flat_from)
    if not layers:
        raise UserError(f"{dst}: the module holds no layers")
    return ModelSpec(tuple(input_shape), tuple(layers)), weights


def save_keras(
    module: nn.Module, path: str | os.PathLike, input_shape: Shape, *, force: bool = False
) -> Path:
    """Write `module` as a Keras `.keras` or `.h5` (input_shape in Keras order, e.g. (28, 28, 1)).

    The Keras chain is rebuilt in PyTorch and run beside `module` on seeded inputs first; the
    file is written only when both agree within atol = rtol = 1e-5.
    """
    dst = str(path)
    if isinstance(module, KerasSequential):
        spec = module.keras_spec
        built = build(spec, dst)
        weights = torch_to_keras(built, module.state_dict(), dst)
    else:
        spec, weights = sequential_to_keras(module, tuple(input_shape), dst)
        if tuple(input_shape) != spec.input_shape:
            raise AssertionError("input shape changed")
        built = build(spec, dst)
    if tuple(input_shape) != spec.input_shape:
        raise UserError(
            f"{dst}: input_shape {tuple(input_shape)} differs from the module's {spec.input_shape}"
        )
    _check_same(module, built, weights, spec, dst)
    return write_keras_model(spec, weights, path, force=force)


def _check_same(module: nn.Module, built, weights: dict, spec: ModelSpec, dst: str) -> None:
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
