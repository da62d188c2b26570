"""Checkpoint files by format, behind one dispatch by extension, as Keras's `saving_api` does:
`.keras` and `.weights.h5` (`keras_v3`), legacy `.h5` (`keras_h5_legacy`, TF 2.x's
`save_weights` files too), `.pt` / `.pth` / `.safetensors` (`torch_files`). Each module is the
only reader and writer of its format; nothing in a file is deserialised or run.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.files import atomic_write
from fashion_cnn.hdf5 import open_h5, walk
from fashion_cnn.validate import check_tensors, finite
from parity import book
from parity.formats import keras_h5_legacy, keras_v3
from parity.formats.keras_json import written
from parity.formats.limits import MAX_JSON_BYTES
from parity.ir.keras_config import parse_model
from parity.spec import Spec, check

KERAS_SUFFIX, WEIGHTS_H5_SUFFIX, H5_SUFFIX = ".keras", ".weights.h5", ".h5"
TORCH_SUFFIXES = (".pt", ".pth", ".safetensors")
EXTENSIONS = ".keras, .h5, .weights.h5, .pt, .pth, .safetensors"

# What h5py raises on a damaged or unexpectedly shaped file (found by tests/test_fuzz.py): a
# dataset where a group should be, an attribute of another type, damaged metadata (HDF5's
# "bad symbol table node signature" is a RuntimeError): the file is malformed, whichever way.
_MALFORMED = (KeyError, TypeError, AttributeError, ValueError, OSError, RuntimeError,
              IndexError, OverflowError, NotImplementedError, zlib.error)


def keras_kind(path: str | os.PathLike) -> str | None:
    """'keras', 'weights.h5' or 'h5' from the file name; None for anything else."""
    name = Path(path).name.lower()
    if name.endswith(KERAS_SUFFIX):
        return "keras"
    if name.endswith(WEIGHTS_H5_SUFFIX):
        return "weights.h5"
    if name.endswith(H5_SUFFIX):
        return "h5"
    return None


def framework_of(path: Path) -> str:
    """'keras' or 'torch' from the file name; anything else is refused."""
    if keras_kind(path) is not None:
        return "keras"
    if path.suffix.lower() in TORCH_SUFFIXES:
        return "torch"
    raise UserError(f"{path}: unknown extension {path.suffix or '(none)'!r}; expected {EXTENSIONS}")


def parse(config: object, source: str) -> Spec:
    """A model config → its checked spec (structure, then every layer)."""
    return check(parse_model(config, source), source)


@dataclass
class KerasFile:
    """What a Keras file holds: the model and its weights (Keras layout, by structural name)."""

    spec: Spec
    weights: dict[str, np.ndarray]
    layout: str  # what was read, for the summary: "keras", "legacy-h5", …
    source: str
    where: dict[str, str] = field(default_factory=dict)  # structural name → HDF5 path
    optimizer: list[str] = field(default_factory=list)  # tensors seen beside them, never read


def config_from(path: Path) -> object:
    """`--config`: a `.keras` (its config.json) or a `.json` file."""
    from parity.formats.keras_v3 import config_of, json_of

    source = str(path)
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    if keras_kind(path) == "keras":
        return config_of(path)
    if path.suffix.lower() == ".json":
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"{source}: more than {MAX_JSON_BYTES} bytes")
        return json_of(path.read_bytes(), "the config", source)
    raise UserError(f"{source}: --config takes a .keras or a .json file")


def read_keras(
    path: str | os.PathLike, *, config: Path | None = None, allow_nonfinite: bool = False
) -> KerasFile:
    """Any Keras file: a `.keras` or full-model `.h5` with its own config; a `.weights.h5`, or an
    `.h5` that `save_weights` wrote, with `config` (a `.keras` or `.json`) or as the book's CNN."""
    path = Path(path)
    source = str(path)
    kind = keras_kind(path)
    if kind is None:
        raise UserError(f"{source}: not a Keras checkpoint (.keras, .h5 or .weights.h5)")
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    given = parse(config_from(config), str(config)) if config is not None else None
    try:
        found = _read(path, kind, given)
    except _MALFORMED as err:
        raise UserError(f"{source}: malformed Keras file ({first_line(err)})") from None
    _check_finite(found, allow_nonfinite)
    if found.optimizer:
        found.layout += f", {len(found.optimizer)} optimizer tensors left aside"
    return found


def _read(path: Path, kind: str, given: Spec | None) -> KerasFile:
    source = str(path)
    where: dict[str, str] = {}
    if kind == "keras" and given is None:
        spec, weights, opt = keras_v3.read_keras(path, parse, where)
        return KerasFile(spec, weights, "keras", source, where, opt)
    with open_h5(path, source) as h5:
        tree = walk(h5, source)
        if kind == "h5" and "model_weights" in tree.groups and given is None:
            spec = parse(keras_v3.json_of(keras_h5_legacy.model_config_of(h5, source),
                                          "model_config", source), source)
            weights = keras_h5_legacy.read_weights(tree, "model_weights/", spec, source,
                                                   by_name=True, where=where)
            opt = sorted(n.removeprefix("optimizer_weights/") for n in tree.datasets
                         if n.startswith("optimizer_weights/"))
            return KerasFile(spec, weights, "legacy-h5", source, where, opt)
        if given is not None:
            return _weights_only(h5, tree, given, source, where, "")
        try:  # no config in the file, none given: the book's CNN
            return _weights_only(h5, tree, book.spec(), source, where, " (the book's CNN)")
        except UserError as err:
            raise UserError(f"{err} (a weights-only file holds no config and is read as the "
                            f"book's CNN: for another model give --config model.keras or "
                            f".json)") from None


def _weights_only(h5, tree, spec: Spec, source: str, where: dict, named: str) -> KerasFile:
    """A file of weights without a config (`save_weights`), read as `spec`."""
    if "layers" in tree.groups:  # Keras 3 save_weights, whatever the suffix
        weights, opt = keras_v3.read_weights(h5, spec, source, where)
        return KerasFile(spec, weights, f"keras3-weights.h5{named}", source, where, opt)
    if "layer_names" in h5.attrs or "layer_names0" in h5.attrs:  # TF 2.x save_weights
        weights = keras_h5_legacy.read_weights(tree, "", spec, source, by_name=False,
                                               where=where)
        return KerasFile(spec, weights, f"legacy-weights-h5{named}", source, where)
    raise UserError(f"{source}: no Keras weights found (neither model_weights, layer_names nor "
                    f"layers)")


def _check_finite(found: KerasFile, allow_nonfinite: bool) -> None:
    """Every NaN/Inf value refused (unless allowed), each tensor named where the file holds it;
    every weight float32 (the readers convert big-endian float32)."""

    def label(name: str) -> str:
        return f"{found.where[name]} ({name})" if name in found.where else name

    check_tensors(
        found.weights, {n: a.shape for n, a in found.weights.items()}, found.source,
        shape_of=np.shape, label=label,
        checks=[finite(allow_nonfinite, label, " (use --allow-nonfinite to port them)")],
    )


_OPTIMIZER_FILES = ("--with-optimizer reads the optimizer of a .keras or a full-model .h5 "
                    "file (model.save after compile)")


def read_keras_optimizer(
    path: str | os.PathLike, variables: list[tuple[str, tuple[int, ...], str]]
) -> list[np.ndarray] | None:
    """A `.keras` or full-model `.h5` file's optimizer variables (each (label, shape, dtype) of
    `variables`, in order, through the weights' gate: `keras_v3.read_optimizer`,
    `keras_h5_legacy.read_optimizer`); None when the file holds no optimizer state (saved
    uncompiled, or without its optimizer)."""
    path = Path(path)
    source = str(path)
    kind = keras_kind(path)
    if kind not in ("keras", "h5"):
        raise UserError(f"{source}: {_OPTIMIZER_FILES}")
    try:
        if kind == "keras":
            return keras_v3.read_optimizer(path, variables)
        with open_h5(path, source) as h5:
            return keras_h5_legacy.read_optimizer(walk(h5, source), source, variables)
    except _MALFORMED as err:
        raise UserError(f"{source}: malformed Keras file ({first_line(err)})") from None


def keras_compile_config(path: str | os.PathLike) -> dict | None:
    """A `.keras` file's compile_config, or a full-model `.h5`'s training_config in that form
    (its optimizer_config as "optimizer"), as file text: every field is checked by its user;
    None when it has none (a model saved uncompiled)."""
    path = Path(path)
    source = str(path)
    kind = keras_kind(path)
    if kind == "h5":
        try:
            with open_h5(path, source) as h5:
                found = keras_h5_legacy.training_config_of(h5, source)
        except _MALFORMED as err:
            raise UserError(f"{source}: malformed Keras file ({first_line(err)})") from None
        if found is None:
            return None
        return {**{k: v for k, v in found.items() if k != "optimizer_config"},
                "optimizer": found["optimizer_config"]}
    if kind != "keras":
        raise UserError(f"{source}: {_OPTIMIZER_FILES}")
    config = keras_v3.config_of(path)
    found = config.get("compile_config") if isinstance(config, Mapping) else None
    return dict(found) if isinstance(found, Mapping) and found else None


def write_keras(
    dst: str | os.PathLike, spec: Spec, weights: Mapping[str, np.ndarray], *, force: bool = False,
    optimizer: tuple[dict, str, list[np.ndarray]] | None = None,
) -> Path:
    """Write a model and its Keras-layout weights (by structural name) as `.keras`, legacy `.h5`
    or `.weights.h5`, in the layout Keras 3.15.1 writes, atomically. Each tensor is written
    straight from `weights` (a Mapping that may compute it on access): no second copy of the
    model is made in memory. `optimizer` (a `.keras` only): the compile_config, the optimizer's
    name and its variables' values in Keras's order, which `keras.models.load_model` restores."""
    dst = Path(dst)
    kind = keras_kind(dst)
    if kind is None:
        raise UserError(f"{dst}: expected a .keras, .h5 or .weights.h5 destination")
    if optimizer is not None and kind != "keras":
        raise UserError(f"{dst}: --with-optimizer writes a .keras file")
    out = written(spec, str(dst))
    if optimizer is not None:
        out.config["compile_config"] = optimizer[0]
    check_tensors(weights, dict(spec.shapes()), str(dst), shape_of=np.shape, what="cannot write: ")
    source_of = {new: old for old, new in out.keys.items()}
    dtypes = {key: var.dtype for key, var, _ in spec.variables()}

    def tensor(key: str) -> np.ndarray:  # float32, or int64 for a counter
        return np.array(weights[source_of[key]], dtypes[source_of[key]], order="C", copy=None)

    if kind == "h5":
        problem = keras_h5_legacy.names_problem(out.spec)
        if problem:
            raise UserError(f"{dst}: {problem}")
    write = {
        "keras": lambda tmp: keras_v3.write_keras(
            tmp, out.config, out.spec, tensor, None if optimizer is None else optimizer[1:]),
        "weights.h5": lambda tmp: keras_v3.write_weights_h5(tmp, out.spec, tensor),
        "h5": lambda tmp: keras_h5_legacy.write_legacy(tmp, out.config, out.spec, tensor),
    }[kind]
    return atomic_write(dst, write, force=force)


__all__ = ["EXTENSIONS", "KerasFile", "config_from", "framework_of", "keras_compile_config",
           "keras_kind", "parse", "read_keras", "read_keras_optimizer", "write_keras"]
