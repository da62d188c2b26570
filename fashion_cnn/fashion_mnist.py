"""The real Fashion-MNIST, verified, and the book's split — framework-free (numpy only).

Both sides use this one module: the PyTorch product (`torch_impl.data`) and the Keras reference
(`keras_ref.data`), so both see byte-identical arrays and the identical split.

Where the four official IDX files come from, in order:
  1. `data_dir` (the CLIs' `--data-dir`) or the environment variable FASHION_MNIST_DIR;
  2. Debian/Ubuntu's package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist/);
  3. a user cache (~/.cache/fashion-mnist, or $XDG_CACHE_HOME/fashion-mnist), filled by
     `download()` from the official mirror: written to a temporary name, renamed once verified.
An explicit directory is never silently replaced by another source.

Every file is verified before use: the IDX header (magic, dimensions, count), the payload length,
labels < 10, as many labels as images, and the SHA-256 of the *decompressed* bytes. (Debian
re-compressed the `.gz` files, so their checksums differ from the official `.gz` ones; the
decompressed content is the same.)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import struct
import sys
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_cnn.cli import add_data_dir, add_version
from fashion_cnn.errors import UserError, cli_entry

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# The official mirror (Zalando Research), then the copy Keras's load_data() downloads from.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# The names the book prints (8-2).
CLASS_NAMES_KO = (
    "티셔츠", "바지", "스웨터", "드레스", "코트", "샌달", "셔츠", "스니커즈", "가방", "앵클 부츠",
)

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass(frozen=True)
class IdxFile:
    name: str  # file name without .gz
    magic: int
    count: int
    sha256: str  # of the decompressed bytes (header included)


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte", IMAGE_MAGIC, 60_000,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte", LABEL_MAGIC, 60_000,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte", IMAGE_MAGIC, 10_000,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte", LABEL_MAGIC, 10_000,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

HOW_TO_FIX = (
    "get a good copy: `sudo apt-get install dataset-fashion-mnist`, or delete it and run "
    "`python -m fashion_cnn.fashion_mnist --download`"
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashion-mnist"


def _find(directory: Path, spec: IdxFile) -> Path | None:
    for candidate in (directory / f"{spec.name}.gz", directory / spec.name):
        if candidate.is_file():
            return candidate
    return None


class _Reader:
    """An IDX file read as a stream (inflated on the fly when gzip'd), never past what is asked
    for, hashing every byte read: a gzip bomb is stopped one byte past the expected size."""

    def __init__(self, path: Path, compressed: bool) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        try:
            self._raw = path.open("rb")
        except OSError as err:
            raise UserError(f"{path}: cannot read: {err.strerror}") from None
        self._file = gzip.GzipFile(fileobj=self._raw, mode="rb") if compressed else self._raw

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end of the data)."""
        try:
            data = self._file.read(size)
        except EOFError:
            raise UserError(
                f"{self.path}: truncated .gz (the download stopped early?); {HOW_TO_FIX}"
            ) from None
        except (gzip.BadGzipFile, zlib.error, OSError) as err:
            raise UserError(f"{self.path}: corrupt .gz ({err}); {HOW_TO_FIX}") from None
        self.digest.update(data)
        return data

    def close(self) -> None:
        self._file.close()
        self._raw.close()


def parse_idx(path: Path, spec: IdxFile, *, compressed: bool | None = None) -> np.ndarray:
    """Read and verify one IDX file (gzip'd when its name ends in .gz); return its uint8 array.

    Shapes: images (N, 28, 28), labels (N,). Raises UserError naming the file and the defect.
    The header is read first; then exactly the payload it announces, plus one byte to detect
    trailing data, so no more than that is ever inflated or held in memory.
    """
    reader = _Reader(path, path.suffix == ".gz" if compressed is None else compressed)
    try:
        return _parse(reader, path, spec)
    finally:
        reader.close()


def _parse(reader: _Reader, path: Path, spec: IdxFile) -> np.ndarray:
    want_dims = 3 if spec.magic == IMAGE_MAGIC else 1
    head = reader.read(8)
    if len(head) < 8:
        raise UserError(f"{path}: too short for an IDX header ({len(head)} bytes); {HOW_TO_FIX}")
    (magic,) = struct.unpack(">I", head[:4])
    if magic != spec.magic:
        kinds = {IMAGE_MAGIC: "an image file", LABEL_MAGIC: "a label file"}
        found = kinds.get(magic, "not an unsigned-byte IDX file")
        raise UserError(
            f"{path}: wrong IDX magic 0x{magic:08x}, expected 0x{spec.magic:08x} "
            f"({kinds[spec.magic]}); this is {found} — are the image and label files swapped?"
        )
    header_len = 4 + 4 * want_dims
    head += reader.read(header_len - len(head))
    if len(head) < header_len:
        raise UserError(f"{path}: truncated IDX header; {HOW_TO_FIX}")
    dims = struct.unpack(f">{want_dims}I", head[4:header_len])
    want = (spec.count, 28, 28) if want_dims == 3 else (spec.count,)
    if dims != want:
        if want_dims == 1:
            raise UserError(
                f"{path}: holds {dims[0]} labels, expected {spec.count} (one per image); "
                f"{HOW_TO_FIX}"
            )
        raise UserError(f"{path}: IDX dimensions {dims}, expected {want}; {HOW_TO_FIX}")
    expected = int(np.prod(want))
    data = reader.read(expected + 1)  # one byte more than announced: trailing data, or a bomb
    if len(data) != expected:
        if len(data) < expected:
            raise UserError(
                f"{path}: truncated: {len(data)} bytes of data, expected {expected}; {HOW_TO_FIX}"
            )
        raise UserError(
            f"{path}: has trailing bytes: more than the {expected} bytes of data its header "
            f"announces; {HOW_TO_FIX}"
        )
    array = np.frombuffer(data, dtype=np.uint8).reshape(want)
    if want_dims == 1 and array.max() >= 10:
        bad = int(np.argmax(array >= 10))
        raise UserError(f"{path}: label {array[bad]} at index {bad} is out of range 0-9")
    digest = reader.digest.hexdigest()
    if digest != spec.sha256:
        raise UserError(
            f"{path}: content differs from the official Fashion-MNIST "
            f"(SHA-256 of the decompressed bytes {digest[:16]}…, expected {spec.sha256[:16]}…); "
            f"{HOW_TO_FIX}"
        )
    return array


def locate(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the four files, from the first source that has them."""
    explicit = data_dir or os.environ.get("FASHION_MNIST_DIR")
    if explicit:
        directory = Path(explicit)
        missing = [s.name for s in FILES.values() if _find(directory, s) is None]
        if missing:
            raise UserError(
                f"{directory / missing[0]}.gz: missing (the Fashion-MNIST directory given by "
                f"{'--data-dir' if data_dir else 'FASHION_MNIST_DIR'} lacks {', '.join(missing)})"
            )
        return directory
    for directory in (DEBIAN_DIR, cache_dir()):
        if all(_find(directory, s) for s in FILES.values()):
            return directory
    raise UserError(
        f"{DEBIAN_DIR}/train-images-idx3-ubyte.gz: missing — Fashion-MNIST not found in "
        f"{DEBIAN_DIR} nor {cache_dir()}; run `make data` (apt-get install dataset-fashion-mnist, "
        f"or `python -m fashion_cnn.fashion_mnist --download`), or set FASHION_MNIST_DIR"
    )


def load_data(
    data_dir: str | os.PathLike | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Verified arrays, shaped like `keras.datasets.fashion_mnist.load_data()`.

    Returns ((train_input (60000, 28, 28) uint8, train_target (60000,) uint8),
             (test_input (10000, 28, 28) uint8, test_target (10000,) uint8)).
    """
    directory = locate(data_dir)
    arrays = {key: parse_idx(_find(directory, spec), spec) for key, spec in FILES.items()}
    return (
        (arrays["train_images"], arrays["train_labels"]),
        (arrays["test_images"], arrays["test_labels"]),
    )


def book_split(
    train_input: np.ndarray, train_target: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The book's preprocessing and split (8-2), verbatim.

    Returns train_scaled (48000, 28, 28, 1), val_scaled (12000, 28, 28, 1) float64 in [0, 1],
    train_target (48000,), val_target (12000,).
    """
    from sklearn.model_selection import train_test_split

    train_scaled = train_input.reshape(-1, 28, 28, 1) / 255.0
    train_scaled, val_scaled, train_target, val_target = train_test_split(
        train_scaled, train_target, test_size=0.2, random_state=42
    )
    return train_scaled, val_scaled, train_target, val_target


def download(dest: Path | None = None, mirrors: tuple[str, ...] | None = None) -> Path:
    """Fetch the four files into `dest` (the user cache); verify each before it is renamed in."""
    dest = dest or cache_dir()
    mirrors = mirrors or tuple(filter(None, [os.environ.get("FASHION_MNIST_MIRROR")])) or MIRRORS
    dest.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        final = dest / f"{spec.name}.gz"
        if final.is_file():
            parse_idx(final, spec)  # an existing bad copy is reported, never trusted
            continue
        errors = []
        for mirror in mirrors:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=dest)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                    mirror + final.name, timeout=60
                ) as response:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                parse_idx(tmp, spec, compressed=True)
                os.replace(tmp, final)
                break
            except (OSError, UserError) as err:
                errors.append(f"{mirror}: {err}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise UserError(f"{final}: download failed from every mirror: {'; '.join(errors)}")
    return dest


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashion_cnn.fashion_mnist",
        description="Find and verify the real Fashion-MNIST IDX files (download them if asked).",
    )
    add_version(parser)
    add_data_dir(parser)
    parser.add_argument(
        "--download", action="store_true",
        help="if no local copy is found, download into the user cache (default: off)",
    )
    args = parser.parse_args(argv)
    try:
        directory = locate(args.data_dir)
    except UserError:
        if not args.download or args.data_dir or os.environ.get("FASHION_MNIST_DIR"):
            raise
        print(f"downloading Fashion-MNIST into {cache_dir()}", file=sys.stderr)
        directory = download()
    (x_train, y_train), (x_test, y_test) = load_data(directory)
    print(
        f"Fashion-MNIST verified in {directory}: train {x_train.shape} {y_train.shape}, "
        f"test {x_test.shape} {y_test.shape}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
