"""Training checkpoints across the frameworks: a model *and* its optimizer's state.

- `read_state(source)`: the optimizer state of the file a `Source` was read from — a `.keras`'s
  compile_config and `optimizer/vars`, a full-model `.h5`'s training_config and
  `optimizer_weights`, or a PyTorch training file's `optimizer` (a last.pt of
  `torch_impl.train`, or what `write_state` wrote) — as a checked `KerasState`;
- `write_state(source, state, dst)`: DST with the optimizer: a `.keras` whose optimizer Keras's
  `load_model` restores, or a `.pt` laid out as last.pt (`{"model", "optimizer", …}`);
- `load_torch_training(path) -> (module, optimizer)`, `save_torch_training(...)` and
  `save_keras_training(...)`: the Python interface (`parity.load_torch_training`, …).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# torch._dynamo, which the first torch.optim optimizer imports, segfaults when it is loaded after
# TensorFlow in one process, and the port runs Keras before it builds the optimizer: load it now.
import torch._dynamo  # noqa: F401
from torch import nn

from fashion_cnn.errors import UserError
from parity import book
from parity.build import Built, build
from parity.formats import keras_compile_config, keras_kind, read_keras_optimizer, write_keras
from parity.formats.torch_files import read_training
from parity.formats.torch_files import save_torch_training as save_training_file
from parity.optimizer_state import (
    BOOK_COMPILE,
    KerasState,
    check_values,
    compile_settings,
    expected_variables,
    from_torch,
    to_torch,
)


def _named(source: str, what):
    """`what()`, its UserError naming the file (a config's checks name only the field)."""
    try:
        return what()
    except UserError as err:
        text = str(err)
        raise UserError(text if text.startswith(source) else f"{source}: {text}") from None


def read_state(built: Built, path: Path) -> KerasState:
    """The optimizer state `path` holds for the model `built` (read from the same file), every
    value checked; a one-line refusal for a file with none."""
    source = str(path)
    none = UserError(f"{source}: holds no optimizer state (saved without compiling, or without "
                     f"its optimizer); port it without --with-optimizer")
    if keras_kind(path) is not None:
        compile_config = keras_compile_config(path)  # a .keras's, or a .h5's training_config
        if compile_config is None or compile_config.get("optimizer") is None:
            raise none
        config = compile_config["optimizer"]
        spec, variables = _named(source, lambda: expected_variables(built, config))
        values = read_keras_optimizer(path, [(f"optimizer {v.label}", v.shape, v.dtype)
                                             for v in variables])
        if values is None:
            raise none
        check_values(variables, values, source)
        return KerasState(spec, variables, values, compile_settings(compile_config), config)
    optimizer, config, compile_ = read_training(path)
    if optimizer is None:
        raise none
    if config is None:  # a last.pt of torch_impl.train: its KerasAdam, Keras's Adam
        config = _adam_config(optimizer, source)
    state = _named(source, lambda: from_torch(built, optimizer, config, source))
    if isinstance(compile_, dict):
        state.compile = compile_settings(compile_)
    return state


def _adam_config(optimizer: object, source: str) -> dict:
    """The Keras config of torch_impl.train's KerasAdam, from its one param group."""
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    group = groups[0] if isinstance(groups, list) and groups else None
    betas = group.get("betas") if isinstance(group, dict) else None
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise UserError(f"{source}: its optimizer is not torch_impl.train's Adam (no betas)")
    return {"class_name": "Adam", "config": {
        "learning_rate": group.get("lr"), "beta_1": betas[0], "beta_2": betas[1],
        "epsilon": group.get("eps")}}


def write_state(built: Built, state: KerasState, dst: Path, weights, *,
                force: bool = False) -> None:
    """DST with the optimizer: a `.keras` (its compile_config, `optimizer/vars`) or a `.pt`
    (model, optimizer state_dict, the Keras config). `weights`: Keras layout, by name."""
    if keras_kind(dst) is not None:
        config = state.compile_config()
        write_keras(dst, built.spec, weights, force=force,
                    optimizer=(config, config["optimizer"]["config"]["name"], state.values))
        return
    optimizer = to_torch(state, built)
    save_training_file(built.module, optimizer.state_dict(), state.keras_config()
                       if state.config is None else state.config, state.compile, dst,
                       force=force)


# --- the Python interface -----------------------------------------------------------------------


def load_torch_training(path: str | os.PathLike, *, keras_training: bool = False
                        ) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A `.keras` saved with its optimizer (`model.fit`, `ModelCheckpoint`), or a PyTorch
    training file (a last.pt, or what `parity.port --with-optimizer` writes) → the module (in
    train mode) and the optimizer `parity.optim.from_keras` builds for its config, holding the
    file's state: `optimizer.step()` continues where Keras (or PyTorch) stopped. A frozen
    layer's parameters are not the optimizer's (`requires_grad` off); with `keras_training`
    the module's BatchNormalizations train as Keras's (`parity.training`: a frozen one in
    inference mode), swapped in before the optimizer takes the parameters."""
    from parity.pipeline import read_source

    path = Path(path)
    source = read_source(path, module=False)
    state = read_state(source.built, path)
    source.load_module()
    if keras_training:
        from parity.training import keras_training as to_keras_training

        to_keras_training(source.built.module)
    module = source.built.module.train()
    return module, to_torch(state, source.built)


def _built_of(module: nn.Module) -> Built:
    """The rows of a module built by this port, or of a BookCNN (the book's table)."""
    spec = getattr(module, "keras_spec", None)
    if spec is None:
        from torch_impl.model import BookCNN

        if not isinstance(module, BookCNN):
            raise UserError("expected a module built by parity (or a BookCNN)")
        spec = book.spec()
    built = build(spec, "the module")
    built.module.load_state_dict(dict(module.state_dict()), assign=True)
    return built


def _state_of(module: nn.Module, optimizer: torch.optim.Optimizer, config: object | None,
              built: Built) -> KerasState:
    """The optimizer's state as Keras's (the optimizer over `module.parameters()`, in order)."""
    state = optimizer.state_dict()
    if config is None:
        config = _adam_config(state, "the optimizer")
    return from_torch(built, state, config, "the optimizer")


def save_torch_training(module: nn.Module, optimizer: torch.optim.Optimizer,
                        path: str | os.PathLike, *, config: object | None = None,
                        force: bool = False) -> None:
    """The module and its optimizer (over `module.parameters()`) as a `.pt` training file.
    `config`: the optimizer's Keras config (default: Keras's Adam with the optimizer's lr,
    betas and eps, for a KerasAdam)."""
    built = _built_of(module)
    state = _state_of(module, optimizer, config, built)
    write_state(built, state, Path(path), None, force=force)


def save_keras_training(module: nn.Module, optimizer: torch.optim.Optimizer,
                        path: str | os.PathLike, *, config: object | None = None,
                        compile: dict | None = None, force: bool = False) -> None:
    """The module and its optimizer as a `.keras` whose optimizer `keras.models.load_model`
    restores, so that `model.fit` continues. `compile`: loss and metrics (default: the book's,
    sparse categorical cross-entropy and accuracy)."""
    from parity.build import ModuleWeights

    built = _built_of(module)
    state = _state_of(module, optimizer, config, built)
    state.compile = compile_settings(dict(BOOK_COMPILE if compile is None else compile))
    write_state(built, state, Path(path), ModuleWeights(built), force=force)
