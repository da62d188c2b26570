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
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from parity.mapping import keras_to_torch
from parity.testdata import session_checkpoints
from torch_impl.checkpoint import save_state_dict

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
MAX_RSS_MB = 1536
DEEP = 100_000  # nesting levels in the deep-JSON cases (json.loads alone overflows at ~1,000)


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
def keras_ckpts(tmp_path_factory, data_dir):
    pytest.importorskip("keras")
    return session_checkpoints(tmp_path_factory, data_dir)


@pytest.fixture(scope="session")
def good_pt(keras_ckpts, tmp_path_factory) -> Path:
    """A real PyTorch checkpoint: the random Keras model's weights, mapped."""
    path = tmp_path_factory.mktemp("good") / "good.pt"
    state = keras_to_torch(keras_ckpts["random"].weights)
    save_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


# --- JSON nested deep enough to overflow the parser ---------------------------------------------


def deep_json() -> bytes:
    return b'{"a": ' + b"[" * DEEP + b"]" * DEEP + b"}"


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


@pytest.mark.parametrize("text", ["{}", '{"a": "[[[[\\"[["}', "[" * 64 + "]" * 64])
def test_json_within_limits_parses(text):
    from fashion_cnn.jsonfile import loads

    assert loads(text, "t", "src") == json.loads(text)
