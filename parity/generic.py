"""Any supported Keras Sequential (or single-chain Functional) model, rebuilt in PyTorch, and back.

    config (JSON) → one converter per layer (`parity.layers.CONVERTERS`) → `KerasSequential`
    + the weight rows (Keras variable → state_dict key → transform) → weights read from the file
    by those rows → `load_state_dict(strict=True)`.

The book's CNN is one model this path handles: its module's keys are exactly `BookCNN`'s, its
rows exactly `parity.mapping.TABLE` (pinned by parity/tests/test_generic.py). Files are read with
h5py, zipfile and json only; nothing in them is deserialised or run. Every array is read through
`_read_array`, which checks the link, the storage and the shape before reading into a
preallocated array.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from fashion_cnn import jsonfile
from fashion_cnn.errors import UserError, first_line
from fashion_cnn.files import atomic_write
from fashion_cnn.hdf5 import H5Tree, attr_list, open_h5, read_array, read_attr, walk
from fashion_cnn.validate import check_tensors
from parity.keras_read import _MALFORMED
from parity.keras_spec import (
    CONFIG_MEMBER,
    KERAS_FORMAT_VERSION,
    MAX_JSON_BYTES,
    MAX_WEIGHTS_BYTES,
    METADATA_MEMBER,
    WEIGHTS_MEMBER,
    keras_kind,
)
from parity.layers import CONVERTERS, FIELDS, PASS_FLATTEN, Chain, Converted, Fixed, supported
from parity.mapping import Row

Shape = tuple[int, ...]
# Kinds named without a number when the model has one of them, as the book's PyTorch edition
# names `flatten` and `dropout`; every other kind is numbered: conv1, relu1, pool1, bn1, …
BARE_WHEN_SINGLE = {"flatten", "dropout", "softmax", "rescale", "reshape"}


def to_snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case: the positional path of a layer's weights."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# --- the model's config ----------------------------------------------------------------------


@dataclass(frozen=True)
class KerasLayer:
    class_name: str
    config: dict  # the layer's own config (name, units, …)
    path: str  # positional path in a .keras weights file: conv2d, conv2d_1, …

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path))


@dataclass(frozen=True)
class ModelSpec:
    """A chain of Keras layers and its input shape (Keras order, batch-free)."""

    input_shape: Shape
    layers: tuple[KerasLayer, ...]  # without the InputLayer
    name: str = "sequential"
    functional: bool = False  # a Functional's .keras file stores its InputLayer's group too


def _shape(value: object, where: str, source: str) -> Shape:
    if (
        not isinstance(value, list | tuple)
        or len(value) < 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value[1:])
    ):
        raise UserError(f"{source}: {where} is {value!r}, not a batch shape [None, d1, …]")
    return tuple(value[1:])


def _check_chain(layers: list[Mapping], cfg: Mapping, source: str) -> None:
    """A Functional is taken only when it is one chain: one input, one output, every layer fed
    by the one before it."""

    def single(refs: object, what: str) -> str:
        if isinstance(refs, list) and len(refs) == 3 and isinstance(refs[0], str):
            return refs[0]
        if isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], list):
            return single(refs[0], what)
        raise UserError(f"{source}: the model has several {what}; only a single chain is supported")

    first, last = (
        single(cfg.get("input_layers"), "inputs"),
        single(cfg.get("output_layers"), "outputs"),
    )
    names = [layer.get("name") or _layer_cfg(layer).get("name") for layer in layers]
    if names[0] != first or names[-1] != last:
        raise UserError(f"{source}: the layers are not one chain from {first} to {last}")
    for prev, layer, name in zip(names, layers[1:], names[1:], strict=False):
        nodes = layer.get("inbound_nodes")
        inputs: list = []
        if isinstance(nodes, list) and len(nodes) == 1:
            node = nodes[0]
            if isinstance(node, Mapping):  # Keras 3: {"args": [keras tensor], "kwargs": {}}
                args = node.get("args") or []
                inputs = [
                    a.get("config", {}).get("keras_history", [None])[0]
                    for a in (args[0] if args and isinstance(args[0], list) else args)
                    if isinstance(a, Mapping)
                ]
                kwargs = node.get("kwargs") or {}
                if not isinstance(kwargs, Mapping) or set(kwargs) - {"training"}:
                    inputs.append(
                        f"kwargs {sorted(kwargs)}"
                    )  # `training` does not change inference
            elif isinstance(node, list):  # TF 2.x: [[name, 0, 0, {}], …]
                inputs = [n[0] for n in node if isinstance(n, list) and n]
        if inputs != [prev]:
            raise UserError(
                f"{source}: layer {name} takes {inputs or 'no input'} rather than only the layer "
                f"before it ({prev}): a model with branches is not supported, only a single chain"
            )


def _layer_cfg(layer: Mapping) -> Mapping:
    cfg = layer.get("config")
    return cfg if isinstance(cfg, Mapping) else {}


def _dtype_name(dtype: object) -> object:
    if isinstance(dtype, Mapping):
        cfg = dtype.get("config")
        return cfg.get("name") if isinstance(cfg, Mapping) else dtype
    return dtype


def parse_config(config: object, source: str) -> ModelSpec:
    """A Keras model config (config.json, or a legacy .h5's model_config) → ModelSpec.

    Refuses, in one line naming the layer and its class, any class without a converter (a
    Lambda, an LSTM, a custom or nested model), and a Functional that is not a single chain.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping):
        raise UserError(f"{source}: the model config is not a Keras model config")
    cls = config.get("class_name")
    cfg = config["config"]
    layers = cfg.get("layers")
    if (
        not isinstance(layers, list)
        or not layers
        or not all(isinstance(x, Mapping) for x in layers)
    ):
        raise UserError(f"{source}: the model config has no list of layers")
    if cls not in ("Sequential", "Functional", "Model"):
        raise UserError(f"{source}: the model is a {cls}; supported: Sequential, Functional")
    functional = cls != "Sequential"
    if functional:  # branches first: a merge layer is refused as a branch, not as a class
        _check_chain(layers, cfg, source)
    # Layers are numbered as Keras's `model.layers` numbers them: a Sequential's InputLayer not
    # counted, a Functional's counted.
    numbered = [x for x in layers if functional or x.get("class_name") != "InputLayer"]
    index = {id(x): f"layer {i}" for i, x in enumerate(numbered)}
    for layer in layers:
        i = index.get(id(layer), "the input layer")
        lcls = layer.get("class_name")
        custom = layer.get("registered_name") not in (None, lcls) or layer.get("module") not in (
            None,
            "keras.layers",
        )
        if not isinstance(lcls, str) or lcls not in CONVERTERS or custom:
            what = f"{layer.get('module')}.{lcls}" if custom else lcls
            raise UserError(
                f"{source}: {i} ({_layer_cfg(layer).get('name', '?')}) is a {what}, which "
                f"this port does not support (refused without running it); supported: "
                f"{supported()}"
            )
        dtype = _dtype_name(_layer_cfg(layer).get("dtype"))
        if dtype not in (None, "float32"):
            raise UserError(
                f"{source}: {i} ({_layer_cfg(layer).get('name', '?')}) computes in "
                f"{dtype}; only float32 is supported"
            )
    inputs = [x for x in layers if x.get("class_name") == "InputLayer"]
    if len(inputs) > 1 or (inputs and layers[0] is not inputs[0]):
        raise UserError(f"{source}: the model has more than one InputLayer")
    if inputs:
        icfg = _layer_cfg(inputs[0])
        key = "batch_shape" if "batch_shape" in icfg else "batch_input_shape"
        input_shape = _shape(icfg.get(key), f"the InputLayer's {key}", source)
    elif cfg.get("build_input_shape") is not None:
        input_shape = _shape(cfg["build_input_shape"], "build_input_shape", source)
    else:
        first = _layer_cfg(layers[0])
        input_shape = _shape(first.get("batch_input_shape"), "the first layer's input", source)
    counts: dict[str, int] = {}
    body = []
    for layer in layers:
        if layer.get("class_name") == "InputLayer" and not functional:
            continue  # a Sequential's weights file has no group for its InputLayer
        base = to_snake_case(layer["class_name"])
        k = counts.get(base, 0)
        counts[base] = k + 1
        if layer.get("class_name") != "InputLayer":
            body.append(
                KerasLayer(
                    layer["class_name"], dict(_layer_cfg(layer)), base if k == 0 else f"{base}_{k}"
                )
            )
    if not body:
        raise UserError(f"{source}: the model has no layers besides its input")
    return ModelSpec(input_shape, tuple(body), str(cfg.get("name") or "sequential"), functional)


# --- the PyTorch module ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """What one Keras layer became: its modules, output shape, and the torch output's layout."""

    keras: KerasLayer
    modules: tuple[str, ...]  # module names, in forward order ([] for a linear Activation)
    shape: Shape  # Keras order, batch-free
    flat_from: tuple[int, int, int] | None  # the output is a C,H,W-ordered flatten of this map
    params: int
    transforms: tuple[str, ...]


class KerasSequential(nn.Sequential):
    """A Keras chain rebuilt in PyTorch: named children (conv1, relu1, pool1, …, dense2,
    softmax) run in order. Images are NCHW, as in PyTorch; outputs are what Keras outputs
    (probabilities where the Keras model ends in softmax). `keras_spec` is the architecture it
    was built from; `layers` says which modules each Keras layer became."""

    def __init__(
        self, modules: OrderedDict, spec: ModelSpec | None = None, layers: list | None = None
    ) -> None:  # a slice (model[:3], which nn.Sequential builds this way) has no spec
        super().__init__(modules)
        self.keras_spec = spec
        self.layers = layers or []


@dataclass
class Built:
    module: KerasSequential
    rows: list[Row]  # Keras "<path>/<var>" → state_dict key, with shapes and transform
    fixed: dict[str, Fixed]  # state_dict key → a value with no Keras variable
    layers: list[LayerInfo] = field(default_factory=list)


def _dense_follows(layers: tuple[KerasLayer, ...], i: int) -> bool:
    for layer in layers[i + 1 :]:
        if layer.class_name == "Dense":
            return True
        if layer.class_name not in PASS_FLATTEN:
            return False
    return False


def build(spec: ModelSpec, source: str) -> Built:
    """Run each layer's converter along the chain; name the modules; collect the rows.

    The module is made on the meta device: it holds no weights (nothing is allocated or
    initialised) until `load_state_dict(state, assign=True)` hands it the ported tensors."""
    chain = Chain(spec.input_shape)
    converted: list[tuple[KerasLayer, Converted]] = []
    with torch.device("meta"):
        for i, layer in enumerate(spec.layers):
            where = f"{source}: layer {i + spec.functional} ({layer.name}, {layer.class_name})"
            chain.dense_follows = _dense_follows(spec.layers, i)
            out = CONVERTERS[layer.class_name](layer.config, chain, where)
            converted.append((layer, out))
            chain = Chain(out.shape, out.flat_from)
    totals: dict[str, int] = {}
    for _, out in converted:
        for kind, _m in out.modules:
            totals[kind] = totals.get(kind, 0) + 1
    seen: dict[str, int] = {}
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    rows, fixed, infos = [], {}, []
    for layer, out in converted:
        names = []
        for kind, module in out.modules:
            seen[kind] = seen.get(kind, 0) + 1
            bare = kind in BARE_WHEN_SINGLE and totals[kind] == 1
            names.append(kind if bare else f"{kind}{seen[kind]}")
            modules[names[-1]] = module
        for var in out.vars:
            rows.append(
                Row(
                    f"{layer.path}/{var.keras}",
                    f"{names[var.module]}.{var.param}",
                    var.keras_shape,
                    var.torch_shape,
                    var.transform,
                )
            )
        for fix in out.fixed:
            fixed[f"{names[fix.module]}.{fix.param}"] = fix
        params = sum(int(np.prod(v.keras_shape)) for v in out.vars)
        transforms = tuple(dict.fromkeys(v.transform.name for v in out.vars))
        infos.append(LayerInfo(layer, tuple(names), out.shape, out.flat_from, params, transforms))
    module = KerasSequential(modules, spec, infos)
    expected = set(module.state_dict())
    got = {r.torch for r in rows} | set(fixed)
    if expected != got:  # a converter's rows must cover its module exactly
        raise AssertionError(f"rows do not cover the module: {sorted(expected ^ got)}")
    return Built(module.eval(), rows, fixed, infos)


def keras_to_torch(built: Built, weights: Mapping[str, np.ndarray], source: str) -> dict:
    """Keras arrays by structural name → a full state_dict (torch tensors), every name and shape
    checked first."""
    check_tensors(
        weights,
        {r.keras: r.keras_shape for r in built.rows},
        source,
        shape_of=np.shape,
        what="the weights do not match the model's config: ",
    )
    state = {
        r.torch: torch.from_numpy(np.ascontiguousarray(r.transform.to_torch(weights[r.keras])))
        for r in built.rows
    }
    for key, fix in built.fixed.items():
        state[key] = torch.from_numpy(fix.value.copy())
    return state


def torch_to_keras(built: Built, state: Mapping[str, torch.Tensor], source: str) -> dict:
    """A state_dict → Keras arrays by structural name; a fixed value that Keras cannot hold
    (a BatchNorm bias that is not zero where center=False) is refused."""
    expected = {r.torch: r.torch_shape for r in built.rows}
    expected.update({k: tuple(f.value.shape) for k, f in built.fixed.items()})
    check_tensors(
        state,
        expected,
        source,
        shape_of=lambda t: tuple(t.shape),
        what="the state_dict does not match the model: ",
    )
    for key, fix in built.fixed.items():
        if fix.required and not np.array_equal(state[key].detach().cpu().numpy(), fix.value):
            raise UserError(
                f"{source}: {key} is not {fix.value.flat[0]:g} everywhere; the Keras "
                f"layer (center/scale off) cannot hold it"
            )
    return {
        r.keras: np.ascontiguousarray(
            r.transform.to_keras(state[r.torch].detach().cpu().numpy().astype(np.float32))
        )
        for r in built.rows
    }


class ModuleWeights(Mapping):
    """A built module's weights in Keras layout, by structural name, computed on access from the
    module's own tensors (views where the transform is a transpose): the Keras-layout copy of a
    large model is never held whole beside the PyTorch one."""

    def __init__(self, built: Built) -> None:
        self.rows = {r.keras: r for r in built.rows}
        self.state = built.module.state_dict()

    def __getitem__(self, name: str) -> np.ndarray:
        row = self.rows[name]
        return row.transform.to_keras(self.state[row.torch].detach().numpy())

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


# --- reading arrays from HDF5: through the hardened core, fashion_cnn.hdf5 ---------------------
#
# `walk` (every object reached through hard links only, each once; external and soft links,
# external raw storage, virtual datasets, filters but deflate and excess chunk counts refused,
# all from the metadata), `read_array` (shape and dtype checked before reading into an array
# allocated there; deflate inflated with a cap), `read_attr` / `attr_list` (bounded attributes);
# JSON through `fashion_cnn.jsonfile` (size and depth bounded).


def _json(raw: bytes | str, what: str, source: str) -> object:
    return jsonfile.loads(raw, what, source, max_bytes=MAX_JSON_BYTES)


def _read_array(tree: H5Tree, h5path: str, shape: Shape, name: str, source: str) -> np.ndarray:
    """`fashion_cnn.hdf5.read_array` with the shape the generic config implies, after two checks
    a config of any size needs: uncompressed storage holds the bytes it declares (a sparse
    dataset would be mostly fill value), and a deflated one inflates to at most the bound."""
    dataset = tree.datasets.get(h5path)
    if dataset is not None and dataset.dtype.kind == "f" and dataset.shape == tuple(shape):
        stored = dataset.id.get_storage_size()
        if dataset.compression is None and dataset.nbytes and stored < dataset.nbytes:
            raise UserError(
                f"{source}: {h5path} ({name}) declares {dataset.nbytes} bytes but stores "
                f"{stored}; refused (not read)"
            )
        if dataset.compression is not None and dataset.nbytes > MAX_WEIGHTS_BYTES:
            raise UserError(f"{source}: {h5path} inflates to {dataset.nbytes} bytes; refused")
    return read_array(tree, h5path, tuple(shape), f"{h5path} ({name})", source)


def _read_keras3(h5: h5py.File, built: Built, source: str) -> dict[str, np.ndarray]:
    """`layers/<positional path>/vars/<i>`, i in the order Keras stores a layer's variables;
    `optimizer/…` left aside, never read."""
    tree = walk(h5, source)
    if "layers" not in tree.groups:
        raise UserError(f"{source}: no 'layers' group: not a Keras 3 weights file")
    weights, expected = {}, set()
    index: dict[str, int] = {}
    for row in built.rows:
        layer = row.keras.rsplit("/", 1)[0]
        i = index.get(layer, 0)
        index[layer] = i + 1
        path = f"layers/{layer}/vars/{i}"
        expected.add(path)
        weights[row.keras] = _read_array(tree, path, row.keras_shape, row.keras, source)
    extra = sorted(n for n in tree.datasets if n not in expected and not n.startswith("optimizer/"))
    if extra:
        raise UserError(f"{source}: unexpected tensor {extra[0]}: not a weight of the config")
    return weights


def _read_legacy(h5: h5py.File, spec: ModelSpec, built: Built, source: str) -> dict:
    """Legacy `.h5`: `model_weights/<layer name>/…`, datasets listed by `weight_names`."""
    tree = walk(h5, source)
    by_layer: dict[str, list[Row]] = {}
    for row in built.rows:
        by_layer.setdefault(row.keras.rsplit("/", 1)[0], []).append(row)
    weights = {}
    for layer in spec.layers:
        rows = by_layer.get(layer.path, [])
        where = f"model_weights/{layer.name}"
        group = tree.groups.get(where)
        names = attr_list(group, "weight_names", where, source) if group is not None else None
        names = [n for n in names or [] if n]
        if len(names) != len(rows):
            raise UserError(
                f"{source}: layer {layer.name} stores {len(names)} tensors; its config "
                f"implies {len(rows)}"
            )
        for row, wname in zip(rows, names, strict=True):
            var = row.keras.rsplit("/", 1)[1]
            if wname.split("/")[-1].split(":")[0] != var:
                raise UserError(
                    f"{source}: layer {layer.name} stores {wname} where its config has {var}"
                )
            weights[row.keras] = _read_array(
                tree, f"{where}/{wname}", row.keras_shape, row.keras, source
            )
    return weights


@dataclass
class KerasModel:
    """A Keras file read into its chain, its PyTorch counterpart and its weights."""

    spec: ModelSpec
    built: Built
    weights: dict[str, np.ndarray]  # Keras layout, by structural name "<path>/<var>"
    layout: str


def _zip_member(zf: zipfile.ZipFile, member: str, limit: int, source: str) -> bytes:
    info = zf.getinfo(member) if member in zf.namelist() else None
    if info is None:
        raise UserError(f"{source}: the .keras archive has no {member}")
    if info.file_size > limit:
        raise UserError(f"{source}: {member} is {info.file_size} bytes, more than {limit} allowed")
    return zf.read(member)


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start + size) of an open file."""

    def __init__(self, file, start: int, size: int) -> None:
        super().__init__()
        self.file, self.start, self.size, self.pos = file, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n == 0:
            return 0
        self.file.seek(self.start + self.pos)
        got = self.file.readinto(memoryview(buffer)[:n])
        self.pos += got
        return got


def _stored_window(zf: zipfile.ZipFile, raw_file, member: str, source: str) -> _Window | None:
    """A window onto an uncompressed member's bytes inside the archive; None if compressed."""
    if member not in zf.namelist():
        raise UserError(f"{source}: the .keras archive has no {member}")
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        return None
    raw_file.seek(info.header_offset)
    header = raw_file.read(30)  # the local file header: its name and extra field lengths
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise UserError(f"{source}: the .keras archive's {member} header is corrupt")
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little")
    start += int.from_bytes(header[28:30], "little")
    if start + info.file_size > os.fstat(raw_file.fileno()).st_size:
        raise UserError(f"{source}: the .keras archive is truncated inside {member}")
    return _Window(raw_file, start, info.file_size)


def read_keras_model(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> KerasModel:
    """Read a `.keras` or full-model `.h5` of any supported chain (config + weights)."""
    path = Path(path)
    source = str(path)
    kind = keras_kind(path)
    if kind not in ("keras", "h5"):
        raise UserError(
            f"{source}: expected a .keras or .h5 model file (a .weights.h5 holds no config)"
        )
    if not path.is_file():
        raise UserError(f"{source}: no such file")
    try:
        if kind == "keras":
            try:
                with zipfile.ZipFile(path) as zf, path.open("rb") as raw_file:
                    metadata = _zip_member(zf, METADATA_MEMBER, MAX_JSON_BYTES, source)
                    if not isinstance(_json(metadata, METADATA_MEMBER, source), Mapping):
                        raise UserError(f"{source}: {METADATA_MEMBER} is not a JSON object")
                    config = _zip_member(zf, CONFIG_MEMBER, MAX_JSON_BYTES, source)
                    spec = parse_config(_json(config, CONFIG_MEMBER, source), source)
                    built = build(spec, source)
                    # Keras stores model.weights.h5 uncompressed: HDF5 reads it in place
                    # through a window onto the archive, never inflated into memory whole.
                    member = _stored_window(zf, raw_file, WEIGHTS_MEMBER, source)
                    if member is None:
                        member = io.BytesIO(
                            _zip_member(zf, WEIGHTS_MEMBER, MAX_WEIGHTS_BYTES, source)
                        )
                    with open_h5(member, f"{source}: {WEIGHTS_MEMBER}") as h5:
                        weights = _read_keras3(h5, built, source)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
                raise UserError(f"{source}: not a valid .keras file ({err})") from None
            layout = "keras"
        else:
            if path.stat().st_size > MAX_WEIGHTS_BYTES:
                raise UserError(f"{source}: more than {MAX_WEIGHTS_BYTES} bytes; refused")
            with open_h5(path, source) as h5:
                if "model_config" not in h5.attrs:
                    raise UserError(f"{source}: not a full Keras model .h5 (no model_config)")
                raw = read_attr(h5, "model_config", "/@model_config", source)
                spec = parse_config(_json(raw, "model_config", source), source)
                built = build(spec, source)
                weights = _read_legacy(h5, spec, built, source)
            layout = "legacy-h5"
    except (*_MALFORMED, zlib.error) as err:  # h5py on a damaged tree (tests/test_fuzz.py)
        raise UserError(f"{source}: malformed Keras file ({first_line(err)})") from None
    if not allow_nonfinite:
        for name, array in weights.items():
            if not np.isfinite(array).all():
                raise UserError(f"{source}: {name} holds NaN/Inf values")
    return KerasModel(spec, built, weights, layout)


def load_keras_as_torch(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> nn.Module:
    """`parity.load_torch_model` for Keras files: the rebuilt module, weights loaded, eval mode."""
    model = read_keras_model(path, allow_nonfinite=allow_nonfinite)
    state = keras_to_torch(model.built, model.weights, str(path))
    model.built.module.load_state_dict(state, strict=True, assign=True)
    return model.built.module.eval()


def to_keras_layout(info: LayerInfo, array: np.ndarray) -> np.ndarray:
    """A module's output (numpy, PyTorch layout) in Keras's layout, for per-layer comparison."""
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    if info.flat_from is not None and array.ndim == 2:
        h, w, c = info.flat_from
        n = array.shape[0]
        return np.ascontiguousarray(array.reshape(n, c, h, w).transpose(0, 2, 3, 1).reshape(n, -1))
    return array


# --- writing Keras files ---------------------------------------------------------------------


def _dtype_policy() -> dict:
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "float32"},
        "registered_name": None,
    }


def model_config(spec: ModelSpec, build_shapes: list[Shape | None]) -> dict:
    """The config.json Keras 3.15.1 writes for a Sequential of these layers."""
    batch = [None, *spec.input_shape]
    layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {
                "batch_shape": batch,
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
                "name": "input_layer",
                "optional": False,
            },
            "registered_name": None,
        }
    ]
    for layer, shape in zip(spec.layers, build_shapes, strict=True):
        kept = {k: layer.config[k] for k in FIELDS[layer.class_name] if k in layer.config}
        cfg = {"name": layer.name, "trainable": True, "dtype": _dtype_policy(), **kept}
        entry = {
            "module": "keras.layers",
            "class_name": layer.class_name,
            "config": cfg,
            "registered_name": None,
        }
        if shape is not None:
            entry["build_config"] = {"input_shape": [None, *shape]}
        layers.append(entry)
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": spec.name,
            "trainable": True,
            "dtype": _dtype_policy(),
            "layers": layers,
            "build_input_shape": batch,
        },
        "registered_name": None,
        "build_config": {"input_shape": batch},
        "compile_config": {},
    }


def _as_sequential(spec: ModelSpec) -> ModelSpec:
    """A single-chain Functional written back as the Sequential it is: paths renumbered without
    the InputLayer."""
    counts: dict[str, int] = {}
    layers = []
    for layer in spec.layers:
        base = to_snake_case(layer.class_name)
        k = counts.get(base, 0)
        counts[base] = k + 1
        layers.append(KerasLayer(layer.class_name, layer.config, base if k == 0 else f"{base}_{k}"))
    return ModelSpec(spec.input_shape, tuple(layers), spec.name, functional=False)


def write_keras_model(
    spec: ModelSpec,
    weights: Mapping[str, np.ndarray],
    dst: str | os.PathLike,
    *,
    force: bool = False,
) -> Path:
    """Write a chain and its Keras-layout weights (by "<path>/<var>") as `.keras` or legacy
    `.h5`, in the layout Keras 3.15.1 writes, atomically."""
    dst = Path(dst)
    kind = keras_kind(dst)
    if kind not in ("keras", "h5"):
        raise UserError(f"{dst}: expected a .keras or .h5 destination")
    seq = _as_sequential(spec)
    renamed = {old.path: new.path for old, new in zip(spec.layers, seq.layers, strict=True)}
    built = build(seq, str(dst))
    layer_vars: dict[str, list[tuple[str, np.ndarray]]] = {layer.path: [] for layer in seq.layers}
    renamed_weights = {}
    for name, array in weights.items():
        path, var = name.rsplit("/", 1)
        renamed_weights[f"{renamed.get(path, path)}/{var}"] = array
    check_tensors(
        renamed_weights,
        {r.keras: r.keras_shape for r in built.rows},
        str(dst),
        shape_of=np.shape,
        what="cannot write: ",
    )
    for row in built.rows:
        path, var = row.keras.rsplit("/", 1)
        layer_vars[path].append((var, np.ascontiguousarray(renamed_weights[row.keras], np.float32)))
    shapes: list[Shape | None] = [seq.input_shape, *(i.shape for i in built.layers[:-1])]
    build_shapes = [
        s if layer_vars[lay.path] or lay.class_name == "Flatten" else None
        for lay, s in zip(seq.layers, shapes, strict=True)
    ]
    config = model_config(seq, build_shapes)

    def write_h5_weights(h5: h5py.File) -> None:
        group = h5.create_group("layers")
        for layer in seq.layers:
            vars_group = group.create_group(layer.path).create_group("vars")
            vars_group.attrs["name"] = layer.name
            for i, (_, array) in enumerate(layer_vars[layer.path]):
                vars_group.create_dataset(str(i), data=array)
        h5.create_group("vars").attrs["name"] = seq.name

    def write_keras(tmp: Path) -> None:
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as h5:
            write_h5_weights(h5)
        metadata = {
            "keras_version": KERAS_FORMAT_VERSION,
            "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(METADATA_MEMBER, json.dumps(metadata))
            zf.writestr(CONFIG_MEMBER, json.dumps(config))
            zf.writestr(WEIGHTS_MEMBER, buffer.getvalue())

    def write_legacy(tmp: Path) -> None:
        legacy = {
            "class_name": "Sequential",
            "config": {
                **config["config"],
                "layers": [
                    {"class_name": x["class_name"], "config": x["config"]}
                    for x in config["config"]["layers"]
                ],
            },
        }
        with h5py.File(tmp, "w") as h5:
            h5.attrs["backend"] = "tensorflow"
            h5.attrs["keras_version"] = KERAS_FORMAT_VERSION
            h5.attrs["model_config"] = json.dumps(legacy).encode("utf8")
            group = h5.create_group("model_weights")
            group.attrs["layer_names"] = np.array([x.name.encode("utf8") for x in seq.layers])
            group.attrs["backend"] = b"tensorflow"
            group.attrs["keras_version"] = KERAS_FORMAT_VERSION.encode("utf8")
            for layer in seq.layers:
                layer_group = group.create_group(layer.name)
                names = [f"{seq.name}/{layer.name}/{var}" for var, _ in layer_vars[layer.path]]
                layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
                for wname, (_, array) in zip(names, layer_vars[layer.path], strict=True):
                    layer_group.create_dataset(wname, data=array)
            group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([])

    return atomic_write(dst, write_keras if kind == "keras" else write_legacy, force=force)
