"""What `--resume` needs: the run's state between epochs, written to last.pt after each one.

last.pt holds plain types and tensors only (model, optimizer, early stopping, best weights,
history, every RNG state), so it loads with `torch.load(weights_only=True)`; a resumed CPU run
gives exactly the losses of an uninterrupted one.
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.files import atomic_write
from torch_impl.callbacks import EarlyStopping
from torch_impl.checkpoint import EXPECTED_SHAPES, tensor_problem, torch_bytes, validate_state_dict
from torch_impl.optim import KerasAdam

LAST_FILE = "last.pt"
LAST_FORMAT = 1
# Settings that must match for --resume to continue the same run (epochs and patience may grow).
RESUME_KEYS = ("seed", "batch_size", "lr", "limit", "init")
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")


@dataclass
class RunState:
    """Everything that carries from one epoch to the next (and into last.pt)."""

    epoch: int = 0  # epochs completed
    stopped: bool = False
    checkpoint_best: float | None = None  # ModelCheckpoint's own `best`
    history: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in HISTORY_KEYS}
    )


# --- RNG states as plain types (last.pt loads with weights_only=True) ---------------------------


def rng_state(shuffle: torch.Generator) -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "shuffle": shuffle.get_state(),
    }


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    shuffle.set_state(state["shuffle"])


# --- last.pt ------------------------------------------------------------------------------------


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, in the standard contiguous layout."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_last(path: Path, **payload) -> None:
    data = torch_bytes(payload)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), force=True)


def load_last(path: Path) -> dict:
    """Read last.pt and validate every part of it (`validate_last`): nothing is applied to a
    model, an optimizer or an RNG until the whole file has been found sound."""
    if not path.is_file():
        raise UserError(f"{path}: nothing to resume (no such file); run without --resume first")
    try:
        last = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler met a global it does not allow: a payload, never run.
        raise UserError(
            f"{path}: refused: the pickle holds more than tensors and plain types "
            f"(weights_only=True): {first_line(err, 'unsafe pickle')}"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise UserError(f"{path}: not a readable training checkpoint ({first_line(err)})") from None
    validate_last(last, path)
    return last


# --- validating last.pt -------------------------------------------------------------------------
# Each check names the part of the file (`optimizer.state[4].exp_avg`) and what was expected.

LAST_KEYS = ("format", "config", "model", "optimizer", "early_stopping", "run", "best_weights",
             "rng")
CONFIG_TYPES = {"seed": (int,), "batch_size": (int,), "lr": (float, int), "limit": (int,),
                "init": (str,), "patience": (int,), "epochs": (int,),
                "world_size": (int,)}
INITS = ("keras", "torch")
ADAM_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")
RNG_KEYS = ("torch_cpu", "torch_cuda", "numpy", "python", "shuffle")
TORCH_RNG_BYTES = torch.Generator().get_state().numel()  # 5056: the CPU generator's state
NUMPY_KEYS = 624  # MT19937's key words
PYTHON_STATE = 625  # random's internal state: 624 words and the position


class _Bad(Exception):
    """One defect of last.pt: where it is, and what is wrong."""


def _fields(where: str, value, keys) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{where} is a {type(value).__name__}, expected a dict")
    missing = [k for k in keys if k not in value]
    extra = [k for k in value if k not in keys]
    if missing:
        raise _Bad(f"{where} lacks {', '.join(map(repr, missing))}")
    if extra:
        raise _Bad(f"{where} has unexpected {', '.join(map(repr, extra))}")
    return value


def _is(value, kind: type) -> bool:
    """isinstance, where a bool is not an int (True is no epoch count)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _typed(where: str, value, *kinds: type | None) -> None:
    if not any(value is None if k is None else _is(value, k) for k in kinds):
        names = " or ".join("None" if k is None else k.__name__ for k in kinds)
        raise _Bad(f"{where} is a {type(value).__name__}, expected {names}")


def _count(where: str, value) -> None:
    _typed(where, value, int)
    if value < 0:
        raise _Bad(f"{where} is {value}, expected 0 or more")


def _tensor(where: str, value, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(value, torch.Tensor):
        raise _Bad(f"{where} is a {type(value).__name__}, expected a {dtype} tensor")
    problem = tensor_problem(where, value)  # the one gate: dense, on the CPU, storage backed
    if problem is not None:
        raise _Bad(problem)
    if value.dtype != dtype or tuple(value.shape) != shape:
        raise _Bad(f"{where} is {value.dtype} {tuple(value.shape)}, expected {dtype} {shape}")


def _weights(where: str, value, path: Path) -> None:
    if not isinstance(value, dict):
        raise _Bad(f"{where} is a {type(value).__name__}, expected a state_dict")
    # NaN weights are not a malformed file (a diverged run writes them); a wrong shape is.
    validate_state_dict(value, f"{path}: {where}", allow_nonfinite=True)


def _optimizer(value, lr: float) -> None:
    opt = _fields("optimizer", value, ("state", "param_groups"))
    groups = opt["param_groups"]
    if not isinstance(groups, list) or len(groups) != 1:
        raise _Bad("optimizer.param_groups is not a list of one group")
    group = _fields("optimizer.param_groups[0]", groups[0], ("lr", "betas", "eps", "params"))
    shapes = list(EXPECTED_SHAPES.values())  # BookCNN's parameters, in order
    if not isinstance(group["params"], list) or group["params"] != list(range(len(shapes))):
        raise _Bad(f"optimizer.param_groups[0].params is not [0, …, {len(shapes) - 1}]")
    # The trainer's Adam: the run's learning rate and KerasAdam's betas and epsilon.
    defaults = {**KerasAdam([torch.zeros(1)]).defaults, "lr": lr}
    _typed("optimizer.param_groups[0].lr", group["lr"], float, int)
    _typed("optimizer.param_groups[0].eps", group["eps"], float)
    betas = group["betas"]
    if not (isinstance(betas, tuple) and len(betas) == 2 and all(_is(b, float) for b in betas)):
        raise _Bad("optimizer.param_groups[0].betas is not a pair of numbers")
    for key in ("lr", "betas", "eps"):
        if group[key] != defaults[key]:
            raise _Bad(f"optimizer.param_groups[0].{key} is {group[key]!r}, expected "
                       f"{defaults[key]!r}")
    state = _fields("optimizer.state", opt["state"], range(len(shapes)))
    for i, shape in enumerate(shapes):
        moments = _fields(f"optimizer.state[{i}]", state[i], ADAM_STATE_KEYS)
        _tensor(f"optimizer.state[{i}].step", moments["step"], (), torch.float32)
        step = float(moments["step"])
        if not (step >= 0 and step.is_integer()):
            raise _Bad(f"optimizer.state[{i}].step is {step}, expected a whole number ≥ 0")
        for key in ("exp_avg", "exp_avg_sq"):
            _tensor(f"optimizer.state[{i}].{key}", moments[key], shape, torch.float32)


def _run(early_stopping, run) -> None:
    es = _fields("early_stopping", early_stopping, [f.name for f in fields(EarlyStopping)])
    for key in ("patience", "wait", "best_epoch", "stopped_epoch"):
        _count(f"early_stopping.{key}", es[key])
    _typed("early_stopping.best", es["best"], float, None)
    state = _fields("run", run, [f.name for f in fields(RunState)])
    _count("run.epoch", state["epoch"])
    _typed("run.stopped", state["stopped"], bool)
    _typed("run.checkpoint_best", state["checkpoint_best"], float, None)
    history = _fields("run.history", state["history"], HISTORY_KEYS)
    for key, values in history.items():
        if not isinstance(values, list):
            raise _Bad(f"run.history.{key} is a {type(values).__name__}, expected a list")
        if len(values) != state["epoch"]:
            raise _Bad(f"run.history.{key} holds {len(values)} values, expected one per epoch "
                       f"run ({state['epoch']})")
        for i, v in enumerate(values):
            _typed(f"run.history.{key}[{i}]", v, float)


def _rng(value) -> None:
    rng = _fields("rng", value, RNG_KEYS)
    for key in ("torch_cpu", "shuffle"):
        _tensor(f"rng.{key}", rng[key], (TORCH_RNG_BYTES,), torch.uint8)
        try:  # on a throwaway generator: torch's own check, nothing global touched
            torch.Generator().set_state(rng[key])
        except (RuntimeError, TypeError, ValueError) as err:
            raise _Bad(f"rng.{key} is not a generator state ({first_line(err)})") from None
    cuda = rng["torch_cuda"]
    if not isinstance(cuda, list):
        raise _Bad(f"rng.torch_cuda is a {type(cuda).__name__}, expected a list")
    for i, t in enumerate(cuda):
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            raise _Bad(f"rng.torch_cuda[{i}] is not a 1-D torch.uint8 tensor")
    if cuda and torch.cuda.is_available():  # only then does set_rng_state apply them
        if len(cuda) > torch.cuda.device_count():
            raise _Bad(f"rng.torch_cuda holds {len(cuda)} states for "
                       f"{torch.cuda.device_count()} GPUs")
        for i, t in enumerate(cuda):
            _tensor(f"rng.torch_cuda[{i}]", t, tuple(torch.cuda.get_rng_state(i).shape),
                    torch.uint8)

    np_state = rng["numpy"]
    if not (isinstance(np_state, list) and len(np_state) == 5):
        raise _Bad("rng.numpy is not numpy's state [name, keys, pos, has_gauss, gauss]")
    name, keys, pos, has_gauss, gauss = np_state
    if not (isinstance(keys, list) and len(keys) == NUMPY_KEYS and all(_is(k, int) for k in keys)):
        raise _Bad(f"rng.numpy keys are not a list of {NUMPY_KEYS} whole numbers")
    # numpy does not check the position: one past the key would read outside it.
    if not (_is(pos, int) and 0 <= pos <= NUMPY_KEYS):
        raise _Bad(f"rng.numpy position is {pos!r}, expected 0 … {NUMPY_KEYS}")
    if not (_is(has_gauss, int) and has_gauss in (0, 1)):
        raise _Bad(f"rng.numpy has_gauss is {has_gauss!r}, expected 0 or 1")
    _typed("rng.numpy gauss", gauss, float)
    try:  # on a throwaway RandomState: numpy's own checks
        state = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
        np.random.RandomState().set_state(state)
    except (TypeError, ValueError, OverflowError) as err:
        raise _Bad(f"rng.numpy is not numpy's state ({first_line(err)})") from None

    py_state = rng["python"]
    if not (isinstance(py_state, list) and len(py_state) == 3):
        raise _Bad("rng.python is not random's state [version, internal, gauss]")
    version, internal, gauss = py_state
    if not (isinstance(internal, list) and len(internal) == PYTHON_STATE
            and all(_is(k, int) for k in internal)):
        raise _Bad(f"rng.python's internal state is not a list of {PYTHON_STATE} whole numbers")
    try:  # on a throwaway Random: Python's own checks
        random.Random().setstate((version, tuple(internal), gauss))
    except (TypeError, ValueError, OverflowError) as err:
        raise _Bad(f"rng.python is not random's state ({first_line(err)})") from None


def validate_last(last, path: Path) -> None:
    """Check every part of a loaded last.pt against what `torch_impl.train` writes — keys,
    types, the model and best weights against BookCNN, Adam's state against the model's
    parameters, early stopping, the run's history, every RNG state — and raise one UserError
    naming the first defect. Nothing is applied here."""
    fmt = last.get("format") if isinstance(last, dict) else None
    if not (_is(fmt, int) and fmt == LAST_FORMAT):
        raise UserError(f"{path}: not a last.pt written by torch_impl.train")
    try:
        _fields("the checkpoint", last, LAST_KEYS)
        if isinstance(last["config"], dict):  # written before torchrun runs: one process
            last["config"].setdefault("world_size", 1)
        config = _fields("config", last["config"], CONFIG_TYPES)
        for key, kinds in CONFIG_TYPES.items():
            _typed(f"config.{key}", config[key], *kinds)
        if config["world_size"] < 1:
            raise _Bad(f"config.world_size is {config['world_size']}, expected 1 or more")
        if config["init"] not in INITS:
            raise _Bad(f"config.init is {config['init']!r}, expected one of {INITS}")
        _weights("model", last["model"], path)
        _weights("best_weights", last["best_weights"], path)
        _optimizer(last["optimizer"], config["lr"])
        _run(last["early_stopping"], last["run"])
        _rng(last["rng"])
    except _Bad as bad:
        raise UserError(f"{path}: {bad}") from None


def check_same_run(last: dict, config: dict, path: Path) -> None:
    """Refuse to resume with other settings than the run was started with, or with another
    number of processes (torchrun's world size)."""
    saved = last["config"]
    if saved["world_size"] != config["world_size"]:
        raise UserError(
            f"{path}: was trained by {saved['world_size']} process(es), not "
            f"{config['world_size']}; resume with the same torchrun world size"
        )
    for key in RESUME_KEYS:
        if saved[key] != config[key]:
            raise UserError(
                f"{path}: was trained with --{key.replace('_', '-')} {saved[key]}, "
                f"not {config[key]}; resume with the same settings"
            )


# --- --resume-from: a checkpoint's weights and optimizer, a new run -----------------------------


def load_training_start(path: Path) -> tuple[dict, dict]:
    """The weights and KerasAdam state a new run starts from (`--resume-from`): a `.pt` laid
    out as last.pt ({"model", "optimizer", …}: what `parity.port --with-optimizer` writes, or a
    last.pt), every part checked as last.pt's is, the learning rate the file's (Keras stores
    it in float32: 0.0010000000474974513); or a Keras file saved with its optimizer, read by
    parity's framework-free readers (no TensorFlow is imported)."""
    from torch_impl.checkpoint import read_checkpoint

    if path.suffix.lower() in (".keras", ".h5"):
        return _from_keras(path)
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or "model" not in obj or "optimizer" not in obj:
        raise UserError(f"{path}: holds no optimizer state (no 'model' and 'optimizer'); "
                        f"write one with python -m parity.port SRC {path.name} --with-optimizer")
    groups = obj["optimizer"].get("param_groups") if isinstance(obj["optimizer"], dict) else None
    lr = groups[0].get("lr") if isinstance(groups, list) and groups and isinstance(
        groups[0], dict) else None
    if not (_is(lr, float) and lr > 0 and math.isfinite(lr)):
        raise UserError(f"{path}: optimizer.param_groups[0].lr is {lr!r}, expected a number > 0")
    try:
        _weights("model", obj["model"], path)
        _optimizer(obj["optimizer"], lr)
    except _Bad as bad:
        raise UserError(f"{path}: {bad}") from None
    return obj["model"], obj["optimizer"]


def _from_keras(path: Path) -> tuple[dict, dict]:
    """A Keras file's weights and Adam state, through parity (its readers import no
    TensorFlow): the one place torch_impl reaches into parity, on demand."""
    from parity.training_files import load_torch_training

    module, optimizer = load_torch_training(path)
    if type(optimizer) is not KerasAdam:
        raise UserError(f"{path}: its optimizer is not Keras's plain Adam (found "
                        f"{type(optimizer).__name__}); torch_impl.train trains with Adam")
    state = validate_state_dict(module.state_dict(), path)
    return state, optimizer.state_dict()
