"""Hostile destinations: every writer refuses, in one line and before the work, a place it could
not write — a folder where a file goes, a file where a folder goes, a read-only or full file
system — leaves no temporary file, keeps an existing destination as it was; (trainings:
tests/test_hostile_training.py).

Real file systems only: a full disk is a 64 KiB tmpfs, a read-only one a tmpfs remounted
read-only (these tests run as root, and permission bits do not stop root; a read-only mount
does). Where mounting is not permitted they skip, saying so.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from hostile import ROOT as REPO
from hostile import _mount_tmpfs, _umount, refused, temp_files, umask

from fashion_cnn.errors import UserError
from fashion_cnn.files import atomic_write, check_destination, output_folder

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


def test_a_generic_pt_streamed_onto_a_full_disk_is_one_line(full_disk):
    """torch.save writes a `.pt` through Python's file, a chunk at a time: ENOSPC mid-way is
    the one line naming the destination, and no temporary file is left."""
    import torch

    from parity.build import build
    from parity.formats import parse
    from parity.formats.torch_files import save_torch_model

    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 300]}},
        {"class_name": "Dense", "config": {"units": 300}},  # 361 KB of weights: over 64 KiB
    ]}}
    module = build(parse(config, "s"), "s").module  # on the meta device until assigned
    module.load_state_dict({k: torch.zeros(v.shape) for k, v in module.state_dict().items()},
                           assign=True)
    dst = full_disk / "model.pt"
    with pytest.raises(UserError) as err:
        save_torch_model(module, dst)
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


@pytest.fixture
def src_pt(tmp_path) -> Path:
    """A real PyTorch checkpoint of the book's CNN (seeded random weights)."""
    import torch

    from torch_impl.checkpoint import save_state_dict
    from torch_impl.model import BookCNN

    torch.manual_seed(0)
    return save_state_dict(BookCNN(), tmp_path / "src.pt")


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
    from parity.port import dst_bytes

    dst = full_disk / "out.keras"
    free = os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize
    need = dst_bytes(src_pt, dst)
    assert need == 2 * src_pt.stat().st_size > free
    port(capsys, src_pt, dst,
         f"{dst}: no room in {full_disk}: {free:,} bytes free, about {need:,} needed", no_data)
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
