"""Reading Keras checkpoint files of the book's CNN without TensorFlow or Keras.

Three layouts are understood:

- `.keras` (Keras 3): a zip of `metadata.json`, `config.json` and `model.weights.h5`, whose weights
  sit at *positional* paths `layers/<class in snake case>[_k]/vars/<i>` — `layers/conv2d_1` is the
  second Conv2D whatever its `layer.name` (`conv2d_6` in a second session). An `optimizer/vars/N`
  group holds Adam's moments with exactly the weights' shapes; it is never read.
- `.weights.h5` (Keras 3 `save_weights`): the same h5 layout without a config; it is mapped by the
  known architecture.
- legacy `.h5`: the full model that TF 2.x `model.save('best-cnn-model.h5')` writes (and Keras 3
  still writes): a `model_config` attribute and `model_weights/<layer name>/…` whose datasets are
  listed, in order, by each group's `weight_names` attribute (`conv2d/kernel:0` in TF 2.x,
  `sequential/conv2d/kernel` in Keras 3); `optimizer_weights` beside it is never read. A TF 2.x
  `save_weights('x.h5')` file (root `layer_names`, no config) is read the same way.

`read_keras` returns the weights by *structural* name (`conv2d/kernel`, `dense_1/bias`: the rows
of `parity.mapping.TABLE`) after checking everything — the architecture (`parity.keras_spec`),
the HDF5 tree (`fashion_cnn.hdf5`: no links, no outside storage, bounded), each weight's shape
against the config before it is read, missing and extra tensors, dtype, NaN/Inf — and raises
UserError naming the file and the defect.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashion_cnn import jsonfile
from fashion_cnn.errors import UserError, first_line
from fashion_cnn.hdf5 import H5Tree, attr_list, open_h5, read_array, read_attr, walk
from fashion_cnn.validate import check_tensors, finite
from parity.keras_spec import (
    BOOK_LAYERS,
    CONFIG_MEMBER,
    KERAS_SHAPES,
    MAX_JSON_BYTES,
    MAX_WEIGHTS_BYTES,
    METADATA_MEMBER,
    POSITIONAL_PATHS,
    WEIGHTS_MEMBER,
    check_config,
    keras_kind,
)


@dataclass
class KerasCheckpoint:
    """What a Keras file holds for the book's CNN: weights by structural name, and how read."""

    weights: dict[str, np.ndarray]
    layout: str  # "keras", "keras3-weights.h5", "legacy-h5", "legacy-weights-h5"
    layer_names: list[str] | None = None  # the config's names (conv2d_6, …), when there is one
    skipped: list[str] = field(default_factory=list)  # optimizer tensors seen and not read


def _check_weights(
    weights: Mapping[str, np.ndarray], where: Mapping[str, str], source: str, allow_nonfinite: bool
) -> dict[str, np.ndarray]:
    """Every weight against the architecture the config described: shape, dtype, NaN/Inf."""

    def label(name: str) -> str:
        return f"{where.get(name, name)} ({name})"

    def float32(name: str, array: np.ndarray) -> str | None:
        ok = array.dtype == np.float32
        return None if ok else f"{label(name)} has dtype {array.dtype}, expected float32"

    check_tensors(
        weights, KERAS_SHAPES, source, shape_of=np.shape, label=label,
        checks=[float32, finite(allow_nonfinite, label, " (use --allow-nonfinite to port them)")],
    )
    return {name: weights[name] for name in KERAS_SHAPES}


def _read_weight(tree: H5Tree, h5path: str, name: str, source: str) -> np.ndarray:
    """The weight `name` (conv2d/kernel, …) at `h5path`, checked against the config's shape."""
    return read_array(tree, h5path, KERAS_SHAPES[name], f"{h5path} ({name})", source)


def _read_keras3_h5(tree: H5Tree, source: str) -> tuple[dict, dict, list[str]]:
    """Keras 3 layout: `layers/<positional path>/vars/<i>`; `optimizer/…` skipped, never read."""
    if "layers" not in tree.groups:
        raise UserError(f"{source}: no 'layers' group: not a Keras 3 weights file")
    weights, where = {}, {}
    expected = set()
    for spec, path in zip(BOOK_LAYERS, POSITIONAL_PATHS, strict=True):
        if spec.weights is None:
            continue
        for i, var in enumerate(("kernel", "bias")):
            h5path = f"layers/{path}/vars/{i}"
            name = f"{spec.weights}/{var}"
            expected.add(h5path)
            weights[name] = _read_weight(tree, h5path, name, source)
            where[name] = h5path
    skipped = []
    for name in sorted(tree.datasets):
        if name.startswith("optimizer/"):
            skipped.append(name)
        elif name not in expected:
            raise UserError(f"{source}: unexpected tensor {name}: not a weight of the book's CNN")
    return weights, where, skipped


def _read_legacy_h5(
    tree: H5Tree, layer_names: list[str] | None, source: str, prefix: str
) -> tuple[dict, dict]:
    """Legacy layout: per layer, the datasets listed by `weight_names`, kernel then bias.

    With a config (`layer_names` given) each weighted layer is found under its config name; without
    one, the layers that hold weights are taken in the file's order, as Keras's loader does.
    """
    group = tree.groups[prefix.rstrip("/")]
    stored = attr_list(group, "layer_names", prefix or "/", source)
    if stored is None:
        raise UserError(f"{source}: {prefix or '/'} has no layer_names attribute")
    holding = []  # (layer name, [weight names]) for the layers that hold weights, in file order
    for name in stored:
        layer_group = tree.groups.get(f"{prefix}{name}")
        if layer_group is None:
            raise UserError(f"{source}: layer {name} is listed but has no group in the file")
        names = attr_list(layer_group, "weight_names", f"{prefix}{name}", source) or []
        if names:
            holding.append((name, names))
    specs = [spec for spec in BOOK_LAYERS if spec.weights]
    if layer_names is not None:
        wanted = [n for spec, n in zip(BOOK_LAYERS, layer_names, strict=True) if spec.weights]
        found = dict(holding)
        for name in wanted:
            if name not in found:
                raise UserError(f"{source}: missing tensors of layer {name} (no weights stored)")
        extra = [n for n, _ in holding if n not in wanted]
        if extra:
            raise UserError(
                f"{source}: unexpected tensors of layer {extra[0]}: "
                f"not a weighted layer of the book's CNN"
            )
        holding = [(n, found[n]) for n in wanted]
    elif len(holding) != len(specs):
        raise UserError(
            f"{source}: {len(holding)} layers hold weights; the book's CNN has {len(specs)}"
        )
    weights, where = {}, {}
    for spec, (layer, names) in zip(specs, holding, strict=True):
        if len(names) != 2:
            kind = "missing" if len(names) < 2 else "extra"
            raise UserError(
                f"{source}: layer {layer} stores {len(names)} tensors ({kind}); "
                f"a {spec.class_name} has a kernel and a bias"
            )
        for var, wname in zip(("kernel", "bias"), names, strict=True):
            h5path = f"{prefix}{layer}/{wname}"
            weights[f"{spec.weights}/{var}"] = _read_weight(
                tree, h5path, f"{spec.weights}/{var}", source
            )
            where[f"{spec.weights}/{var}"] = h5path
    return weights, where


def _json(raw: bytes | str, what: str, source: str) -> object:
    return jsonfile.loads(raw, what, source, max_bytes=MAX_JSON_BYTES)


def _read_keras_zip(path: Path, source: str) -> tuple[KerasCheckpoint, dict]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: info for info in zf.infolist()}
            for member in (METADATA_MEMBER, CONFIG_MEMBER, WEIGHTS_MEMBER):
                if member not in members:
                    raise UserError(f"{source}: the .keras archive has no {member}")
            for member, limit in (
                (METADATA_MEMBER, MAX_JSON_BYTES),
                (CONFIG_MEMBER, MAX_JSON_BYTES),
                (WEIGHTS_MEMBER, MAX_WEIGHTS_BYTES),
            ):
                if members[member].file_size > limit:
                    raise UserError(
                        f"{source}: {member} is {members[member].file_size} bytes, "
                        f"more than {limit} allowed"
                    )
            metadata = zf.read(METADATA_MEMBER)
            config = zf.read(CONFIG_MEMBER)
            weights_bytes = zf.read(WEIGHTS_MEMBER)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise UserError(f"{source}: not a valid .keras file (not a readable zip: {err})") from None
    if not isinstance(_json(metadata, METADATA_MEMBER, source), Mapping):
        raise UserError(f"{source}: {METADATA_MEMBER} is not a JSON object")
    names = check_config(_json(config, CONFIG_MEMBER, source), source)
    # Opened from memory: nothing in it can name a path that resolves outside the archive.
    with open_h5(io.BytesIO(weights_bytes), f"{source}: {WEIGHTS_MEMBER}") as h5:
        weights, where, skipped = _read_keras3_h5(walk(h5, source), source)
    return KerasCheckpoint(weights, "keras", names, skipped), where


def _read_h5_file(path: Path, source: str) -> tuple[KerasCheckpoint, dict]:
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise UserError(f"{source}: {size} bytes, more than {MAX_WEIGHTS_BYTES} allowed")
    with open_h5(path, source) as h5:
        tree = walk(h5, source)
        if "model_weights" in tree.groups:  # legacy full model: config + weights (+ optimizer)
            if "model_config" not in h5.attrs:
                raise UserError(f"{source}: legacy .h5 model without a model_config attribute")
            raw = read_attr(h5, "model_config", "/@model_config", source)
            names = check_config(_json(raw, "model_config", source), source)
            weights, where = _read_legacy_h5(tree, names, source, "model_weights/")
            opt = "optimizer_weights/"
            skipped = sorted(p.removeprefix(opt) for p in tree.datasets if p.startswith(opt))
            return KerasCheckpoint(weights, "legacy-h5", names, skipped), where
        if "layer_names" in h5.attrs or "layer_names0" in h5.attrs:  # TF 2.x save_weights('.h5')
            weights, where = _read_legacy_h5(tree, None, source, "")
            return KerasCheckpoint(weights, "legacy-weights-h5"), where
        if "layers" in tree.groups:  # Keras 3 save_weights, whatever the suffix
            weights, where, skipped = _read_keras3_h5(tree, source)
            return KerasCheckpoint(weights, "keras3-weights.h5", None, skipped), where
    raise UserError(
        f"{source}: no Keras weights found (neither model_weights, layer_names nor layers)"
    )


# What h5py raises on a damaged or unexpectedly shaped file (found by tests/test_fuzz.py).
_MALFORMED = (
    KeyError,
    TypeError,
    AttributeError,
    ValueError,
    OSError,
    RuntimeError,
    IndexError,
    OverflowError,
    NotImplementedError,
)


def read_keras(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> KerasCheckpoint:
    """Read and validate a `.keras`, `.h5` or `.weights.h5` file of the book's CNN.

    Returns the weights by structural name (float32 numpy arrays in Keras layout).
    """
    path = Path(path)
    source = str(path)
    kind = keras_kind(path)
    if kind is None:
        raise UserError(
            f"{source}: unknown Keras extension {path.suffix or '(none)'!r}; "
            f"expected .keras, .h5 or .weights.h5"
        )
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    try:
        ckpt, where = (_read_keras_zip if kind == "keras" else _read_h5_file)(path, source)
    except (*_MALFORMED, zlib.error) as err:
        # h5py's answers to an HDF5 tree of unexpected shape (a dataset where a group should be,
        # an attribute of another type) or to damaged metadata (HDF5's "bad symbol table node
        # signature" is a RuntimeError): the file is malformed, whichever way.
        first = first_line(err)
        raise UserError(f"{source}: malformed Keras file ({first})") from None
    ckpt.weights = _check_weights(ckpt.weights, where, source, allow_nonfinite)
    return ckpt
