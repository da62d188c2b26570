"""Keras 3's own formats, read without TensorFlow and written as Keras 3.15.1 writes them:

- `.keras`: a zip of `metadata.json`, `config.json` and `model.weights.h5`;
- `.weights.h5` (`save_weights`): that weights file alone, read with a config from elsewhere
  (`--config`, or the book's CNN).

Weights sit at *positional* paths, `layers/<class in snake case>[_k]/vars/<i>` in the order
Keras stores a layer's variables (`layers/conv2d_1` is the second Conv2D whatever its name;
inside a nested model `layers/sequential/layers/conv2d`), computed by the graph reader
(`parity.ir.keras_config`). An `optimizer/vars` group (`iteration`, Adam's moments shaped as
the weights, …) is counted and left aside by `read_weights`, and read by `read_optimizer` for a
port `--with-optimizer`. Every array goes through the hardened HDF5 reader
(`fashion_cnn.hdf5`: no links, no outside storage, shapes checked before reading into arrays
allocated there, deflate capped); `model.weights.h5` is read in place inside the zip.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

from fashion_cnn import jsonfile
from fashion_cnn.errors import UserError
from fashion_cnn.hdf5 import H5Tree, open_h5, read_array, read_integer, walk
from parity.formats.keras_json import KERAS_FORMAT_VERSION
from parity.formats.limits import (
    CONFIG_MEMBER,
    MAX_JSON_BYTES,
    MAX_WEIGHTS_BYTES,
    METADATA_MEMBER,
    WEIGHTS_MEMBER,
)
from parity.spec import Spec


def json_of(raw: bytes | str, what: str, source: str) -> object:
    """JSON text from a file, size- and depth-bounded (`fashion_cnn.jsonfile`)."""
    return jsonfile.loads(raw, what, source, max_bytes=MAX_JSON_BYTES)


def _read_array(tree: H5Tree, h5path: str, shape: tuple[int, ...], name: str, source: str,
                dtype: str = "float32"):
    """`fashion_cnn.hdf5.read_array` after two checks a config of any size needs: uncompressed
    storage holds the bytes it declares (a sparse dataset would be mostly fill value), and a
    deflated one inflates to at most the bound. An int64 variable (a counter) is read as one."""
    if dtype == "int64":
        return read_integer(tree, h5path, tuple(shape), f"{h5path} ({name})", source)
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


def read_weights(
    h5: h5py.File, spec: Spec, source: str, where: dict[str, str] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every variable of `spec` from a Keras 3 weights file, by structural name, and the
    optimizer tensors it holds beside them (seen, never read)."""
    tree = walk(h5, source)
    if "layers" not in tree.groups:
        raise UserError(f"{source}: no 'layers' group: not a Keras 3 weights file")
    weights, expected = {}, set()
    index: dict[str, int] = {}
    for key, var, ns in spec.variables():
        i = index.get(ns.node.path, 0)
        index[ns.node.path] = i + 1
        path = f"layers/{ns.node.path}/vars/{i}"
        expected.add(path)
        weights[key] = _read_array(tree, path, var.shape, key, source, var.dtype)
        if where is not None:
            where[key] = path
    extra = sorted(n for n in tree.datasets if n not in expected and not n.startswith("optimizer/"))
    if extra:
        raise UserError(f"{source}: unexpected tensor {extra[0]}: not a weight of the config")
    return weights, sorted(n for n in tree.datasets if n.startswith("optimizer/"))


def zip_member(zf: zipfile.ZipFile, member: str, limit: int, source: str) -> bytes:
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


def read_keras(
    path: Path, parse: Callable[[object, str], Spec], where: dict[str, str]
) -> tuple[Spec, dict[str, np.ndarray], list[str]]:
    """A `.keras` archive: its config (through `parse`), its weights by structural name, and
    the optimizer tensors beside them."""
    source = str(path)
    with _archive(path) as zf:
        metadata = zip_member(zf, METADATA_MEMBER, MAX_JSON_BYTES, source)
        if not isinstance(json_of(metadata, METADATA_MEMBER, source), Mapping):
            raise UserError(f"{source}: {METADATA_MEMBER} is not a JSON object")
        config = zip_member(zf, CONFIG_MEMBER, MAX_JSON_BYTES, source)
        spec = parse(json_of(config, CONFIG_MEMBER, source), source)
        with _weights_h5(zf, path) as h5:
            weights, optimizer = read_weights(h5, spec, source, where)
    return spec, weights, optimizer


@contextlib.contextmanager
def _archive(path: Path):
    """The `.keras` zip, its errors as one line."""
    try:
        with zipfile.ZipFile(path) as zf:
            yield zf
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise UserError(f"{path}: not a valid .keras file (not a readable zip: {err})") from None


@contextlib.contextmanager
def _weights_h5(zf: zipfile.ZipFile, path: Path):
    """The archive's model.weights.h5, opened by the hardened reader. Keras stores it
    uncompressed: HDF5 reads it in place through a window onto the archive, never inflated
    into memory whole."""
    source = str(path)
    with path.open("rb") as raw_file:
        member = _stored_window(zf, raw_file, WEIGHTS_MEMBER, source)
        if member is None:
            member = io.BytesIO(zip_member(zf, WEIGHTS_MEMBER, MAX_WEIGHTS_BYTES, source))
        with open_h5(member, f"{source}: {WEIGHTS_MEMBER}") as h5:
            yield h5


def read_optimizer(
    path: Path, variables: list[tuple[str, tuple[int, ...], str]]
) -> list[np.ndarray] | None:
    """A `.keras` archive's optimizer variables, `optimizer/vars/<i>` for each (label, shape,
    dtype) of `variables` in order, each through the same gate as a weight (dtype, the shape
    the config implies, storage); None when the file holds none. Missing or extra ones are
    refused."""
    source = str(path)
    with _archive(path) as zf, _weights_h5(zf, path) as h5:
        tree = walk(h5, source)
        found = sorted(n for n in tree.datasets if n.startswith("optimizer/"))
        if not found:
            return None
        paths = [f"optimizer/vars/{i}" for i in range(len(variables))]
        missing = [(p, v[0]) for p, v in zip(paths, variables, strict=True)
                   if p not in tree.datasets]
        extra = [n for n in found if n not in paths]
        if missing or extra:
            what = (f"lacks {missing[0][0]} ({missing[0][1]})" if missing
                    else f"has an unexpected {extra[0]}")
            raise UserError(f"{source}: its optimizer {what}: the config's optimizer over "
                            f"this model has {len(variables)} variables, the file "
                            f"{len(found)}")
        return [_read_array(tree, p, shape, label, source, dtype)
                for p, (label, shape, dtype) in zip(paths, variables, strict=True)]


def config_of(path: Path) -> object:
    """A `.keras` archive's config.json alone (`--config model.keras`)."""
    source = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return json_of(zip_member(zf, CONFIG_MEMBER, MAX_JSON_BYTES, source), CONFIG_MEMBER,
                           source)
    except (zipfile.BadZipFile, KeyError) as err:
        raise UserError(f"{source}: no readable {CONFIG_MEMBER} ({err})") from None


# --- writing ------------------------------------------------------------------------------------


def write_h5_weights(h5: h5py.File, spec: Spec, tensor: Callable[[str], np.ndarray],
                     optimizer: tuple[str, list[np.ndarray]] | None = None) -> None:
    """The weights file Keras 3 writes: a `vars` group (named) per layer, even an empty one,
    and with `optimizer` (its name, its variables' values) the `optimizer/vars` group."""
    group = h5.create_group("layers")
    made = set()
    if spec.graph.input_path:
        group.create_group(spec.graph.input_path).create_group("vars").attrs["name"] = (
            spec.graph.input_name)
    for ns in spec.nodes:
        if not ns.node.path or ns.node.path in made:
            continue  # an operation has no group
        made.add(ns.node.path)
        vars_group = group.create_group(ns.node.path).create_group("vars")
        vars_group.attrs["name"] = ns.node.name
        for i, var in enumerate(ns.out.variables):
            vars_group.create_dataset(str(i), data=tensor(ns.key(var)))
    if optimizer is not None:  # (Keras's name for it, its variables in Keras's order)
        name, values = optimizer
        opt = h5.create_group("optimizer").create_group("vars")
        opt.attrs["name"] = name
        for i, value in enumerate(values):
            opt.create_dataset(str(i), data=value)
    h5.create_group("vars").attrs["name"] = spec.graph.name


def write_keras(tmp: Path, config: dict, spec: Spec, tensor: Callable[[str], np.ndarray],
                optimizer: tuple[str, list[np.ndarray]] | None = None) -> None:
    """A `.keras` archive: its weights built in an anonymous temporary file beside it, then
    streamed in (stored, not deflated, as Keras writes it)."""
    metadata = {"keras_version": KERAS_FORMAT_VERSION,
                "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    with tempfile.TemporaryFile(dir=tmp.parent) as scratch:
        with h5py.File(scratch, "w") as h5:
            write_h5_weights(h5, spec, tensor, optimizer)
        scratch.seek(0)
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr(METADATA_MEMBER, json.dumps(metadata))
            zf.writestr(CONFIG_MEMBER, json.dumps(config))
            with zf.open(WEIGHTS_MEMBER, "w", force_zip64=True) as member:
                shutil.copyfileobj(scratch, member, 1 << 20)


def write_weights_h5(tmp: Path, spec: Spec, tensor: Callable[[str], np.ndarray]) -> None:
    with h5py.File(tmp, "w") as h5:
        write_h5_weights(h5, spec, tensor)
