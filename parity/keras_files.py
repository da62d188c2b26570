"""Keras checkpoint files of the book's CNN, read and written without TensorFlow or Keras.

Only h5py, zipfile and json are used, so nothing in a file is ever run: a config is read as JSON
and compared field by field with the book's architecture; Keras's own deserialization (which can
rebuild a Lambda's bytecode) is never called. Three layouts are understood:

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

Every reader returns the weights by *structural* name (`conv2d/kernel`, `dense_1/bias`: the rows
of `parity.mapping.TABLE`) after checking everything — the architecture, each weight against its
own config, missing and extra tensors, dtype, NaN/Inf — and raises UserError naming the file and
the first defect. The writers write the layout Keras 3.15.1 writes (same members, groups,
attributes and config), so that plain `keras.models.load_model` opens a written `.keras` or `.h5`.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

from fashion_cnn import jsonfile
from fashion_cnn.errors import UserError, first_line
from fashion_cnn.files import atomic_write
from parity.mapping import TABLE

# The Keras version whose file layout the writers mirror (keras/src/saving/saving_lib.py and
# keras/src/legacy/saving/legacy_h5_format.py of that release).
KERAS_FORMAT_VERSION = "3.15.1"

KERAS_SUFFIX = ".keras"
WEIGHTS_H5_SUFFIX = ".weights.h5"
H5_SUFFIX = ".h5"

# A `.keras` zip's members, and a bound on what is read of each (the book's weights take 1.3 MB,
# with Adam's two moments 4 MB): a zip bomb or a foreign archive is refused before it is inflated.
CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER = "config.json", "metadata.json", "model.weights.h5"
MAX_JSON_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 256 << 20


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


# --- the book's architecture, as a Keras config describes it -----------------------------------

# Keras's defaults for the fields a config may leave out (older files omit `groups`, say).
_DEFAULTS = {
    "Conv2D": {
        "strides": (1, 1),
        "padding": "valid",
        "data_format": "channels_last",
        "dilation_rate": (1, 1),
        "groups": 1,
        "activation": "linear",
        "use_bias": True,
    },
    "MaxPooling2D": {"strides": None, "padding": "valid", "data_format": "channels_last"},
    "Flatten": {"data_format": "channels_last"},
    "Dense": {"activation": "linear", "use_bias": True},
    "Dropout": {"noise_shape": None},
}


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the book's Sequential: class, the config fields that decide its maths, and
    (for layers with weights) the structural name of its weights in `parity.mapping.TABLE`."""

    class_name: str
    fields: dict = field(default_factory=dict)
    weights: str | None = None  # structural prefix: "conv2d", "dense_1", …


_CONV = {
    "kernel_size": (3, 3),
    "strides": (1, 1),
    "padding": "same",
    "data_format": "channels_last",
    "dilation_rate": (1, 1),
    "groups": 1,
    "activation": "relu",
    "use_bias": True,
}
_POOL = {"pool_size": (2, 2), "strides": (2, 2), "padding": "valid", "data_format": "channels_last"}

BOOK_LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("Conv2D", {"filters": 32, **_CONV}, "conv2d"),
    LayerSpec("MaxPooling2D", dict(_POOL)),
    LayerSpec("Conv2D", {"filters": 64, **_CONV}, "conv2d_1"),
    LayerSpec("MaxPooling2D", dict(_POOL)),
    LayerSpec("Flatten", {"data_format": "channels_last"}),
    LayerSpec("Dense", {"units": 100, "activation": "relu", "use_bias": True}, "dense"),
    LayerSpec("Dropout", {"rate": 0.4, "noise_shape": None}),
    LayerSpec("Dense", {"units": 10, "activation": "softmax", "use_bias": True}, "dense_1"),
)
INPUT_SHAPE = (None, 28, 28, 1)  # NHWC, batch free
KNOWN_CLASSES = {"InputLayer"} | {spec.class_name for spec in BOOK_LAYERS}

# Keras 3 stores a Sequential's layers at positional paths named after their class in snake case
# (keras.src.utils.naming.to_snake_case), numbered per class: conv2d, conv2d_1, max_pooling2d, …
_SNAKE = {
    "Conv2D": "conv2d",
    "MaxPooling2D": "max_pooling2d",
    "Flatten": "flatten",
    "Dense": "dense",
    "Dropout": "dropout",
}


def _positional_paths() -> list[str]:
    counts: dict[str, int] = {}
    paths = []
    for spec in BOOK_LAYERS:
        base = _SNAKE[spec.class_name]
        k = counts.get(base, 0)
        counts[base] = k + 1
        paths.append(base if k == 0 else f"{base}_{k}")
    return paths


POSITIONAL_PATHS = _positional_paths()  # layers/<path>/vars/<i>, in BOOK_LAYERS order
# Structural weight name → shape, from the one mapping table.
KERAS_SHAPES = {row.keras: row.keras_shape for row in TABLE}


def _norm(value):
    """JSON lists → tuples, so [3, 3] and (3, 3) compare equal; a bare int kernel size stays."""
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    return value


def _dtype_name(dtype) -> str | None:
    """A layer's dtype: "float32", or Keras 3's {"class_name": "DTypePolicy", "config": {…}}."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, Mapping):
        cfg = dtype.get("config")
        if isinstance(cfg, Mapping):
            return cfg.get("name")
    return repr(dtype)


def _field(class_name: str, cfg: Mapping, name: str):
    value = _norm(cfg.get(name, _DEFAULTS.get(class_name, {}).get(name)))
    if name in ("kernel_size", "strides", "pool_size", "dilation_rate") and isinstance(value, int):
        value = (value, value)
    if class_name == "MaxPooling2D" and name == "strides" and value is None:
        value = _norm(cfg.get("pool_size"))  # Keras: strides default to the pool size
    if name == "data_format" and value is None:
        value = "channels_last"
    return value


def _cfg(layer: Mapping) -> Mapping:
    """A layer's `config`, or {} where a malformed file has something else there."""
    cfg = layer.get("config")
    return cfg if isinstance(cfg, Mapping) else {}


def _input_shapes(model_cfg: Mapping, layers: list) -> list[tuple[str, tuple]]:
    """Every input shape the config states, with where it says so."""
    found = []
    if "build_input_shape" in model_cfg and model_cfg["build_input_shape"] is not None:
        found.append(("build_input_shape", _norm(model_cfg["build_input_shape"])))
    for layer in layers:
        cfg = _cfg(layer)
        for key in ("batch_shape", "batch_input_shape"):
            if cfg.get(key) is not None:
                found.append((f"{cfg.get('name', layer.get('class_name'))}.{key}", _norm(cfg[key])))
    return found


def check_config(config: object, source: str) -> list[str]:
    """Check that a model config is the book's CNN; return its layer names in BOOK_LAYERS order.

    Refuses any class outside the handful this architecture uses (a Lambda, a custom layer) before
    anything else, then names the first layer and field that differ from the book's model.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping):
        raise UserError(f"{source}: the model config is not a Keras model config")
    layers = config["config"].get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, Mapping) for x in layers):
        raise UserError(f"{source}: the model config has no list of layers")
    # Layers are numbered as Keras's `model.layers` numbers them: the InputLayer not counted.
    body = [x for x in layers if x.get("class_name") != "InputLayer"]
    index = {id(x): f"layer {i}" for i, x in enumerate(body)}
    for layer in layers:
        cls = layer.get("class_name")
        cfg = _cfg(layer)
        custom = layer.get("registered_name") not in (None, cls) or layer.get("module") not in (
            None,
            "keras.layers",
        )
        if not isinstance(cls, str) or cls not in KNOWN_CLASSES or custom:
            what = f"{layer.get('module')}.{cls}" if custom else cls
            raise UserError(
                f"{source}: {index.get(id(layer), 'the input layer')} ({cfg.get('name', '?')}) "
                f"is a {what}, not a layer of the book's CNN; refused without running it"
            )
    if config.get("class_name") != "Sequential":
        raise UserError(
            f"{source}: the model is a {config.get('class_name')}, not the book's Sequential"
        )
    for where, shape in _input_shapes(config["config"], layers):
        if shape != INPUT_SHAPE:
            raise UserError(
                f"{source}: input shape {where} is {shape}, the book's CNN takes {INPUT_SHAPE}"
            )
    names = []
    for i, spec in enumerate(BOOK_LAYERS):
        if i >= len(body):
            raise UserError(
                f"{source}: the model ends after {len(body)} layers; the book's CNN "
                f"has {len(BOOK_LAYERS)}, next a {spec.class_name}"
            )
        layer = body[i]
        cfg = _cfg(layer)
        name = cfg.get("name", f"#{i}")
        if layer.get("class_name") != spec.class_name:
            raise UserError(
                f"{source}: layer {i} ({name}) is a {layer.get('class_name')}; "
                f"the book's CNN has a {spec.class_name} there"
            )
        for key, want in spec.fields.items():
            got = _field(spec.class_name, cfg, key)
            if got != want:
                raise UserError(
                    f"{source}: layer {i} ({name}, {spec.class_name}) has "
                    f"{key}={got!r}; the book's CNN has {want!r}"
                )
        dtype = _dtype_name(cfg.get("dtype"))
        if dtype not in (None, "float32"):
            raise UserError(
                f"{source}: layer {i} ({name}) computes in {dtype}; the book's CNN is float32"
            )
        names.append(name)
    if len(body) > len(BOOK_LAYERS):
        extra = body[len(BOOK_LAYERS)]
        raise UserError(
            f"{source}: layer {len(BOOK_LAYERS)} "
            f"({_cfg(extra).get('name', '?')}, "
            f"{extra.get('class_name')}) is one more than the book's CNN has"
        )
    return names


# --- checking the weights that were found ------------------------------------------------------


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
    """Shapes against the architecture the config described, then dtype and finiteness."""
    for name, shape in KERAS_SHAPES.items():
        array = weights[name]
        if array.shape != shape:
            raise UserError(
                f"{source}: {where[name]} ({name}) has shape {array.shape}, but the "
                f"model's config implies {shape}"
            )
    for name in KERAS_SHAPES:
        array = weights[name]
        if array.dtype != np.float32:
            raise UserError(
                f"{source}: {where[name]} ({name}) has dtype {array.dtype}, expected float32"
            )
        if not allow_nonfinite and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise UserError(
                f"{source}: {where[name]} ({name}) holds {bad} NaN/Inf values "
                f"(use --allow-nonfinite to port them anyway)"
            )
    return {name: weights[name] for name in KERAS_SHAPES}


# --- reading HDF5 that trusts nothing ----------------------------------------------------------
#
# HDF5 can make a file read other files: an external link names an object in another file (a
# FIFO there blocks forever), "external raw storage" takes a dataset's bytes from any local file
# (/proc/self/environ), a virtual dataset maps other files' datasets. Soft links can loop, hard
# links can make a group its own child, a filter pipeline can load a plugin, a deflate chunk can
# inflate without bound inside HDF5, and a declared shape or chunk count can ask for terabytes.
# Keras writes none of it (hard links, contiguous float32 datasets), so the whole tree is walked
# first without following any link, every dataset's storage is checked, and a weight is read only
# after its shape and dtype match the config, into an array allocated here.

MAX_H5_OBJECTS = 10_000  # groups and datasets in one file (the book's with Adam: 46)
MAX_ATTR_ITEMS = 10_000  # strings in a name-list attribute (the book's: 8)
MAX_ATTR_BYTES = MAX_JSON_BYTES  # bytes of one attribute (the legacy model_config: 5 KB)
_LAYOUTS = {h5py.h5d.COMPACT: "compact", h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "c"}


def _chunk_bound(elements: int) -> int:
    """The most chunks a dataset of `elements` values may be split into."""
    return elements // 1024 + 64


@dataclass
class _H5Tree:
    """Every group and dataset of a checked file by path ("" is the root, no leading slash)."""

    groups: dict[str, h5py.Group]
    datasets: dict[str, h5py.Dataset]


def _check_storage(dataset: h5py.Dataset, path: str, source: str) -> None:
    """Refuse storage that reads outside the file, runs a filter other than deflate, or is
    split into more chunks than its size warrants — from the metadata, before any data."""
    plist = dataset.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise UserError(
            f"{source}: {path} is a virtual dataset (its data lives in other files); refused"
        )
    if layout not in _LAYOUTS:
        raise UserError(f"{source}: {path} has an unknown storage layout ({layout}); refused")
    if plist.get_external_count():
        name = plist.get_external(0)[0].decode("utf8", "replace")
        raise UserError(
            f"{source}: {path} has external raw storage (its bytes come from {name!r}); "
            f"refused, no file outside the checkpoint is read"
        )
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if filters and (len(filters) > 1 or filters[0][0] != h5py.h5z.FILTER_DEFLATE):
        names = ", ".join(f[3].decode("utf8", "replace") or f"#{f[0]}" for f in filters)
        raise UserError(
            f"{source}: {path} is stored with the filter(s) {names}; only uncompressed or "
            f"deflate (gzip) data is read"
        )
    if layout == h5py.h5d.CHUNKED:
        shape, chunks = dataset.shape, plist.get_chunk()
        if len(chunks) != len(shape) or any(
            c > max(n, 1) for c, n in zip(chunks, shape, strict=True)
        ):
            raise UserError(
                f"{source}: {path} has chunks {chunks} larger than its shape {shape}; refused"
            )
        count = math.prod(-(-n // c) for n, c in zip(shape, chunks, strict=True))
        elements = math.prod(shape)
        if count > _chunk_bound(elements):
            raise UserError(
                f"{source}: {path} is split into {count} chunks for {elements} values, more "
                f"than {_chunk_bound(elements)} allowed"
            )


def _walk(h5: h5py.File, source: str) -> _H5Tree:
    """Every object of the file, reached through hard links only, each once; any soft or
    external link, any object reached twice, anything but a group or a dataset is refused.
    Links are looked at (`getlink=True`), never followed; no dataset is read."""
    tree = _H5Tree({"": h5}, {})
    stack = [("", h5)]
    seen = 0
    while stack:
        prefix, group = stack.pop()
        for name in group:  # the link names: nothing is resolved
            path = f"{prefix}{name}"
            seen += 1
            if seen > MAX_H5_OBJECTS:
                raise UserError(f"{source}: more than {MAX_H5_OBJECTS} HDF5 objects; refused")
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise UserError(
                    f"{source}: {path} is an external link (to {link.path!r} in "
                    f"{link.filename!r}); refused, no file outside the checkpoint is read"
                )
            if isinstance(link, h5py.SoftLink):
                raise UserError(
                    f"{source}: {path} is a soft link (to {link.path!r}); refused: Keras "
                    f"never writes links"
                )
            if not isinstance(link, h5py.HardLink):
                raise UserError(f"{source}: {path} is a link of unknown kind; refused")
            obj = group[name]
            refs = h5py.h5o.get_info(obj.id).rc
            if refs != 1:
                raise UserError(
                    f"{source}: {path} is one object under {refs} names (hard links); refused: "
                    f"Keras never writes them"
                )
            if isinstance(obj, h5py.Group):
                tree.groups[path] = obj
                stack.append((f"{path}/", obj))
            elif isinstance(obj, h5py.Dataset):
                _check_storage(obj, path, source)
                tree.datasets[path] = obj
            else:
                raise UserError(f"{source}: {path} is a {type(obj).__name__}; refused")
    return tree


def _inflate_chunks(dataset: h5py.Dataset, out: np.ndarray, path: str, source: str) -> None:
    """Read a deflate-compressed dataset chunk by chunk, inflating each here with a cap of its
    declared size (HDF5's own deflate filter inflates without bound)."""
    chunks = dataset.chunks
    file_dtype = dataset.dtype
    chunk_bytes = math.prod(chunks) * file_dtype.itemsize
    stored = dataset.id.get_num_chunks()
    if stored > _chunk_bound(out.size):
        raise UserError(f"{source}: {path} stores {stored} chunks; refused")
    out[...] = dataset.fillvalue  # what HDF5 returns for chunks never written
    for i in range(stored):
        info = dataset.id.get_chunk_info(i)
        offset = info.chunk_offset
        if len(offset) != out.ndim or any(
            o % c or o >= n for o, c, n in zip(offset, chunks, out.shape, strict=True)
        ):
            raise UserError(f"{source}: {path} has a chunk at {offset}, off its grid; refused")
        if info.size > 2 * chunk_bytes + 1024:  # deflate never grows data that much
            raise UserError(f"{source}: {path} has a chunk of {info.size} bytes; refused")
        mask, raw = dataset.id.read_direct_chunk(offset)
        if mask & 1:  # the filter was skipped for this chunk: stored as is
            data = raw
        else:
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(raw, chunk_bytes)
                if len(data) == chunk_bytes and not inflater.eof:
                    data += inflater.decompress(inflater.unconsumed_tail, 1)
            except zlib.error as err:
                raise UserError(f"{source}: {path} has a corrupt deflate chunk ({err})") from None
            if not inflater.eof:
                data = b""  # more than declared, or cut short: the size check below refuses
        if len(data) != chunk_bytes:
            raise UserError(
                f"{source}: {path} has a chunk that does not inflate to its {chunk_bytes} bytes"
            )
        block = np.frombuffer(data, dtype=file_dtype).reshape(chunks)
        region = tuple(
            slice(o, min(o + c, n)) for o, c, n in zip(offset, chunks, out.shape, strict=True)
        )
        out[region] = block[tuple(slice(0, r.stop - r.start) for r in region)]


def _read_weight(tree: _H5Tree, h5path: str, name: str, source: str) -> np.ndarray:
    """The weight `name` (conv2d/kernel, …) stored at `h5path`: its declared shape and dtype
    are checked against the config first, then it is read into a preallocated native float32
    array (big-endian float32 is valid data and is converted)."""
    if h5path not in tree.datasets:
        if h5path in tree.groups:
            raise UserError(f"{source}: {h5path} is not a dataset")
        raise UserError(f"{source}: missing tensor {h5path} ({name})")
    dataset = tree.datasets[h5path]
    shape = KERAS_SHAPES[name]
    if dataset.shape != shape:
        raise UserError(
            f"{source}: {h5path} ({name}) has shape {dataset.shape}, but the "
            f"model's config implies {shape}"
        )
    if dataset.dtype.kind != "f" or dataset.dtype.itemsize != 4:
        raise UserError(f"{source}: {h5path} ({name}) has dtype {dataset.dtype}, expected float32")
    out = np.empty(shape, np.float32)
    if dataset.compression is not None:  # deflate: the only filter _check_storage lets by
        _inflate_chunks(dataset, out, h5path, source)
    else:
        dataset.read_direct(out)
    return out


def _read_keras3_h5(tree: _H5Tree, source: str) -> tuple[dict, dict, list[str]]:
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


def _read_attr(group: h5py.Group, name: str, where: str, source: str) -> object:
    """A string attribute (fixed or variable length, scalar or 1-D), its size checked from the
    metadata before it is read (and, for variable-length strings, after)."""
    attr = h5py.h5a.open(group.id, name.encode("utf8"))
    count = attr.get_space().get_simple_extent_npoints()
    if count == 0:
        return []  # Keras writes an empty name list as an empty float64 array
    if count > MAX_ATTR_ITEMS:
        raise UserError(f"{source}: attribute {where} holds {count} items; refused")
    dtype = attr.dtype
    if h5py.check_string_dtype(dtype) is None:
        raise UserError(f"{source}: attribute {where} has type {dtype}, not strings")
    if dtype.kind == "S" and dtype.itemsize * count > MAX_ATTR_BYTES:
        raise UserError(
            f"{source}: attribute {where} is {dtype.itemsize * count} bytes, more than "
            f"{MAX_ATTR_BYTES} allowed"
        )
    value = group.attrs[name]
    size = sum(len(x) for x in np.atleast_1d(value))
    if size > MAX_ATTR_BYTES:
        raise UserError(
            f"{source}: attribute {where} is {size} bytes, more than {MAX_ATTR_BYTES} allowed"
        )
    return value


def _attr_list(group: h5py.Group, name: str, where: str, source: str) -> list[str] | None:
    """A list-of-strings attribute as Keras writes it (possibly split into name0, name1, …)."""
    if name in group.attrs:
        chunks = [_read_attr(group, name, f"{where}@{name}", source)]
    elif f"{name}0" in group.attrs:
        chunks, k = [], 0
        while f"{name}{k}" in group.attrs:
            if k >= MAX_ATTR_ITEMS:
                raise UserError(f"{source}: attribute {where}@{name} has too many parts")
            chunks.append(_read_attr(group, f"{name}{k}", f"{where}@{name}{k}", source))
            k += 1
    else:
        return None
    names = [
        x.decode("utf8") if isinstance(x, bytes) else str(x)
        for chunk in chunks
        for x in np.atleast_1d(chunk)
    ]
    if len(names) > MAX_ATTR_ITEMS:
        raise UserError(f"{source}: attribute {where}@{name} holds {len(names)} items; refused")
    return names


def _read_legacy_h5(
    tree: _H5Tree, layer_names: list[str] | None, source: str, prefix: str
) -> tuple[dict, dict]:
    """Legacy layout: per layer, the datasets listed by `weight_names`, kernel then bias.

    With a config (`layer_names` given) each weighted layer is found under its config name; without
    one, the layers that hold weights are taken in the file's order, as Keras's loader does.
    """
    group = tree.groups[prefix.rstrip("/")]
    stored = _attr_list(group, "layer_names", prefix or "/", source)
    if stored is None:
        raise UserError(f"{source}: {prefix or '/'} has no layer_names attribute")
    holding = []  # (layer name, [weight names]) for the layers that hold weights, in file order
    for name in stored:
        layer_group = tree.groups.get(f"{prefix}{name}")
        if layer_group is None:
            raise UserError(f"{source}: layer {name} is listed but has no group in the file")
        names = _attr_list(layer_group, "weight_names", f"{prefix}{name}", source) or []
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


def _open_h5(file: object, source: str) -> h5py.File:
    try:
        return h5py.File(file, "r")
    except OSError as err:
        raise UserError(f"{source}: not a readable HDF5 file ({first_line(err)})") from None


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
    with _open_h5(io.BytesIO(weights_bytes), f"{source}: {WEIGHTS_MEMBER}") as h5:
        weights, where, skipped = _read_keras3_h5(_walk(h5, source), source)
    return KerasCheckpoint(weights, "keras", names, skipped), where


def _read_h5_file(path: Path, source: str) -> tuple[KerasCheckpoint, dict]:
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise UserError(f"{source}: {size} bytes, more than {MAX_WEIGHTS_BYTES} allowed")
    with _open_h5(path, source) as h5:
        tree = _walk(h5, source)
        if "model_weights" in tree.groups:  # legacy full model: config + weights (+ optimizer)
            if "model_config" not in h5.attrs:
                raise UserError(f"{source}: legacy .h5 model without a model_config attribute")
            raw = _read_attr(h5, "model_config", "/@model_config", source)
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


# --- writing: what Keras 3.15.1 writes ----------------------------------------------------------


def _dtype_policy() -> dict:
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "float32"},
        "registered_name": None,
    }


def _layer_config(spec: LayerSpec, name: str, input_shape: list | None) -> dict:
    f = spec.fields
    cfg: dict = {"name": name, "trainable": True, "dtype": _dtype_policy()}
    if spec.class_name in ("Conv2D", "Dense"):
        init = {
            "kernel_initializer": {
                "module": "keras.initializers",
                "class_name": "GlorotUniform",
                "config": {"seed": None, "input_axes": None, "output_axes": None},
                "registered_name": None,
            },
            "bias_initializer": {
                "module": "keras.initializers",
                "class_name": "Zeros",
                "config": {},
                "registered_name": None,
            },
            "kernel_regularizer": None,
            "bias_regularizer": None,
        }
        if spec.class_name == "Conv2D":
            cfg.update(
                filters=f["filters"],
                kernel_size=list(f["kernel_size"]),
                strides=list(f["strides"]),
                padding=f["padding"],
                data_format=f["data_format"],
                dilation_rate=list(f["dilation_rate"]),
                groups=f["groups"],
                activation=f["activation"],
                use_bias=f["use_bias"],
                **init,
                activity_regularizer=None,
                kernel_constraint=None,
                bias_constraint=None,
            )
        else:
            cfg.update(
                units=f["units"],
                activation=f["activation"],
                use_bias=f["use_bias"],
                **init,
                kernel_constraint=None,
                bias_constraint=None,
                quantization_config=None,
            )
    elif spec.class_name == "MaxPooling2D":
        cfg.update(
            pool_size=list(f["pool_size"]),
            padding=f["padding"],
            strides=list(f["strides"]),
            data_format=f["data_format"],
        )
    elif spec.class_name == "Flatten":
        cfg.update(data_format=f["data_format"])
    elif spec.class_name == "Dropout":
        cfg.update(rate=f["rate"], seed=None, noise_shape=None)
    layer = {
        "module": "keras.layers",
        "class_name": spec.class_name,
        "config": cfg,
        "registered_name": None,
    }
    if input_shape is not None:
        layer["build_config"] = {"input_shape": input_shape}
    return layer


# Each layer's build input shape, as Keras records it (pooling and dropout record none).
_BUILD_SHAPES = (
    [None, 28, 28, 1],
    None,
    [None, 14, 14, 32],
    None,
    [None, 7, 7, 64],
    [None, 3136],
    None,
    [None, 100],
)


def book_config() -> dict:
    """The config.json Keras 3.15.1 writes for `keras_ref.model.build_model()` in a new session."""
    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {
                "batch_shape": list(INPUT_SHAPE),
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
                "name": "input_layer",
                "optional": False,
            },
            "registered_name": None,
        }
    ]
    for spec, path, shape in zip(BOOK_LAYERS, POSITIONAL_PATHS, _BUILD_SHAPES, strict=True):
        layers.append(_layer_config(spec, path, shape))
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "trainable": True,
            "dtype": _dtype_policy(),
            "layers": layers,
            "build_input_shape": list(INPUT_SHAPE),
        },
        "registered_name": None,
        "build_config": {"input_shape": list(INPUT_SHAPE)},
        "compile_config": {},
    }


def legacy_book_config() -> dict:
    """The `model_config` Keras 3's legacy `.h5` save writes (no module / registered_name /
    build_config on layers; `use_legacy_config=True` in legacy_h5_format.py)."""
    config = book_config()
    layers = []
    for layer in config["config"]["layers"]:
        layers.append({"class_name": layer["class_name"], "config": layer["config"]})
    return {"class_name": "Sequential", "config": {**config["config"], "layers": layers}}


def _check_for_writing(weights: Mapping[str, np.ndarray], dst: Path) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in KERAS_SHAPES.items():
        if name not in weights:
            raise UserError(f"{dst}: cannot write: weight {name} is missing")
        array = np.ascontiguousarray(weights[name], dtype=np.float32)
        if array.shape != shape:
            raise UserError(
                f"{dst}: cannot write: {name} has shape {array.shape}, expected {shape}"
            )
        out[name] = array
    extra = [n for n in weights if n not in KERAS_SHAPES]
    if extra:
        raise UserError(f"{dst}: cannot write: unexpected weight {extra[0]}")
    return out


def _write_keras3_h5(h5: h5py.File, weights: Mapping[str, np.ndarray]) -> None:
    """`layers/<path>/vars/{0,1}` for each layer, empty `vars` for the rest, as H5IOStore does."""
    layers = h5.create_group("layers")
    for spec, path in zip(BOOK_LAYERS, POSITIONAL_PATHS, strict=True):
        vars_group = layers.create_group(path).create_group("vars")
        vars_group.attrs["name"] = path
        if spec.weights:
            vars_group.create_dataset("0", data=weights[f"{spec.weights}/kernel"])
            vars_group.create_dataset("1", data=weights[f"{spec.weights}/bias"])
    h5.create_group("vars").attrs["name"] = "sequential"


def _weights_h5_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        _write_keras3_h5(h5, weights)
    return buffer.getvalue()


def write_keras_file(
    weights: Mapping[str, np.ndarray], dst: str | os.PathLike, *, force: bool = False
) -> Path:
    """Write weights (structural names, Keras layout) to `.keras`, `.weights.h5` or legacy `.h5`,
    atomically (temporary file beside `dst`, then rename)."""
    dst = Path(dst)
    kind = keras_kind(dst)
    if kind is None:
        raise UserError(
            f"{dst}: unknown Keras extension {dst.suffix or '(none)'!r}; "
            f"expected .keras, .h5 or .weights.h5"
        )
    weights = _check_for_writing(weights, dst)

    def write_keras(tmp: Path) -> None:
        metadata = {
            "keras_version": KERAS_FORMAT_VERSION,
            "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
        with zipfile.ZipFile(tmp, "w") as zf:  # stored, not deflated, as Keras writes it
            zf.writestr(METADATA_MEMBER, json.dumps(metadata))
            zf.writestr(CONFIG_MEMBER, json.dumps(book_config()))
            zf.writestr(WEIGHTS_MEMBER, _weights_h5_bytes(weights))

    def write_weights_h5(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            _write_keras3_h5(h5, weights)

    def write_legacy_h5(tmp: Path) -> None:
        # legacy_h5_format.save_model_to_hdf5 without an optimizer: config attributes, then
        # model_weights/<layer>/<model>/<layer>/{kernel,bias} listed by weight_names.
        with h5py.File(tmp, "w") as h5:
            h5.attrs["backend"] = "tensorflow"
            h5.attrs["keras_version"] = KERAS_FORMAT_VERSION
            h5.attrs["model_config"] = json.dumps(legacy_book_config()).encode("utf8")
            group = h5.create_group("model_weights")
            group.attrs["layer_names"] = np.array([p.encode("utf8") for p in POSITIONAL_PATHS])
            group.attrs["backend"] = b"tensorflow"
            group.attrs["keras_version"] = KERAS_FORMAT_VERSION.encode("utf8")
            for spec, path in sorted(
                zip(BOOK_LAYERS, POSITIONAL_PATHS, strict=True), key=lambda x: x[1]
            ):
                layer_group = group.create_group(path)
                names = (
                    [f"sequential/{path}/{v}" for v in ("kernel", "bias")] if spec.weights else []
                )
                layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
                if spec.weights:
                    for name, var in zip(names, ("kernel", "bias"), strict=True):
                        layer_group.create_dataset(name, data=weights[f"{spec.weights}/{var}"])
            group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([])

    write = {"keras": write_keras, "weights.h5": write_weights_h5, "h5": write_legacy_h5}[kind]
    return atomic_write(dst, write, force=force)
