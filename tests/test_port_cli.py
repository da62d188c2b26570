"""The `python -m parity.port` command line: its summary, its refusals, and a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity.formats import read_keras
from parity.formats.torch_files import carries_architecture
from parity.port import main
from parity.tests.testdata import all_agree
from torch_impl.checkpoint import load_state_dict

REPO = Path(__file__).resolve().parents[1]



def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]

@pytest.mark.slow

def test_subprocess_smoke(keras_ckpts, tmp_path, data_dir):
    src = keras_ckpts["trained"].files[".h5"]
    dst = tmp_path / "best-cnn-model.pt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "parity.port",
            str(src),
            str(dst),
            "--samples",
            "200",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "read: legacy-h5, 18 optimizer tensors left aside (8 tensors, 333,526 parameters)" in out
    assert "on 200 Fashion-MNIST test images" in out
    assert all_agree(out, 200), out
    assert "every layer within tolerance (|torch − keras| ≤ 1e-05·max(1, s)" in out
    # the book's CNN: a plain BookCNN state_dict, no architecture stored beside it
    assert not carries_architecture(dst)
    assert set(load_state_dict(dst)) == {
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "dense1.weight",
        "dense1.bias",
        "dense2.weight",
        "dense2.bias",
    }


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_dst_equal_to_src_is_refused(keras_ckpts, tmp_path, capsys):
    src = tmp_path / "model.keras"
    src.write_bytes(keras_ckpts["random"].files[".keras"].read_bytes())
    before = src.read_bytes()
    # The same file, also through another spelling of its path.
    for dst in (src, tmp_path / "." / "model.keras"):
        assert main([str(src), str(dst), "--force"]) == 1
        assert "is the input file" in _one_error_line(capsys)
    assert src.read_bytes() == before


def test_existing_dst_needs_force(keras_ckpts, tmp_path, data_dir, capsys):
    src = keras_ckpts["trained"].files[".keras"]
    dst = tmp_path / "model.safetensors"
    dst.write_bytes(b"someone's file")
    assert main([str(src), str(dst), "--samples", "50"]) == 1
    line = _one_error_line(capsys)
    assert str(dst) in line and "already exists (use --force to overwrite)" in line
    assert dst.read_bytes() == b"someone's file"

    assert (
        main([str(src), str(dst), "--samples", "50", "--force", "--data-dir", str(data_dir)]) == 0
    )
    assert np.array_equal(
        load_state_dict(dst)["conv1.bias"].numpy(), keras_ckpts["trained"].weights["conv2d/bias"]
    )
    assert not list(tmp_path.glob(".model.safetensors.*")), "temporary file left behind"


@pytest.mark.parametrize(
    ("src_name", "dst_name", "bad"),
    [
        ("model.onnx", "out.pt", "model.onnx"),
        ("SRC", "out.npz", "out.npz"),
        ("SRC", "out", "out"),
        ("SRC", "out.weights.json", "out.weights.json"),
    ],
)
def test_unknown_extension_is_refused(keras_ckpts, tmp_path, capsys, src_name, dst_name, bad):
    src = keras_ckpts["random"].files[".keras"] if src_name == "SRC" else tmp_path / src_name
    if src_name != "SRC":
        src.write_bytes(b"\0" * 16)
    assert main([str(src), str(tmp_path / dst_name)]) == 1
    line = _one_error_line(capsys)
    assert f"{tmp_path / bad}: unknown extension" in line
    assert "expected .keras, .h5, .weights.h5, .pt, .pth, .safetensors" in line
    assert not (tmp_path / dst_name).exists()


def test_missing_source(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere.keras"), str(tmp_path / "out.pt")]) == 1
    assert _one_error_line(capsys) == f"error: {tmp_path / 'nowhere.keras'}: no such file"
    assert not (tmp_path / "out.pt").exists()


def test_missing_destination_folder(keras_ckpts, tmp_path, capsys):
    dst = tmp_path / "no" / "such" / "out.pt"
    assert main([str(keras_ckpts["random"].files[".keras"]), str(dst)]) == 1
    assert "does not exist" in _one_error_line(capsys)


def test_samples_out_of_range(keras_ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(keras_ckpts["random"].files[".keras"]), str(tmp_path / "o.pt"), "--samples", "0"])
    assert exc.value.code == 2
    assert "--samples: must be between 1 and 10000" in capsys.readouterr().err


def test_same_framework_conversion(keras_ckpts, tmp_path, data_dir, capsys):
    """The book's legacy .h5 to Keras 3's .keras (no PyTorch file involved), exactly."""
    ckpt = keras_ckpts["trained"]
    dst = tmp_path / "best-cnn-model.keras"
    assert (
        main([str(ckpt.files[".h5"]), str(dst), "--samples", "50", "--data-dir", str(data_dir)])
        == 0
    )
    out = capsys.readouterr().out
    assert all_agree(out, 50), out
    read = read_keras(dst)
    assert all(np.array_equal(read.weights[k], v) for k, v in ckpt.weights.items())


def test_json_report_is_parity_checks(keras_ckpts, tmp_path, data_dir, capsys):
    """`port --json` writes the report `parity.check --json` writes for the same two files:
    SRC against the DST read back from disk."""
    import json

    from parity.check import main as check_main

    src = keras_ckpts["trained"].files[".keras"]
    dst, ported, checked = tmp_path / "m.pt", tmp_path / "port.json", tmp_path / "check.json"
    opts = ["--samples", "50", "--data-dir", str(data_dir)]
    assert main([str(src), str(dst), *opts, "--json", str(ported)]) == 0
    assert f"check report: {ported} (PASS)" in capsys.readouterr().out
    assert check_main([str(src), str(dst), *opts, "--json", str(checked)]) == 0
    report = json.loads(ported.read_text())
    assert report == json.loads(checked.read_text())
    assert report["passed"] and report["samples"] == 50 and report["torch_file"] == str(dst)
    assert report["test_set"]["predictions_agreeing"] == 10_000, report["test_set"]


@pytest.mark.parametrize("case", ["same-framework", "report-is-src"])
def test_json_refused_before_the_work(case, keras_ckpts, tmp_path, capsys):
    """A --json port that cannot be checked, or whose REPORT is SRC, is refused in one line
    before anything is read or written."""
    src = keras_ckpts["random"].files[".keras"]
    dst = tmp_path / ("m.h5" if case == "same-framework" else "m.pt")
    report = src if case == "report-is-src" else tmp_path / "r.json"
    before = src.read_bytes()
    assert main([str(src), str(dst), "--json", str(report)]) == 1
    line = _one_error_line(capsys)
    assert ("no PyTorch and Keras file" in line) if case == "same-framework" else str(src) in line
    assert not dst.exists() and src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []
