"""Hostile HDF5 (.keras, .h5, .weights.h5) is refused by the real command lines: one line, no
outside file read, no hang, bounded memory (issue 12, the input side). Big-endian float32, which
is valid data, must port exactly.

Each case is a crafted file in tmp_path run through the CLI a user would run, in its own
process; `refuse` (tests/hostile.py) asserts what every refusal must hold.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import h5py
import numpy as np
import pytest
from hostile import (  # the shared helpers; the fixtures come through conftest.py
    BIAS,
    KERNEL,
    assert_bounded,
    hostile_keras,
    legacy_bias,
    replace,
    run_cli,
)

from parity.book import keras_to_torch
from torch_impl.checkpoint import load_state_dict

pytestmark = pytest.mark.slow  # each case runs a real CLI in its own interpreter


# --- HDF5: links, storage, filters, declared sizes ------------------------------------------------


@pytest.mark.parametrize("fmt", [".weights.h5", ".h5", ".keras"])
def test_external_raw_storage(keras_ckpts, tmp_path, canary, refuse, fmt):
    """A weight whose bytes HDF5 would take from another local file (here the canary; in the
    attack /proc/self/environ): before, the port passed and wrote the secret into DST."""

    def edit(h5, bias):
        replace(
            h5,
            bias,
            lambda h, p: h.create_dataset(p, (10,), "<f4", external=[(str(canary.path), 0, 40)]),
        )

    src = hostile_keras(keras_ckpts, tmp_path, fmt, edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(str(src), "has external raw storage", "no file outside the checkpoint is read"),
    )


def test_external_raw_storage_refused_by_check(keras_ckpts, good_pt, tmp_path, canary, refuse):
    def edit(h5, bias):
        replace(
            h5,
            bias,
            lambda h, p: h.create_dataset(p, (10,), "<f4", external=[(str(canary.path), 0, 40)]),
        )

    src = hostile_keras(keras_ckpts, tmp_path, ".keras", edit)
    refuse(
        "parity.check",
        src,
        good_pt,
        "--samples",
        "20",
        "--json",
        tmp_path / "r.json",
        fragments=("has external raw storage",),
    )


@pytest.mark.parametrize("target", ["canary", "fifo"])
@pytest.mark.parametrize("fmt", [".weights.h5", ".keras"])
def test_external_link(keras_ckpts, tmp_path, canary, refuse, fmt, target):
    """An external link to another HDF5 file's dataset, or to a FIFO (opening it would block
    forever): refused by looking at the link, never following it."""
    if target == "fifo":
        other = tmp_path / "blocks.fifo"
        os.mkfifo(other)
    else:
        other = canary.h5

    def edit(h5, bias):
        replace(h5, bias, lambda h, p: h.__setitem__(p, h5py.ExternalLink(str(other), "/x")))

    src = hostile_keras(keras_ckpts, tmp_path, fmt, edit)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(f"{BIAS} is an external link",))


@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_keras_ref_visualize_checks_the_file_before_keras_opens_it(
    keras_ckpts, tmp_path, canary, refuse, fmt
):
    """keras_ref.visualize hands the file to keras.models.load_model, whose h5py follows
    external storage: the file's HDF5 is checked first (fashion_cnn.hdf5.check_keras_file)."""

    def edit(h5, bias):
        replace(
            h5,
            bias,
            lambda h, p: h.create_dataset(p, (10,), "<f4", external=[(str(canary.path), 0, 40)]),
        )

    src = hostile_keras(keras_ckpts, tmp_path, fmt, edit)
    refuse(
        "keras_ref.visualize", src, "--out", tmp_path / "pictures",
        fragments=(str(src), "has external raw storage"),
    )


def test_soft_link_loop(keras_ckpts, tmp_path, refuse):
    """A soft link to itself (h5py's visititems gave a traceback)."""

    def edit(h5, bias):
        replace(h5, bias, lambda h, p: h.__setitem__(p, h5py.SoftLink(f"/{p}")))

    src = hostile_keras(keras_ckpts, tmp_path, ".weights.h5", edit)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(f"{BIAS} is a soft link",))


def test_soft_link_out_of_the_tree(keras_ckpts, tmp_path, canary, refuse):
    """In a legacy .h5, whose reader ignores datasets outside model_weights/: the last bias is
    a soft link to a dataset stashed at the root (the canary's floats)."""

    def edit(h5, bias):
        h5["stash"] = canary.floats()
        replace(h5, bias, lambda h, p: h.__setitem__(p, h5py.SoftLink("/stash")))

    src = hostile_keras(keras_ckpts, tmp_path, ".h5", edit)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=("is a soft link (to '/stash')",))


def test_hard_link_cycle(keras_ckpts, tmp_path, refuse):
    """A group that contains itself: the walk would never end."""

    def edit(h5, bias):
        h5["layers/dense/again"] = h5["layers"]

    src = hostile_keras(keras_ckpts, tmp_path, ".weights.h5", edit)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=("under 2 names (hard links)",))


def test_virtual_dataset(keras_ckpts, tmp_path, canary, refuse):
    def edit(h5, bias):
        layout = h5py.VirtualLayout((10,), "<f4")
        layout[:] = h5py.VirtualSource(str(canary.h5), "x", shape=(10,))
        replace(h5, bias, lambda h, p: h.create_virtual_dataset(p, layout))

    src = hostile_keras(keras_ckpts, tmp_path, ".weights.h5", edit)
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(f"{BIAS} is a virtual dataset",))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"compression": "lzf"}, "lzf"),
        ({"shuffle": True, "compression": "gzip"}, "shuffle, deflate"),
        ({"fletcher32": True}, "fletcher32"),
    ],
)
def test_filters_other_than_deflate(keras_ckpts, tmp_path, refuse, options, named):
    """Right shape, right values, a filter we do not expect (HDF5 would run it, or look for a
    plugin to run): refused, strictly."""

    def edit(h5, bias):
        values = h5[bias][()]
        replace(h5, bias, lambda h, p: h.create_dataset(p, data=values, **options))

    src = hostile_keras(keras_ckpts, tmp_path, ".weights.h5", edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(f"{BIAS} is stored with the filter(s) {named}", "only uncompressed or deflate"),
    )


def deflate_bomb(total: int, block: int = 1 << 24) -> bytes:
    """A valid zlib stream of `total` zero bytes (1 GB: 1 MB of stream), made in a second:
    after a full flush the compressor's output for the same block repeats byte for byte."""
    zeros = bytes(block)
    deflate = zlib.compressobj(9)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()[:-4]  # the final empty block, without the checksum of 2 blocks
    adler = 1
    for _ in range(total // block):
        adler = zlib.adler32(zeros, adler)
    return first + again * (total // block - 1) + end + struct.pack(">I", adler)


def test_deflate_chunk_that_inflates_without_bound(keras_ckpts, tmp_path, refuse):
    """The dense kernel as one deflate chunk (1.25 MB) whose stream holds 1 GB of zeros:
    HDF5's own filter inflates all of it (doubling its buffer as it goes); ours stops one byte
    past the chunk's size."""
    stream = deflate_bomb(1 << 30)

    def edit(h5, bias):
        def make(h, p):
            h.create_dataset(p, (3136, 100), "<f4", chunks=(3136, 100), compression="gzip")
            h[p].id.write_direct_chunk((0, 0), stream)

        replace(h5, KERNEL, make)

    src = hostile_keras(keras_ckpts, tmp_path, ".keras", edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(f"{KERNEL} has a chunk that does not inflate to its 1254400 bytes",),
    )


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1024, 1024), "is split into 1048576 chunks for 1048576 values, more than 1088 allowed"),
        ((3136, 100), "is split into 313600 chunks for 313600 values, more than 370 allowed"),
    ],
)
def test_one_element_chunks(keras_ckpts, tmp_path, refuse, shape, message):
    """2²⁰ one-element chunks declared in a small file (4.6 GB before); and the right shape in
    one-value chunks, refused by the chunk bound alone."""

    def edit(h5, bias):
        replace(h5, KERNEL, lambda h, p: h.create_dataset(p, shape, "<f4", chunks=(1, 1)))

    src = hostile_keras(keras_ckpts, tmp_path, ".weights.h5", edit)
    assert src.stat().st_size < 4 << 20
    refuse("parity.port", src, tmp_path / "out.pt", fragments=(f"{KERNEL} {message}",))


def test_declared_terabyte_kernel(keras_ckpts, tmp_path, refuse):
    """A (10⁶, 10⁶) float32 kernel, 4 TB, declared in a small file: refused from its shape."""

    def edit(h5, bias):
        replace(h5, KERNEL, lambda h, p: h.create_dataset(p, (10**6, 10**6), "<f4", chunks=True))

    src = hostile_keras(keras_ckpts, tmp_path, ".weights.h5", edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(
            f"{KERNEL} (dense/kernel) has shape (1000000, 1000000), but the model's config implies "
            "(3136, 100)",
        ),
    )


def test_oversized_model_config_attribute(keras_ckpts, tmp_path, refuse):
    big = b'{"pad": "' + b"x" * (17 << 20) + b'"}'

    def edit(h5, bias):
        h5.attrs["model_config"] = big

    src = hostile_keras(keras_ckpts, tmp_path, ".h5", edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(f"attribute /@model_config is {len(big)} bytes, more than 16777216 allowed",),
    )


@pytest.mark.parametrize("fmt", [".weights.h5", ".h5", ".keras"])
def test_big_endian_float32_is_accepted(keras_ckpts, tmp_path, fmt):
    """`>f4` is valid float32 data: every weight rewritten big-endian (the bias also deflated
    in chunks) ports, and the result holds exactly the original weights."""

    def edit(h5, bias):
        paths = []
        h5.visititems(lambda n, o: paths.append(n) if isinstance(o, h5py.Dataset) else None)
        for path in paths:
            values = h5[path][()]
            del h5[path]
            options = {"compression": "gzip", "chunks": (4,)} if path == bias else {}
            h5.create_dataset(path, data=values.astype(">f4"), **options)

    src = hostile_keras(keras_ckpts, tmp_path, fmt, edit)
    if fmt == ".keras":
        with zipfile.ZipFile(src) as zf:
            h5_file = io.BytesIO(zf.read("model.weights.h5"))
    else:
        h5_file = src
    with h5py.File(h5_file, "r") as h5:
        bias = legacy_bias(h5) if fmt == ".h5" else BIAS
        assert h5[bias].dtype == np.dtype(">f4") and h5[bias].compression == "gzip"
    dst = tmp_path / "out.pt"
    run = run_cli("parity.port", src, dst, "--samples", "50", cwd=tmp_path)
    assert run.code == 0, run.err
    state = load_state_dict(dst)
    want = keras_to_torch(keras_ckpts["random"].weights)
    for key, value in want.items():
        assert np.array_equal(state[key].numpy(), value), key
    assert_bounded(run)
