"""Reading any supported Keras model file (`.keras`, legacy `.h5`, `.weights.h5` with a config)
into a `KerasSequential`: every array through the hardened core (`fashion_cnn.hdf5`), which
checks links, storage and the shape before reading into a preallocated array; a `.keras`'s
weights member read in place inside the zip, never inflated whole."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from torch import nn

from fashion_cnn import jsonfile
from fashion_cnn.errors import UserError, first_line
from fashion_cnn.hdf5 import H5Tree, attr_list, open_h5, read_array, read_attr, walk
from fashion_cnn.validate import check_tensors, finite
from parity.build import (
    Built,
    ModelSpec,
    build,
    keras_to_torch,
    parse_config,
)
from parity.keras_read import _MALFORMED
from parity.keras_spec import (
    CONFIG_MEMBER,
    MAX_JSON_BYTES,
    MAX_WEIGHTS_BYTES,
    METADATA_MEMBER,
    WEIGHTS_MEMBER,
    keras_kind,
)
from parity.mapping import Row

Shape = tuple[int, ...]


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


def _read_keras3(
    h5: h5py.File, built: Built, source: str, where: dict[str, str] | None = None
) -> dict[str, np.ndarray]:
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
        if where is not None:
            where[row.keras] = path
    extra = sorted(n for n in tree.datasets if n not in expected and not n.startswith("optimizer/"))
    if extra:
        raise UserError(f"{source}: unexpected tensor {extra[0]}: not a weight of the config")
    return weights


def _read_legacy(
    h5: h5py.File, spec: ModelSpec, built: Built, source: str, where: dict[str, str] | None = None
) -> dict:
    """Legacy `.h5`: `model_weights/<layer name>/…`, datasets listed by `weight_names`."""
    tree = walk(h5, source)
    by_layer: dict[str, list[Row]] = {}
    for row in built.rows:
        by_layer.setdefault(row.keras.rsplit("/", 1)[0], []).append(row)
    weights = {}
    for layer in spec.layers:
        rows = by_layer.get(layer.path, [])
        group_path = f"model_weights/{layer.name}"
        group = tree.groups.get(group_path)
        names = attr_list(group, "weight_names", group_path, source) if group is not None else None
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
                tree, f"{group_path}/{wname}", row.keras_shape, row.keras, source
            )
            if where is not None:
                where[row.keras] = f"{group_path}/{wname}"
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
    where: dict[str, str] = {}
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
                        weights = _read_keras3(h5, built, source, where)
                        skipped = _optimizer_tensors(h5, "optimizer/", source)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
                raise UserError(
                    f"{source}: not a valid .keras file (not a readable zip: {err})"
                ) from None
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
                weights = _read_legacy(h5, spec, built, source, where)
                skipped = _optimizer_tensors(h5, "optimizer_weights/", source)
            layout = "legacy-h5"
    except (*_MALFORMED, zlib.error) as err:  # h5py on a damaged tree (tests/test_fuzz.py)
        raise UserError(f"{source}: malformed Keras file ({first_line(err)})") from None
    check_finite(weights, where, source, allow_nonfinite)
    if skipped:
        layout += f", {skipped} optimizer tensors left aside"
    return KerasModel(spec, built, weights, layout)


def check_finite(
    weights: Mapping[str, np.ndarray], where: Mapping[str, str], source: str, allow_nonfinite: bool
) -> None:
    """Every NaN/Inf value refused (unless allowed), each tensor named where the file holds it."""

    def label(name: str) -> str:
        return f"{where[name]} ({name})" if name in where else name

    check_tensors(
        weights, {n: a.shape for n, a in weights.items()}, source, shape_of=np.shape, label=label,
        checks=[finite(allow_nonfinite, label, " (use --allow-nonfinite to port them)")],
    )


def _optimizer_tensors(h5: h5py.File, prefix: str, source: str) -> int:
    """How many optimizer tensors the file holds beside the weights (seen, never read)."""
    return sum(1 for name in walk(h5, source).datasets if name.startswith(prefix))


def load_keras_as_torch(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> nn.Module:
    """`parity.load_torch_model` for Keras files: the rebuilt module, weights loaded, eval mode."""
    model = read_keras_model(path, allow_nonfinite=allow_nonfinite)
    state = keras_to_torch(model.built, model.weights, str(path), consume=True)
    model.built.module.load_state_dict(state, strict=True, assign=True)
    return model.built.module.eval()
