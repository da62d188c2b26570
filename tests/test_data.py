"""The real Fashion-MNIST: verification, every bad-file case, and the book's split on both sides.

Bad files are made from the real ones (a byte flipped, a file cut short, two files swapped), in
tmp_path; nothing synthetic stands in for the data.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct

import numpy as np
import pytest

from fashion_cnn import fashion_mnist as fm
from fashion_cnn.errors import UserError


def _copy_all(src, dst):
    for spec in fm.FILES.values():
        shutil.copy(src / f"{spec.name}.gz", dst / f"{spec.name}.gz")
    return dst


def _rewrite(path, edit):
    """Decompress a copy, apply `edit(bytearray)`, recompress in place."""
    data = bytearray(gzip.decompress(path.read_bytes()))
    edit(data)
    path.write_bytes(gzip.compress(bytes(data), compresslevel=1))


@pytest.fixture
def data_copy(data_dir, tmp_path):
    """A writable copy of the four real files."""
    return _copy_all(data_dir, tmp_path)


def test_real_files_verified_and_shaped(raw_data):
    (x_train, y_train), (x_test, y_test) = raw_data
    assert x_train.shape == (60_000, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (10_000, 28, 28) and y_test.shape == (10_000,)
    assert y_train.max() == 9 and np.bincount(y_train).tolist() == [6000] * 10
    # The book's 8-3 input: train_input[0] is an ankle boot.
    assert y_train[0] == 9 and fm.CLASS_NAMES[y_train[0]] == "Ankle boot"


def test_pinned_hashes_are_of_the_decompressed_bytes(data_dir):
    spec = fm.FILES["train_labels"]
    raw = gzip.decompress((data_dir / f"{spec.name}.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == spec.sha256


def test_uncompressed_idx_files_accepted(data_dir, tmp_path):
    for spec in fm.FILES.values():
        raw = gzip.decompress((data_dir / f"{spec.name}.gz").read_bytes())
        (tmp_path / spec.name).write_bytes(raw)
    (x_train, _), (_, y_test) = fm.load_data(tmp_path)
    assert x_train.shape == (60_000, 28, 28) and y_test.shape == (10_000,)


def test_missing_file_named(data_copy):
    (data_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz: missing"):
        fm.load_data(data_copy)


def test_env_directory_is_never_silently_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(UserError, match="FASHION_MNIST_DIR"):
        fm.locate()


def test_swapped_image_and_label_files(data_copy):
    images = data_copy / "train-images-idx3-ubyte.gz"
    labels = data_copy / "train-labels-idx1-ubyte.gz"
    tmp = data_copy / "swap"
    images.rename(tmp)
    labels.rename(images)
    tmp.rename(labels)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz: wrong IDX magic 0x00000801.*"
                                        r"a label file.*swapped"):
        fm.load_data(data_copy)


def test_wrong_magic(data_copy):
    path = data_copy / "t10k-images-idx3-ubyte.gz"
    _rewrite(path, lambda d: d.__setitem__(slice(0, 4), struct.pack(">I", 0x00000D03)))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz: wrong IDX magic 0x00000d03"):
        fm.load_data(data_copy)


def test_truncated_gz(data_copy):
    path = data_copy / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # a partial download
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz: truncated \.gz"):
        fm.load_data(data_copy)


def test_truncated_payload(data_copy):
    path = data_copy / "t10k-images-idx3-ubyte.gz"
    _rewrite(path, lambda d: d.__delitem__(slice(-784, None)))  # one image short
    with pytest.raises(UserError, match=r"t10k-images.*truncated: 7839216 bytes of data, "
                                        r"expected 7840000"):
        fm.load_data(data_copy)


def test_flipped_byte_in_gz_stream(data_copy):
    path = data_copy / "train-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte\.gz: (corrupt|truncated) \.gz"):
        fm.load_data(data_copy)


def test_flipped_pixel_fails_the_content_hash(data_copy):
    path = data_copy / "t10k-images-idx3-ubyte.gz"
    _rewrite(path, lambda d: d.__setitem__(5000, d[5000] ^ 0x01))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz: content differs from the "
                                        r"official Fashion-MNIST"):
        fm.load_data(data_copy)


def test_label_out_of_range(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    _rewrite(path, lambda d: d.__setitem__(8 + 123, 10))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 at index 123 is out "
                                        r"of range 0-9"):
        fm.load_data(data_copy)


def test_label_count_mismatch(data_copy):
    path = data_copy / "train-labels-idx1-ubyte.gz"

    def drop_last(d):
        d[4:8] = struct.pack(">I", 59_999)
        del d[-1]

    _rewrite(path, drop_last)
    with pytest.raises(UserError, match=r"train-labels.*holds 59999 labels, expected 60000 "
                                        r"\(one per image\)"):
        fm.load_data(data_copy)


def test_wrong_image_dimensions(data_copy):
    path = data_copy / "t10k-images-idx3-ubyte.gz"
    _rewrite(path, lambda d: d.__setitem__(slice(8, 16), struct.pack(">II", 14, 56)))
    with pytest.raises(UserError, match=r"IDX dimensions \(10000, 14, 56\), expected "
                                        r"\(10000, 28, 28\)"):
        fm.load_data(data_copy)


def test_download_verifies_and_never_keeps_a_bad_copy(data_dir, tmp_path):
    """The real download code over file:// URLs: good files land, a bad mirror leaves nothing."""
    good_mirror = data_dir.as_uri() + "/"
    (tmp_path / "bad-mirror").mkdir()
    bad = _copy_all(data_dir, tmp_path / "bad-mirror")
    raw = (bad / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(raw[:-100])  # a partial download

    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz: download failed"):
        fm.download(cache, mirrors=(bad.as_uri() + "/",))
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]

    fm.download(cache, mirrors=(bad.as_uri() + "/", good_mirror))  # falls through to a good one
    (x_train, _), (_, y_test) = fm.load_data(cache)
    assert x_train.shape == (60_000, 28, 28) and y_test.shape == (10_000,)


def test_cli_reports_bad_file_in_one_line(data_copy, capsys):
    (data_copy / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file")
    assert fm.main(["--data-dir", str(data_copy)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-images-idx3-ubyte.gz: corrupt .gz" in err[0]


def test_book_split_sizes_and_values(raw_data):
    (x_train, y_train), _ = raw_data
    train_scaled, val_scaled, train_target, val_target = fm.book_split(x_train, y_train)
    assert train_scaled.shape == (48_000, 28, 28, 1) and val_scaled.shape == (12_000, 28, 28, 1)
    assert train_target.shape == (48_000,) and val_target.shape == (12_000,)
    assert 0.0 <= val_scaled.min() and val_scaled.max() == 1.0
    # The book (8-2): the first validation image is a bag.
    assert fm.CLASS_NAMES[val_target[0]] == "Bag" and fm.CLASS_NAMES_KO[val_target[0]] == "가방"


def test_both_frameworks_see_identical_arrays_and_split(data_dir, book_data):
    """keras_ref's data cells and torch_impl's tensors hold the same float32 values."""
    from keras_ref.data import load_book_data as keras_book_data

    train_s, val_s, train_t, val_t, test_s, test_t = keras_book_data(data_dir)
    # Keras casts the float64 arrays to float32 at fit/predict time; do the same here.
    for keras_x, keras_y, split in ((train_s, train_t, "train"), (val_s, val_t, "val"),
                                    (test_s, test_t, "test")):
        torch_x, torch_y = book_data.split(split)
        nhwc = torch_x.permute(0, 2, 3, 1).numpy()
        assert np.array_equal(nhwc, keras_x.astype(np.float32)), f"{split} images differ"
        assert np.array_equal(torch_y.numpy(), keras_y.astype(np.int64)), f"{split} labels differ"
