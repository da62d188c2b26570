"""Hostile places and files for a training: an --out that cannot be written is refused before the
data is read; one training per output folder (a lock that dies with its process); a malformed
last.pt is refused before anything of it is applied. Real file systems, as in
tests/test_hostile_outputs.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hostile import refused, temp_files

from fashion_cnn.files import output_folder

# --- training: the output folder, checked before the data is read --------------------------------


def train_refused(capsys, out: Path, message: str, no_data: Path, *extra: str) -> None:
    from torch_impl.train import main

    refused(capsys, main, ["--device", "cpu", "--out", out, "--data-dir", no_data, "--limit",
                           "256", "--epochs", "1", *extra], message)


def test_train_out_a_file(capsys, tmp_path, no_data):
    out = tmp_path / "run"
    out.write_text("mine")
    train_refused(capsys, out, f"{out}: is a file, not a folder", no_data)
    assert out.read_text() == "mine"


def test_train_out_under_a_file(capsys, tmp_path, no_data):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "run"
    train_refused(capsys, out, f"{out}: {tmp_path / 'file'} is a file, not a folder", no_data)


def test_train_out_on_a_read_only_file_system(capsys, read_only, no_data):
    out = read_only / "run"
    train_refused(capsys, out, f"{out}: cannot create the folder: Read-only file system", no_data)
    train_refused(capsys, read_only, f"{read_only}: cannot write in the folder: "
                  "Read-only file system", no_data)
    assert sorted(p.name for p in read_only.iterdir()) == ["existing.pt"]


def test_train_out_on_a_full_disk(capsys, full_disk, no_data):
    from torch_impl.train import RUN_BYTES

    out = full_disk / "run"
    vfs = os.statvfs(full_disk)
    train_refused(capsys, out, f"{out}: no room: {vfs.f_bavail * vfs.f_frsize:,} bytes free, "
                  f"about {RUN_BYTES:,} needed", no_data)
    assert not out.exists(), "the refused run left its folder behind"


def test_a_refused_run_leaves_no_empty_folder(capsys, tmp_path, no_data):
    """Past the folder checks, the run fails on its data: the folders it made are removed."""
    from torch_impl.train import main

    out = tmp_path / "new" / "run"
    assert main(["--device", "cpu", "--out", str(out), "--data-dir", str(no_data)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(no_data) in err[0], err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("trainer", ["torch_impl.train", "keras_ref.train"])
def test_a_second_training_in_a_locked_folder_is_refused(capsys, tmp_path, no_data, trainer):
    """The lock is a real flock on DIR/.lock, held here as a running training holds it."""
    import importlib

    main = importlib.import_module(trainer).main
    out = tmp_path / "run"
    with output_folder(out, lock=True):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"
        refused(capsys, main, ["--out", out, "--data-dir", no_data, "--epochs", "1"],
                f"{out}: another run (pid {os.getpid()}) is writing to this folder; "
                "wait for it to end or choose another --out")
        assert sorted(p.name for p in out.iterdir()) == [".lock"], "the refused run wrote"
    assert not (out / ".lock").exists(), "the lock file outlived the run"


REPO = Path(__file__).resolve().parents[1]

@pytest.mark.slow

def test_the_lock_dies_with_a_killed_training(capsys, tmp_path, data_dir):
    """A real training in a subprocess holds the lock: a second run is refused naming its pid.
    Killed with SIGKILL (no cleanup of ours runs), the kernel drops its flock: a new run in the
    same folder succeeds, although the stale .lock file is still there."""
    import signal
    import sys
    import time

    from torch_impl.train import main

    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "torch_impl.train", "--device", "cpu", "--out", str(out),
         "--data-dir", str(data_dir), "--limit", "256", "--epochs", "1000"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first training never took its lock"
            time.sleep(0.2)
        assert (out / ".lock").read_text() == f"{first.pid}\n"
        refused(capsys, main, ["--device", "cpu", "--out", out, "--data-dir", data_dir],
                f"{out}: another run (pid {first.pid}) is writing to this folder; "
                "wait for it to end or choose another --out")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert (out / ".lock").exists(), "SIGKILL runs no cleanup: the file stays, the flock not"

    assert main(["--device", "cpu", "--out", str(out), "--data-dir", str(data_dir),
                 "--limit", "256", "--epochs", "1"]) == 0
    assert "epochs run: 1" in capsys.readouterr().out
    assert (out / "best-cnn-model.pt").exists() and (out / "last.pt").exists()
    assert not (out / ".lock").exists() and not temp_files(out)


# --- --resume: a malformed last.pt is refused before anything is applied -------------------------


@pytest.fixture(scope="module")
def real_last(book_data, tmp_path_factory) -> bytes:
    """last.pt of a short real run (256 images, 1 epoch)."""
    from torch_impl import train as train_mod

    out = tmp_path_factory.mktemp("real-last")
    train_mod.train(train_mod.TrainConfig(device="cpu", out=out, limit=256, epochs=1),
                    data=book_data)
    return (out / "last.pt").read_bytes()


class Payload:
    """Unpickling this would create a file: a payload torch.load(weights_only=True) must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _set(keys, value):
    """An edit of last.pt: set last[k1][k2]… to value (a function of the old one)."""

    def edit(last):
        *above, key = keys
        for k in above:
            last = last[k]
        last[key] = value(last[key])

    return edit


def _delete(*keys):
    def edit(last):
        *above, key = keys
        for k in above:
            last = last[k]
        del last[key]

    return edit


# (edit of the loaded dict, the problem the one line must state after "{path}: ")
BAD_LASTS = {
    "format": (_set(["format"], lambda _: 2), "not a last.pt written by torch_impl.train"),
    "missing-key": (_delete("optimizer"), "the checkpoint lacks 'optimizer'"),
    "extra-key": (lambda last: last.update(scheduler={}),
                  "the checkpoint has unexpected 'scheduler'"),
    "model-shape": (_set(["model", "conv1.weight"], lambda _: __import__("torch").zeros(3)),
                    "model: conv1.weight has shape (3,), expected (32, 1, 3, 3)"),
    "model-missing": (_delete("model", "dense2.bias"),
                      "model: not the book's CNN: missing dense2.bias"),
    "best-dtype": (_set(["best_weights", "conv1.bias"], lambda t: t.double()),
                   "best_weights: conv1.bias has dtype torch.float64, expected torch.float32"),
    "string-for-tensor": (_set(["rng", "torch_cpu"], lambda _: "seed 42"),
                          "rng.torch_cpu is a str, expected a torch.uint8 tensor"),
    "rng-size": (_set(["rng", "shuffle"], lambda t: t[:100]),
                 "rng.shuffle is torch.uint8 (100,), expected torch.uint8 (5056,)"),
    "adam-shape": (_set(["optimizer", "state", 4, "exp_avg"], lambda t: t[:, :10]),
                   "optimizer.state[4].exp_avg is torch.float32 (100, 10), expected "
                   "torch.float32 (100, 3136)"),
    "adam-missing": (_delete("optimizer", "state", 7),
                     "optimizer.state lacks 7"),
    "adam-lr": (_set(["optimizer", "param_groups", 0, "lr"], lambda _: 0.5),
                "optimizer.param_groups[0].lr is 0.5, expected 0.001"),
    "world-size": (_set(["config", "world_size"], lambda _: 0),
                   "config.world_size is 0, expected 1 or more"),
    "early-stopping-type": (_set(["early_stopping", "wait"], lambda _: "0"),
                            "early_stopping.wait is a str, expected int"),
    "epoch-bool": (_set(["run", "epoch"], lambda _: True), "run.epoch is a bool, expected int"),
    "history-length": (_set(["run", "history", "val_loss"], lambda v: v * 2),
                       "run.history.val_loss holds 2 values, expected one per epoch run (1)"),
    "history-value": (_set(["run", "history", "loss"], lambda _: ["2.1"]),
                      "run.history.loss[0] is a str, expected float"),
    "numpy-state": (_set(["rng", "numpy"], lambda s: [s[0], s[1][:10], *s[2:]]),
                    "rng.numpy keys are not a list of 624 whole numbers"),
    "numpy-position": (_set(["rng", "numpy"], lambda s: [*s[:2], 10**6, *s[3:]]),
                       "rng.numpy position is 1000000, expected 0 … 624"),
    "numpy-name": (_set(["rng", "numpy"], lambda s: ["PCG64", *s[1:]]),
                   "rng.numpy is not numpy's state ("),
    "python-state": (_set(["rng", "python"], lambda s: [s[0], [*s[1][:-1], 10**6], s[2]]),
                     "rng.python is not random's state"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_LASTS))
def test_resume_refuses_a_malformed_last_pt(capsys, real_last, tmp_path, no_data, case):
    """Each file is the real last.pt, loaded, changed in one place, saved back. The refusal
    comes before the data is read (--data-dir is empty) and before anything is applied: the
    global RNGs, which a resumed run seeds and then restores from last.pt, are untouched."""
    import torch

    edit, problem = BAD_LASTS[case]
    last = torch.load(_bytes_file(tmp_path, real_last), weights_only=True)
    edit(last)
    out = tmp_path / "run"
    out.mkdir()
    torch.save(last, out / "last.pt")
    _refused_resume(capsys, out, no_data, problem)


def _bytes_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "original-last.pt"
    path.write_bytes(data)
    return path


def _refused_resume(capsys, out: Path, no_data: Path, problem: str) -> None:
    import random

    import numpy as np
    import torch

    from torch_impl.train import main

    torch.manual_seed(1234), np.random.seed(1234), random.seed(1234)
    rngs = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    before = (out / "last.pt").read_bytes()
    code = main(["--device", "cpu", "--out", str(out), "--data-dir", str(no_data), "--resume",
                 "--limit", "256", "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out / 'last.pt'}: {problem}"), lines
    assert (out / "last.pt").read_bytes() == before, "the refused resume touched last.pt"
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"], "the refused resume wrote"
    assert torch.equal(torch.get_rng_state(), rngs[0]), "torch's RNG was touched"
    assert np.array_equal(np.random.get_state()[1], rngs[1]), "numpy's RNG was touched"
    assert random.getstate() == rngs[2], "random's RNG was touched"

@pytest.mark.slow

def test_resume_refuses_a_truncated_last_pt(capsys, real_last, tmp_path, no_data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(real_last[: len(real_last) // 2])
    _refused_resume(capsys, out, no_data, "not a readable training checkpoint (")

@pytest.mark.slow

def test_resume_refuses_a_pickle_payload_and_never_runs_it(capsys, real_last, tmp_path, no_data):
    import torch

    marker = tmp_path / "payload-ran"
    last = torch.load(_bytes_file(tmp_path, real_last), weights_only=True)
    last["run"]["history"]["loss"] = [Payload(str(marker))]
    out = tmp_path / "run"
    out.mkdir()
    torch.save(last, out / "last.pt")
    _refused_resume(capsys, out, no_data, "refused: the pickle holds more than tensors and plain "
                    "types (weights_only=True)")
    assert not marker.exists(), "the pickle's payload ran"

@pytest.mark.slow

def test_resume_accepts_the_real_last_pt(real_last, tmp_path):
    """The validation passes the file the trainer wrote (the other tests are not vacuous)."""
    from torch_impl.resume import load_last

    path = _bytes_file(tmp_path, real_last)
    assert load_last(path)["run"]["epoch"] == 1

@pytest.mark.slow

def test_resume_accepts_a_last_pt_from_before_torchrun(real_last, tmp_path):
    """last.pt files written before the world size was recorded are one process's."""
    import torch

    from torch_impl.resume import load_last

    last = torch.load(_bytes_file(tmp_path, real_last), weights_only=True)
    assert last["config"].pop("world_size") == 1
    torch.save(last, tmp_path / "old-last.pt")
    assert load_last(tmp_path / "old-last.pt")["config"]["world_size"] == 1

