"""Hostile destinations: every writer refuses, in one line and before the work, a place it could
not write — a folder where a file goes, a file where a folder goes, a read-only or full file
system — leaves no temporary file, keeps an existing destination as it was; one training per
output folder; a malformed last.pt is refused before anything is applied.

Real file systems only: a full disk is a 64 KiB tmpfs, a read-only one a tmpfs remounted
read-only (these tests run as root, and permission bits do not stop root; a read-only mount
does). Where mounting is not permitted they skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write, check_destination, output_folder

# --- real file systems ---------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command: cannot make a small or read-only file system")
    proc = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a real 64 KiB file system: writes beyond it fail with ENOSPC."""
    where = tmp_path / "small-disk"
    _mount_tmpfs(where, "64k")
    yield where
    _umount(where)


@pytest.fixture
def read_only(tmp_path):
    """A folder on a real read-only file system holding `existing.pt` (bytes b"keep me", mode
    0600). A read-only mount refuses root too (EROFS), which permission bits would not."""
    where = tmp_path / "read-only"
    _mount_tmpfs(where, "1m")
    existing = where / "existing.pt"
    existing.write_bytes(b"keep me")
    existing.chmod(0o600)
    proc = subprocess.run(
        ["mount", "-o", "remount,ro", str(where)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        _umount(where)
        pytest.skip(f"remounting read-only is not permitted here: {proc.stderr.strip()}")
    yield where
    _umount(where)


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the core: check_destination, atomic_write, output_folder ---------------------------------


def test_atomic_write_writes_a_new_file_with_the_umasks_mode(tmp_path):
    """A new file gets 0666 less the umask, as open() would give it (mkstemp makes 0600).

    atomic_write fsyncs the file and its folder on this path; fsync cannot be observed from a
    test, so this only runs it on a real file and checks what landed."""
    dst = atomic_write(tmp_path / "new.json", lambda tmp: tmp.write_text("{}"))
    assert dst.read_text() == "{}"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o666 & ~umask()
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_force_keeps_the_replaced_files_mode(tmp_path, mode):
    dst = tmp_path / "secret.pt"
    dst.write_bytes(b"old")
    dst.chmod(mode)
    atomic_write(dst, lambda tmp: tmp.write_bytes(b"new"), force=True)
    assert dst.read_bytes() == b"new"
    assert stat.S_IMODE(dst.stat().st_mode) == mode, oct(dst.stat().st_mode)


def test_atomic_write_on_a_full_disk_is_one_line_and_leaves_nothing(full_disk):
    dst = full_disk / "big.bin"
    with pytest.raises(UserError) as err:
        atomic_write(dst, lambda tmp: tmp.write_bytes(b"\0" * 200_000))
    assert str(err.value) == f"{dst}: cannot write: No space left on device"
    assert not dst.exists() and not temp_files(full_disk)


def test_atomic_write_on_a_full_disk_keeps_the_old_file(full_disk):
    dst = full_disk / "big.bin"
    dst.write_bytes(b"old")
    with pytest.raises(UserError, match="No space left on device"):
        atomic_write(dst, lambda tmp: tmp.write_bytes(b"\0" * 200_000), force=True)
    assert dst.read_bytes() == b"old" and not temp_files(full_disk)


def test_atomic_write_in_a_read_only_folder(read_only):
    dst = read_only / "existing.pt"
    with pytest.raises(UserError) as err:
        atomic_write(dst, lambda tmp: tmp.write_bytes(b"new"), force=True)
    assert str(err.value) == f"{dst}: cannot write in {read_only}: Read-only file system"
    assert dst.read_bytes() == b"keep me"


def test_check_destination_refuses_a_folder(tmp_path):
    (tmp_path / "dst.pt").mkdir()
    with pytest.raises(UserError) as err:
        check_destination(tmp_path / "dst.pt", force=True)
    assert str(err.value) == f"{tmp_path / 'dst.pt'}: is a folder, not a file"


def test_check_destination_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    dst = tmp_path / "file" / "deeper" / "dst.pt"
    with pytest.raises(UserError) as err:
        check_destination(dst)
    assert str(err.value) == f"{dst}: {tmp_path / 'file'} is a file, not a folder"


def test_check_destination_needs_room(full_disk):
    with pytest.raises(UserError) as err:
        check_destination(full_disk / "model.pt", need_bytes=1_000_000)
    assert str(err.value).startswith(f"{full_disk / 'model.pt'}: no room in {full_disk}: ")
    assert str(err.value).endswith("bytes free, about 1,000,000 needed")


def test_output_folder_removes_what_it_created_on_failure(tmp_path):
    with pytest.raises(RuntimeError), output_folder(tmp_path / "a" / "b"):
        raise RuntimeError("the work failed")
    assert not (tmp_path / "a").exists(), "an empty folder was left behind"
    with output_folder(tmp_path / "kept") as folder:
        (folder / "result").write_text("x")
    assert (tmp_path / "kept" / "result").exists()


# --- the command lines ---------------------------------------------------------------------------


def refused(capsys, main, argv: list[str], message: str) -> None:
    """main(argv) exits 1 with exactly `error: {message}` on stderr, and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err, err
    assert err.splitlines() == [f"error: {message}"]


@pytest.fixture
def src_pt(tmp_path) -> Path:
    """A real PyTorch checkpoint of the book's CNN (seeded random weights)."""
    import torch

    from torch_impl.checkpoint import save_state_dict
    from torch_impl.model import BookCNN

    torch.manual_seed(0)
    return save_state_dict(BookCNN(), tmp_path / "src.pt")


@pytest.fixture
def no_data(tmp_path) -> Path:
    """An empty --data-dir: a command that reached its data would fail with another message, so
    a refusal naming the destination shows the destination was checked first."""
    folder = tmp_path / "no-data"
    folder.mkdir()
    return folder


def port(capsys, src: Path, dst: Path, message: str, no_data: Path, *extra: str) -> None:
    from parity.port import main

    refused(capsys, main, [src, dst, "--data-dir", no_data, *extra], message)
    if dst.parent.is_dir():
        assert not temp_files(dst.parent), "a temporary file was left behind"


def test_port_dst_a_folder_even_with_force(capsys, src_pt, tmp_path, no_data):
    dst = tmp_path / "out.keras"
    dst.mkdir()
    port(capsys, src_pt, dst, f"{dst}: is a folder, not a file", no_data, "--force")
    assert dst.is_dir() and not any(dst.iterdir())


def test_port_dst_under_a_file(capsys, src_pt, tmp_path, no_data):
    (tmp_path / "notes.txt").write_text("mine")
    dst = tmp_path / "notes.txt" / "out.keras"
    port(capsys, src_pt, dst, f"{dst}: {tmp_path / 'notes.txt'} is a file, not a folder", no_data)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_port_dst_checked_before_the_source_is_read(capsys, tmp_path, no_data):
    """A garbage SRC would give "not a readable PyTorch checkpoint"; DST is refused first."""
    src = tmp_path / "garbage.pt"
    src.write_bytes(b"\x80\x02 not a checkpoint")
    dst = tmp_path / "out.keras"
    dst.mkdir()
    port(capsys, src, dst, f"{dst}: is a folder, not a file", no_data)


def test_port_into_a_read_only_folder(capsys, src_pt, read_only, no_data):
    dst = read_only / "out.keras"
    port(capsys, src_pt, dst, f"{dst}: cannot write in {read_only}: Read-only file system", no_data)
    assert not dst.exists()


def test_port_over_a_file_on_a_read_only_folder(capsys, src_pt, read_only, no_data):
    dst = read_only / "existing.pt"
    port(capsys, src_pt, dst, f"{dst}: cannot write in {read_only}: Read-only file system",
         no_data, "--force")
    assert dst.read_bytes() == b"keep me"


def test_port_onto_a_full_disk(capsys, src_pt, full_disk, no_data):
    from parity.port import DST_BYTES

    dst = full_disk / "out.keras"
    free = os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize
    port(capsys, src_pt, dst,
         f"{dst}: no room in {full_disk}: {free:,} bytes free, about {DST_BYTES:,} needed",
         no_data)
    assert not dst.exists()


def test_port_existing_dst_without_force_keeps_it(capsys, src_pt, tmp_path, no_data):
    dst = tmp_path / "out.pt"
    dst.write_bytes(b"someone's")
    port(capsys, src_pt, dst, f"{dst}: already exists (use --force to overwrite)", no_data)
    assert dst.read_bytes() == b"someone's"


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_check_json_destination_refused_before_the_work(capsys, src_pt, tmp_path, no_data, where):
    from parity.check import main

    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"not a zip")  # reading it would be refused with another message
    if where == "folder":
        report = tmp_path / "report.json"
        report.mkdir()
        message = f"{report}: is a folder, not a file"
    else:
        (tmp_path / "file").write_text("x")
        report = tmp_path / "file" / "report.json"
        message = f"{report}: {tmp_path / 'file'} is a file, not a folder"
    refused(capsys, main, [keras_file, src_pt, "--json", report, "--data-dir", no_data], message)
    assert not temp_files(tmp_path)


def test_check_json_in_a_read_only_folder(capsys, src_pt, tmp_path, read_only, no_data):
    from parity.check import main

    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"not a zip")
    report = read_only / "report.json"
    refused(capsys, main, [keras_file, src_pt, "--json", report, "--data-dir", no_data],
            f"{report}: cannot write in {read_only}: Read-only file system")


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


# --- visualize (PyTorch and Keras): --out checked before the checkpoint or the data is read ------

VISUALIZERS = ["torch_impl.visualize", "keras_ref.visualize"]


def visualize_refused(capsys, module: str, out: Path, message: str, no_data: Path, tmp_path):
    """A garbage checkpoint and an empty --data-dir: reaching either gives another message."""
    import importlib

    ckpt = tmp_path / ("model.pt" if module.startswith("torch") else "model.keras")
    ckpt.write_bytes(b"not a checkpoint")
    main = importlib.import_module(module).main
    refused(capsys, main, [ckpt, "--out", out, "--data-dir", no_data], message)


@pytest.mark.parametrize("module", VISUALIZERS)
def test_visualize_out_a_file(capsys, tmp_path, no_data, module):
    out = tmp_path / "pictures"
    out.write_text("mine")
    visualize_refused(capsys, module, out, f"{out}: is a file, not a folder", no_data, tmp_path)
    assert out.read_text() == "mine"


@pytest.mark.parametrize("module", VISUALIZERS)
def test_visualize_out_under_a_file(capsys, tmp_path, no_data, module):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / "pictures"
    visualize_refused(capsys, module, out, f"{out}: {tmp_path / 'file'} is a file, not a folder",
                      no_data, tmp_path)


@pytest.mark.parametrize("module", VISUALIZERS)
def test_visualize_out_read_only(capsys, tmp_path, read_only, no_data, module):
    out = read_only / "pictures"
    visualize_refused(capsys, module, out,
                      f"{out}: cannot create the folder: Read-only file system", no_data, tmp_path)
    visualize_refused(capsys, module, read_only,
                      f"{read_only}: cannot write in the folder: Read-only file system", no_data,
                      tmp_path)


@pytest.mark.parametrize("module", VISUALIZERS)
def test_visualize_refused_on_its_checkpoint_leaves_no_folder(capsys, tmp_path, no_data, module):
    """Past the folder checks the checkpoint is refused: the folders it made are removed."""
    import importlib

    ckpt = tmp_path / ("model.pt" if module.startswith("torch") else "model.keras")
    ckpt.write_bytes(b"not a checkpoint")
    out = tmp_path / "new" / "pictures"
    assert importlib.import_module(module).main([str(ckpt), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {ckpt}: "), err
    assert not (tmp_path / "new").exists()

@pytest.mark.slow

def test_train_disk_filling_up_mid_run(tmp_path, data_dir):
    """A real full disk at write time: the run passes its checks on a tmpfs with room, then the
    disk is filled while it trains (once it holds its lock, the checks are behind it). Its
    first checkpoint fails with ENOSPC: one line, exit 1, no temporary file, no folder left."""
    import sys
    import time

    from torch_impl.train import RUN_BYTES

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, str(RUN_BYTES + 2**20))
    run = None
    try:
        out = disk / "run"
        run = subprocess.Popen(
            [sys.executable, "-m", "torch_impl.train", "--device", "cpu", "--out", str(out),
             "--data-dir", str(data_dir), "--limit", "256", "--epochs", "1"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        deadline = time.monotonic() + 120
        while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
            assert run.poll() is None, run.stderr.read()
            assert time.monotonic() < deadline, "the training never took its lock"
            time.sleep(0.1)
        with open(disk / "filler", "wb") as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * 65536)
        _, err = run.communicate(timeout=600)
        assert run.returncode == 1, err
        assert err.splitlines() == [
            f"error: {out / 'best-cnn-model.pt'}: cannot write: No space left on device"
        ]
        assert not out.exists(), "the failed run left its folder"
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        _umount(disk)
