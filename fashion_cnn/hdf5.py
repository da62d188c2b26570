"""HDF5 read without trusting the file, for every reader of Keras files; no framework imported.

HDF5 can make a file read other files: an external link names an object in another file (a
FIFO there blocks forever), "external raw storage" takes a dataset's bytes from any local file
(/proc/self/environ), a virtual dataset maps other files' datasets. Soft links can loop, hard
links can make a group its own child, a filter pipeline can load a plugin, a deflate chunk can
inflate without bound inside HDF5, and a declared shape or chunk count can ask for terabytes.
Keras writes none of it (hard links, contiguous float32 datasets), so `walk` looks at the whole
tree first without following any link and checks every dataset's storage; `read_array` reads a
dataset only after its shape and dtype match what the caller expects, into an array allocated
here; `read_attr` and `attr_list` bound attributes before reading them.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fashion_cnn.errors import UserError, first_line

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
# bytes of one attribute: a legacy model_config (the book's: 5 KB; keras.applications'
# largest, NASNetLarge's: 1.6 MB)
MAX_ATTR_BYTES = 16 << 20
# Bytes inflated from deflate-compressed datasets, all of one file's together: Keras never
# compresses its weights, and a few hundred bytes of deflate can stand for a megabyte of zeros.
MAX_INFLATED_BYTES = 256 << 20
_LAYOUTS = {h5py.h5d.COMPACT: "compact", h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "c"}


def chunk_bound(elements: int) -> int:
    """The most chunks a dataset of `elements` values may be split into."""
    return elements // 1024 + 64


@dataclass
class H5Tree:
    """Every group and dataset of a checked file by path ("" is the root, no leading slash)."""

    groups: dict[str, h5py.Group]
    datasets: dict[str, h5py.Dataset]
    inflated: int = 0  # bytes inflated so far from this file's compressed datasets


def check_storage(dataset: h5py.Dataset, path: str, source: str) -> None:
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
        if count > chunk_bound(elements):
            raise UserError(
                f"{source}: {path} is split into {count} chunks for {elements} values, more "
                f"than {chunk_bound(elements)} allowed"
            )


def walk(h5: h5py.File, source: str) -> H5Tree:
    """Every object of the file, reached through hard links only, each once; any soft or
    external link, any object reached twice, anything but a group or a dataset is refused.
    Links are looked at (`getlink=True`), never followed; no dataset is read."""
    tree = H5Tree({"": h5}, {})
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
                check_storage(obj, path, source)
                tree.datasets[path] = obj
            else:
                raise UserError(f"{source}: {path} is a {type(obj).__name__}; refused")
    return tree


def inflate_chunks(dataset: h5py.Dataset, out: np.ndarray, path: str, source: str) -> None:
    """Read a deflate-compressed dataset chunk by chunk, inflating each here with a cap of its
    declared size (HDF5's own deflate filter inflates without bound)."""
    chunks = dataset.chunks
    file_dtype = dataset.dtype
    chunk_bytes = math.prod(chunks) * file_dtype.itemsize
    stored = dataset.id.get_num_chunks()
    if stored > chunk_bound(out.size):
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


ALIGNMENT = 64  # bytes: what TensorFlow's and PyTorch's CPU allocators give every tensor


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array whose data starts on a 64-byte boundary, so that
    TensorFlow can take it over without a copy (it aborts the process on a misaligned buffer)."""
    nbytes = 4 * int(np.prod(shape, dtype=np.int64))
    buffer = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % ALIGNMENT
    return buffer[start : start + nbytes].view(np.float32).reshape(shape)


def aligned(array: np.ndarray) -> np.ndarray:
    """`array` as a C-contiguous float32 array on a 64-byte boundary: itself when it is one,
    else one copy."""
    if (array.dtype == np.float32 and array.flags.c_contiguous
            and (array.size == 0 or array.ctypes.data % ALIGNMENT == 0)):
        return array
    out = aligned_empty(array.shape)
    np.copyto(out, array, casting="same_kind")
    return out


def read_array(
    tree: H5Tree, path: str, shape: tuple[int, ...], label: str, source: str
) -> np.ndarray:
    """The float32 dataset at `path`, whose declared shape must be `shape`: shape and dtype are
    checked from the metadata first, then it is read into a native float32 array allocated here
    (big-endian float32 is valid data and is converted). `label` names it in messages."""
    if path not in tree.datasets:
        if path in tree.groups:
            raise UserError(f"{source}: {path} is not a dataset")
        raise UserError(f"{source}: missing tensor {label}")
    dataset = tree.datasets[path]
    if dataset.shape != shape:
        raise UserError(
            f"{source}: {label} has shape {dataset.shape}, but the model's config implies {shape}"
        )
    if dataset.dtype.kind != "f" or dataset.dtype.itemsize != 4:
        raise UserError(f"{source}: {label} has dtype {dataset.dtype}, expected float32")
    if dataset.compression is not None:  # deflate: the only filter check_storage lets by
        tree.inflated += dataset.nbytes
        if tree.inflated > MAX_INFLATED_BYTES:
            raise UserError(
                f"{source}: its compressed tensors inflate to more than {MAX_INFLATED_BYTES:,} "
                f"bytes (at {path}); refused"
            )
        out = aligned_empty(shape)
        inflate_chunks(dataset, out, path, source)
        return out
    out = aligned_empty(shape)
    dataset.read_direct(out)
    return out


def read_integer(tree: H5Tree, path: str, shape: tuple[int, ...], label: str,
                 source: str) -> np.ndarray:
    """The small integer dataset at `path` (a Keras counter such as Normalization's `count`,
    shape () in the config), its shape and type checked from the metadata, read as int64."""
    if path not in tree.datasets:
        raise UserError(f"{source}: missing tensor {label}")
    dataset = tree.datasets[path]
    if dataset.shape != shape or int(np.prod(shape)) > 1 << 10:
        raise UserError(
            f"{source}: {label} has shape {dataset.shape}, but the model's config implies {shape}"
        )
    if dataset.dtype.kind not in "iu" or dataset.dtype.itemsize > 8:
        raise UserError(f"{source}: {label} has dtype {dataset.dtype}, expected an integer")
    out = np.empty(shape, dtype=dataset.dtype.newbyteorder("="))
    dataset.read_direct(out)
    return out.astype(np.int64)


def read_attr(group: h5py.Group, name: str, where: str, source: str) -> object:
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


def attr_list(group: h5py.Group, name: str, where: str, source: str) -> list[str] | None:
    """A list-of-strings attribute as Keras writes it (possibly split into name0, name1, …)."""
    if name in group.attrs:
        chunks = [read_attr(group, name, f"{where}@{name}", source)]
    elif f"{name}0" in group.attrs:
        chunks, k = [], 0
        while f"{name}{k}" in group.attrs:
            if k >= MAX_ATTR_ITEMS:
                raise UserError(f"{source}: attribute {where}@{name} has too many parts")
            chunks.append(read_attr(group, f"{name}{k}", f"{where}@{name}{k}", source))
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


def open_h5(file: object, source: str) -> h5py.File:
    try:
        return h5py.File(file, "r")
    except OSError as err:
        raise UserError(f"{source}: not a readable HDF5 file ({first_line(err)})") from None


MAX_FILE_BYTES = 256 << 20  # an HDF5 file or a .keras archive member handed to HDF5


def check_keras_file(path: str | os.PathLike) -> None:
    """Refuse, before Keras opens it, a `.keras`/`.h5` whose HDF5 would read outside itself or
    exhaust memory (links, external or virtual storage, filters, chunk counts): for callers that
    hand the file to `keras.models.load_model` itself (Keras follows all of these)."""
    path = Path(path)
    source = str(path)
    try:
        if zipfile.is_zipfile(path):  # .keras: the weights member, checked from memory
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if i.filename.endswith(".h5")]
                if any(i.file_size > MAX_FILE_BYTES for i in infos):
                    raise UserError(f"{source}: an HDF5 member is larger than {MAX_FILE_BYTES}")
                members = [(f"{source}: {i.filename}", zf.read(i)) for i in infos]
            for where, data in members:
                with open_h5(io.BytesIO(data), where) as h5:
                    walk(h5, where)
        else:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise UserError(f"{source}: larger than {MAX_FILE_BYTES} bytes")
            with open_h5(path, source) as h5:
                walk(h5, source)
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"{source}: not a readable Keras file ({first_line(err)})") from None
