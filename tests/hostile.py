"""What the hostile-input tests share (tests/test_hostile_*.py): running a real CLI in its own
process with its own peak RSS measured, the canary secret, the `refuse` check every refusal must
pass, and real Keras/PyTorch checkpoints to make hostile copies of. The fixtures reach the tests
through tests/conftest.py.

Every refusal must: exit 1; print exactly one line on stderr (no traceback, no ANSI colour);
write nothing; leak no byte of the canary secret to stdout, stderr or any file; finish within
60 s; and keep the child's own peak RSS (os.wait4) within `max_rss_mb()`: what importing both
frameworks takes on this machine, plus the check's own budget twice.
"""

from __future__ import annotations

import functools
import io
import os
import secrets
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from parity.book import keras_to_torch
from parity.verify.layerwise import CHECK_BYTES
from torch_impl.checkpoint import save_state_dict

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60
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


@functools.cache
def max_rss_mb() -> float:
    """The bound on a CLI's peak RSS: importing TensorFlow, Keras, PyTorch and the port, measured
    here once (it differs by CPU and build: 1.26 GB on an AMD EPYC, more on an Intel Xeon), plus
    twice the check's budget of activations in flight (`CHECK_BYTES`): once for the budget, once
    for Keras's graph and the allocators' slack. A small file that makes the port hold GBs of
    memory is over it on any machine."""
    run = run_cli("-c", "import tensorflow, keras, torch, parity.pipeline", cwd=ROOT)
    assert run.code == 0, run.err[-2000:]
    return run.peak_mb + 2 * CHECK_BYTES / 2**20


def assert_bounded(run: Run) -> None:
    bound = max_rss_mb()
    assert run.peak_mb < bound, f"peak RSS {run.peak_mb:.0f} MB, over {bound:.0f} MB"


def run_cli(module: str, *args, cwd: Path, blocked: Path | None = None) -> Run:
    """`python -m module args…` with this worktree's code, in its own process; with module
    "-c", `python -c args…` (a small script given as the first argument). With `blocked` (the
    `keras_blocker` folder), Keras and TensorFlow cannot be imported in the child, as on a
    machine with PyTorch only."""
    path = str(ROOT) if blocked is None else f"{blocked}{os.pathsep}{ROOT}"
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = ["-c", *map(str, args)] if module == "-c" else ["-m", module, *map(str, args)]
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
                *command,
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


@pytest.fixture(scope="session")
def keras_blocker(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes `import keras` and `import tensorflow` fail
    (as on a machine with PyTorch only): run_cli(…, blocked=this folder)."""
    folder = tmp_path_factory.mktemp("keras-blocked")
    for name in ("keras", "tensorflow"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text('raise ImportError("blocked for this test")\n')
    return folder


KERAS_MODES = ("importable", "blocked")  # parametrise a case over both where the paths differ


def assert_refused(
    run: Run, module: str, *, before: dict, folder: Path, canary: Canary,
    fragments: tuple[str, ...] = (),
) -> str:
    """Everything the issue asks of a refusal, of a finished run: the one error line."""
    assert run.code is not None, f"{module} did not finish within {TIMEOUT_S} s"
    assert run.code == 1, f"exit {run.code}; stderr: {run.err[-2000:]}"
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err[-3000:]
    assert "Traceback" not in run.err and "\x1b" not in run.err, run.err
    assert canary.token not in run.out + run.err, "the canary secret was printed"
    # Nothing written or changed, so no output can hold the canary's bytes either.
    assert _files(folder) == before, "a file was written or changed"
    assert_bounded(run)
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    print(f"{module} {run.seconds:.1f}s {run.peak_mb:.0f}MB: {lines[0]}")
    return lines[0]


@pytest.fixture
def refuse(tmp_path, canary, keras_blocker):
    """refuse(module, *args, fragments=[…], keras="importable"|"blocked") → the one error line,
    after asserting everything the issue asks of a refusal."""

    def check(
        module: str, *args, fragments: tuple[str, ...] = (), keras: str = "importable"
    ) -> str:
        assert keras in KERAS_MODES, keras
        before = _files(tmp_path)
        blocked = keras_blocker if keras == "blocked" else None
        run = run_cli(module, *args, cwd=tmp_path, blocked=blocked)
        return assert_refused(
            run, module, before=before, folder=tmp_path, canary=canary, fragments=fragments
        )

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


# --- destinations: real file systems, and the refusal of an in-process CLI ---------------------


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


def refused(capsys, main, argv: list[str], message: str) -> None:
    """main(argv) exits 1 with exactly `error: {message}` on stderr, and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err, err
    assert err.splitlines() == [f"error: {message}"]


@pytest.fixture
def no_data(tmp_path) -> Path:
    """An empty --data-dir: a command that reached its data would fail with another message, so
    a refusal naming the destination shows the destination was checked first."""
    folder = tmp_path / "no-data"
    folder.mkdir()
    return folder
