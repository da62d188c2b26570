"""Hostile inputs are refused by the real command lines: one line, no outside file read, no hang,
bounded memory (issue 12, the input side).

Each case is a file crafted in tmp_path — real Keras- and PyTorch-written checkpoints with one
hostile edit (HDF5 external links and external raw storage pointed at a canary file, soft-link
loops, virtual datasets, unexpected filters, chunk and shape declarations that would exhaust
memory, deeply nested JSON, sparse/meta/quantized tensors, pickle payloads), corrupt images, gzip
bombs — and is run through the CLI a user would run, in its own process. Every run must: exit 1;
print exactly one line on stderr (no traceback, no ANSI colour); write nothing; leak no byte of
the canary secret to stdout, stderr or any file; finish within 60 s; and keep the child's own
peak RSS (os.wait4) under 1.5 GB. Big-endian float32, which is valid data, must port exactly.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from parity.mapping import keras_to_torch
from torch_impl.checkpoint import load_state_dict, save_state_dict
from torch_impl.model import BookCNN

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
MAX_RSS_MB = 1536
DEEP = 100_000  # nesting levels in the deep-JSON cases (json.loads alone overflows at ~1,000)

pytestmark = pytest.mark.slow  # each case runs a real CLI in its own interpreter


# --- running a CLI in its own process ------------------------------------------------------------


@dataclass
class Run:
    code: int | None  # None: killed after TIMEOUT_S
    out: str
    err: str
    seconds: float
    peak_mb: float  # this child's own peak RSS


# The CLI runs as the grandchild of a tiny wrapper process that reaps it with os.wait4 and reports
# its exit status and ru_maxrss on a pipe. Not as pytest's own child: a child's ru_maxrss counts
# the memory of the process it was forked from (until exec), and pytest holds TensorFlow.
_WRAPPER = """
import os, subprocess, sys, threading
report, timeout, *argv = sys.argv[1:]
child = subprocess.Popen(argv)
killer = threading.Timer(float(timeout), child.kill)
killer.start()
_, status, usage = os.wait4(child.pid, 0)
killer.cancel()
child.returncode = os.waitstatus_to_exitcode(status)
os.write(int(report), f"{child.returncode} {usage.ru_maxrss}".encode())
"""


def run_cli(module: str, *args, cwd: Path) -> Run:
    """`python -m module args…` with this worktree's code, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    read_end, write_end = os.pipe()
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _WRAPPER,
                str(write_end),
                str(TIMEOUT_S),
                sys.executable,
                "-m",
                module,
                *map(str, args),
            ],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            pass_fds=(write_end,),
            timeout=TIMEOUT_S + 30,
        )
        os.close(write_end)
        code, maxrss_kib = map(int, os.read(read_end, 100).split())
    finally:
        os.close(read_end)
    seconds = time.monotonic() - start
    return Run(
        None if seconds >= TIMEOUT_S and code < 0 else code,
        proc.stdout.decode("utf8", "replace"),
        proc.stderr.decode("utf8", "replace"),
        seconds,
        maxrss_kib / 1024,
    )


@dataclass(frozen=True)
class Canary:
    """A secret in a file beside the hostile input: 40 ASCII bytes, ten finite float32 values
    (exactly a dense_1 bias), so a reader that followed a link to it would find valid weights."""

    token: str
    path: Path  # the raw token
    h5: Path  # the token as a float32 dataset "x" of shape (10,)

    def floats(self) -> np.ndarray:
        return np.frombuffer(self.token.encode(), np.float32).copy()


@pytest.fixture
def canary(tmp_path) -> Canary:
    token = secrets.token_hex(20)
    path = tmp_path / "canary.txt"
    path.write_text(token)
    h5_path = tmp_path / "canary-data.h5"
    with h5py.File(h5_path, "w") as h5:
        h5["x"] = np.frombuffer(token.encode(), np.float32)
    return Canary(token, path, h5_path)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every regular file under `folder` (links to the real data left out): size and mtime."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def refuse(tmp_path, canary):
    """refuse(module, *args, fragments=[…]) → the one error line, after asserting everything
    the issue asks of a refusal."""

    def check(module: str, *args, fragments: tuple[str, ...] = ()) -> str:
        before = _files(tmp_path)
        run = run_cli(module, *args, cwd=tmp_path)
        assert run.code is not None, f"{module} did not finish within {TIMEOUT_S} s"
        assert run.code == 1, f"exit {run.code}; stderr: {run.err[-2000:]}"
        lines = run.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.err[-3000:]
        assert "Traceback" not in run.err and "\x1b" not in run.err, run.err
        assert canary.token not in run.out + run.err, "the canary secret was printed"
        # Nothing written or changed, so no output can hold the canary's bytes either.
        assert _files(tmp_path) == before, "a file was written or changed"
        assert run.peak_mb < MAX_RSS_MB, f"peak RSS {run.peak_mb:.0f} MB"
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
        print(f"{module} {run.seconds:.1f}s {run.peak_mb:.0f}MB: {lines[0]}")
        return lines[0]

    return check


# --- real checkpoints to start from ---------------------------------------------------------------



@pytest.fixture(scope="session")
def good_pt(keras_ckpts, tmp_path_factory) -> Path:
    """A real PyTorch checkpoint: the random Keras model's weights, mapped."""
    path = tmp_path_factory.mktemp("good") / "good.pt"
    state = keras_to_torch(keras_ckpts["random"].weights)
    save_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


BIAS = "layers/dense_1/vars/1"  # the last Dense's bias in the Keras 3 layout: (10,) float32
KERNEL = "layers/dense/vars/0"  # the first Dense's kernel: (3136, 100)


def legacy_bias(h5: h5py.File) -> str:
    """The last layer's bias in a legacy .h5 (model_weights/<name>/<its weight_names[1]>)."""
    names = [
        n.decode() if isinstance(n, bytes) else n for n in h5["model_weights"].attrs["layer_names"]
    ]
    wnames = h5["model_weights"][names[-1]].attrs["weight_names"]
    wname = wnames[1].decode() if isinstance(wnames[1], bytes) else wnames[1]
    return f"model_weights/{names[-1]}/{wname}"


def replace(h5: h5py.File, path: str, make) -> None:
    """Delete the dataset at `path`; `make(h5, path)` puts the hostile object there."""
    del h5[path]
    make(h5, path)


def hostile_keras(keras_ckpts, tmp_path: Path, fmt: str, edit) -> Path:
    """A copy of the random model's real `fmt` file (".keras", ".h5", ".weights.h5") with
    `edit(h5, bias_path)` applied to its HDF5 weights."""
    src = keras_ckpts["random"].files[fmt]
    dst = tmp_path / f"hostile{fmt}"
    if fmt != ".keras":
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as h5:
            edit(h5, legacy_bias(h5) if fmt == ".h5" else BIAS)
        return dst
    with zipfile.ZipFile(src) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "r+") as h5:
        edit(h5, BIAS)
    members["model.weights.h5"] = buffer.getvalue()
    write_zip(dst, members)
    return dst


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


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
    big = b'{"pad": "' + b"x" * (3 << 20) + b'"}'

    def edit(h5, bias):
        h5.attrs["model_config"] = big

    src = hostile_keras(keras_ckpts, tmp_path, ".h5", edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(f"attribute /@model_config is {len(big)} bytes, more than 1048576 allowed",),
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
    assert run.peak_mb < MAX_RSS_MB


# --- JSON nested deep enough to overflow the parser ---------------------------------------------


def deep_json() -> bytes:
    return b'{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}"


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
def test_deep_json_in_keras_archive(keras_ckpts, tmp_path, refuse, member):
    with zipfile.ZipFile(keras_ckpts["random"].files[".keras"]) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members[member] = deep_json()
    src = tmp_path / "deep.keras"
    write_zip(src, members)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(f"{src}: {member} nests {DEEP + 1} levels deep, more than 64 allowed",),
    )


def test_deep_json_in_legacy_model_config(keras_ckpts, tmp_path, refuse):
    def edit(h5, bias):
        h5.attrs["model_config"] = deep_json()

    src = hostile_keras(keras_ckpts, tmp_path, ".h5", edit)
    refuse(
        "parity.port",
        src,
        tmp_path / "out.pt",
        fragments=(f"{src}: model_config nests {DEEP + 1} levels deep",),
    )


@pytest.mark.parametrize("kind", ["deep", "fifo"])
def test_hostile_history_json(good_pt, data_dir, tmp_path, refuse, kind):
    """visualize --history: a deeply nested history.json, or a FIFO named as one (reading it
    would wait for a writer forever)."""
    history = tmp_path / "history.json"
    if kind == "deep":
        history.write_bytes(deep_json())
        fragment = f"{history}: the JSON text nests {DEEP + 1} levels deep"
    else:
        os.mkfifo(history)
        fragment = f"{history}: not a regular file"
    out = tmp_path / "pictures"
    refuse(
        "torch_impl.visualize",
        good_pt,
        "--history",
        history,
        "--out",
        out,
        "--data-dir",
        data_dir,
        fragments=(fragment,),
    )
    assert not out.exists() or not any(out.iterdir())


# --- PyTorch files ----------------------------------------------------------------------------


def _with(good_pt: Path, key: str, make) -> dict:
    state = torch.load(good_pt, weights_only=True)
    state[key] = make(state[key])
    return state


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("kind", "key", "make", "fragment"),
    [
        ("sparse", "dense2.bias", lambda t: t.to_sparse(), "is a sparse_coo tensor"),
        ("csr", "dense1.weight", lambda t: t.to_sparse_csr(), "is a sparse_csr tensor"),
        ("meta", "dense2.bias", lambda t: t.to("meta"), "is a meta tensor"),
        (
            "quantized",
            "dense2.bias",
            lambda t: torch.quantize_per_tensor(t, 0.01, 0, torch.qint8),
            "is a quantized tensor",
        ),
        (
            "nested",
            "dense2.bias",
            lambda t: torch.nested.nested_tensor([t[:5], t[5:]]),
            "is a nested tensor",
        ),
    ],
)
def test_tensors_that_are_not_dense(good_pt, tmp_path, refuse, kind, key, make, fragment):
    src = tmp_path / f"{kind}.pt"
    torch.save(_with(good_pt, key, make), src)
    refuse(
        "torch_impl.evaluate",
        src,
        fragments=(f"{src}: {key} {fragment}", "only dense float32 tensors"),
    )


class Payload:
    """Unpickling this would call os.system: a marker file appears if it is ever run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_gets_our_line(good_pt, tmp_path, refuse):
    """Our own line, naming the global: never torch's advice to rerun with weights_only=False,
    never its ANSI bold."""
    marker = tmp_path / "payload-ran"
    state = torch.load(good_pt, weights_only=True)
    state["conv1.extra"] = Payload(marker)
    src = tmp_path / "payload.pt"
    torch.save(state, src)
    line = refuse(
        "parity.port",
        src,
        tmp_path / "out.keras",
        fragments=(
            f"{src}: refused: the pickle holds more than tensors and containers",
            "GLOBAL 'posix.system'",
            "nothing from the file was run",
        ),
    )
    assert "weights_only" not in line and "\x1b" not in line
    assert not marker.exists(), "the payload ran"


def test_key_with_a_newline_prints_one_line(good_pt, tmp_path, refuse):
    state = torch.load(good_pt, weights_only=True)
    state["conv1.weight\nerror: all fine \x1b[32mOK\x1b[0m"] = torch.zeros(1)
    src = tmp_path / "newline.pt"
    torch.save(state, src)
    refuse("torch_impl.evaluate", src, fragments=(r"unexpected conv1.weight\nerror: all fine OK",))


# --- images --------------------------------------------------------------------------------------


def _tiff() -> bytearray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="TIFF")
    return bytearray(buffer.getvalue())


def corrupt_tiff() -> bytes:
    """StripOffsets (tag 273) retyped as ASCII: Pillow raises TypeError (a traceback before)."""
    data = _tiff()
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry : entry + 2])[0] == 273:
            data[entry + 2 : entry + 4] = struct.pack("<H", 2)
    return bytes(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb() -> bytes:
    """A valid PNG header declaring 100,000 × 100,000 pixels (10 GB as 8-bit gray)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100_001)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + (_png_chunk(b"IEND", b""))
    )


def corrupt_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    body = data.index(b"IDAT") + 4
    data[body + 2 : body + 10] = b"\xff" * 8  # the deflate stream, after its 2-byte header
    return bytes(data)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n%%EOF\n"


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        ("corrupt.tiff", corrupt_tiff, "not a readable image (TypeError: "),
        ("corrupt.png", corrupt_png, "not a readable image ("),
        ("bomb.png", png_bomb, "not a readable image (DecompressionBombError: "),
        ("ghostscript.eps", lambda: EPS, "not a readable image (UnidentifiedImageError: "),
    ],
)
def test_hostile_images(good_pt, tmp_path, refuse, name, make, fragment):
    image = tmp_path / name
    image.write_bytes(make())
    refuse("torch_impl.predict", good_pt, image, fragments=(f"{image}: {fragment}",))


# --- data folders -------------------------------------------------------------------------------


def data_folder(data_dir: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    """The three real files linked, and `content` as the fourth."""
    folder = tmp_path / "data"
    folder.mkdir()
    for real in Path(data_dir).glob("*.gz"):
        if real.name != name:
            (folder / real.name).symlink_to(real)
    (folder / name).write_bytes(content)
    return folder


def gzip_bomb(total: int = 2 << 30) -> bytes:
    """A valid train-images header, then `total` bytes of zeros: gzip members of 64 MB of
    zeros each (~64 KB compressed), so 2 GB inflate from 2 MB of file."""
    header = struct.pack(">IIII", 0x803, 60_000, 28, 28)
    member = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    return gzip.compress(header, mtime=0) + member * (total // (64 << 20))


def test_gzip_bomb_in_a_data_folder(data_dir, tmp_path, refuse):
    bomb = gzip_bomb()
    assert len(bomb) < 4 << 20
    folder = data_folder(data_dir, tmp_path, "train-images-idx3-ubyte.gz", bomb)
    refuse(
        "fashion_cnn.fashion_mnist",
        "--data-dir",
        folder,
        fragments=("train-images-idx3-ubyte.gz: has trailing bytes: more than the 47040000 bytes",),
    )


def test_gzip_with_trailing_data(data_dir, tmp_path, refuse):
    real = gzip.decompress((Path(data_dir) / "t10k-labels-idx1-ubyte.gz").read_bytes())
    folder = data_folder(
        data_dir, tmp_path, "t10k-labels-idx1-ubyte.gz", gzip.compress(real + b"\x01" * 16)
    )
    refuse(
        "fashion_cnn.fashion_mnist",
        "--data-dir",
        folder,
        fragments=("t10k-labels-idx1-ubyte.gz: has trailing bytes",),
    )


def test_garbage_after_the_gzip_stream(data_dir, tmp_path, refuse):
    raw = (Path(data_dir) / "t10k-labels-idx1-ubyte.gz").read_bytes()
    folder = data_folder(data_dir, tmp_path, "t10k-labels-idx1-ubyte.gz", raw + b"garbage!")
    refuse(
        "fashion_cnn.fashion_mnist",
        "--data-dir",
        folder,
        fragments=("t10k-labels-idx1-ubyte.gz: corrupt .gz",),
    )


# --- the one-line edge, in-process ------------------------------------------------------------


def test_cli_entry_prints_one_line_whatever_the_message(capsys):
    from fashion_cnn.errors import UserError, cli_entry

    @cli_entry
    def main(argv=None):
        raise UserError("x.pt: key 'a\nb\r\tc' \x1b[1mbold\x1b[0m \u2028 \x85 \x1b]0;title\x07end")

    assert main([]) == 1
    err = capsys.readouterr().err
    assert err == "error: x.pt: key 'a\\nb\\r\\tc' bold \\u2028 \\x85 end\n"


def test_model_is_untouched_by_a_refused_hostile_file(keras_ckpts, tmp_path, canary):
    from fashion_cnn.errors import UserError
    from parity.weights import load_into

    def edit(h5, bias):
        replace(
            h5,
            bias,
            lambda h, p: h.create_dataset(p, (10,), "<f4", external=[(str(canary.path), 0, 40)]),
        )

    src = hostile_keras(keras_ckpts, tmp_path, ".h5", edit)
    model = BookCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="external raw storage"):
        load_into(model, src)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("text", ["{}", '{"a": "[[[[\\"[["}', "[" * 64 + "]" * 64])
def test_json_within_limits_parses(text):
    from fashion_cnn.jsonfile import loads

    assert loads(text, "t", "src") == json.loads(text)
