"""Hostile JSON, PyTorch files, images and data folders are refused by the real command lines:
one line, no outside file read, no hang, bounded memory (issue 12, the input side).

Each case is a crafted file in tmp_path run through the CLI a user would run, in its own
process; `refuse` (tests/hostile.py) asserts what every refusal must hold.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import (  # the shared helpers; the fixtures come through conftest.py
    DEEP,
    hostile_keras,
    replace,
    write_zip,
)

from torch_impl.model import BookCNN

pytestmark = pytest.mark.slow  # each case runs a real CLI in its own interpreter


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
    from parity.pipeline import load_into

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
