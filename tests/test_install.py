"""The install a user gets: the wheel and sdist as `python -m build` makes them, and the core
install (`pip install fashion-cnn-parity`: PyTorch and the framework-free core, no TensorFlow or
Keras) in a virtual environment of its own, where every core command must work.

The core environment is `.venv-core/` at the repository root (CORE_VENV=DIR for another). It is
made by a real `pip install WHEEL`, every dependency resolved, whenever the wheel's dependency
list changed since it was made (always on a fresh clone, as in CI); otherwise only the project's
own wheel is reinstalled into it (`--no-deps --force-reinstall`), so the code tested there is
always the code of this tree. Every command runs from a folder outside the tree, so that Python
imports the installed wheel, not the sources. Checkpoints are made by Keras in this (the full)
environment and ported in the core one.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

import fashion_cnn
from fashion_cnn import scripts
from fashion_cnn.scripts import SCRIPTS

# a build, a virtual environment, a subprocess per command: `make test-install`, in .ci/run
pytestmark = [pytest.mark.slow, pytest.mark.install]

ROOT = Path(__file__).resolve().parents[1]
DIST = "fashion-cnn-parity"
NEEDS_KERAS = {"keras_ref.train", "keras_ref.visualize"}
# What a build takes from the tree: the sources, not the environments or runs beside them.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "runs", "dist", "build", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache", "bench")


def _run(args: list, cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**clean, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """{"wheel": …, "sdist": …}, built by `python -m build` from a copy of the tree (the build
    writes its egg-info beside the sources)."""
    tmp = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCES)
    built = _run([sys.executable, "-m", "build", "--outdir", tmp / "out", tmp / "src"], cwd=tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "out").glob("*.whl")
    (sdist,) = (tmp / "out").glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return [line for line in z.read(meta).decode().splitlines()
                if line.startswith(("Requires-Dist:", "Requires-Python:"))]


@pytest.fixture(scope="module")
def core(dist) -> Path:
    """The bin folder of the core environment, holding this tree's wheel."""
    home = Path(os.environ.get("CORE_VENV") or ROOT / ".venv-core")
    stamp = home / ".installed"
    key = hashlib.sha256("\n".join([sys.version, *_requires(dist["wheel"])]).encode()).hexdigest()
    bin_ = home / "bin"
    if stamp.is_file() and stamp.read_text().split()[0] == key:
        args = ["--no-deps", "--force-reinstall", dist["wheel"]]
    else:  # a real core install, every dependency resolved
        shutil.rmtree(home, ignore_errors=True)
        venv.create(home, with_pip=True)
        args = [dist["wheel"]]
    start = time.perf_counter()
    done = _run([bin_ / "python", "-m", "pip", "install", "-q", *args], cwd=home, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    if args[0] != "--no-deps":
        stamp.write_text(f"{key} installed in {time.perf_counter() - start:.0f} s\n")
    return bin_


def test_wheel_and_sdist(dist):
    """twine check passes; the wheel holds the four packages and nothing else of the tree (no
    tests, no notebooks), under fashion_cnn.__version__, with every console script."""
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", *dist.values()],
                   cwd=ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    version = fashion_cnn.__version__
    assert dist["wheel"].name == f"fashion_cnn_parity-{version}-py3-none-any.whl"
    assert dist["sdist"].name == f"fashion_cnn_parity-{version}.tar.gz"
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = z.namelist()
        info = f"fashion_cnn_parity-{version}.dist-info/"
        meta = z.read(info + "METADATA").decode()
        entry_points = z.read(info + "entry_points.txt").decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"fashion_cnn", "torch_impl", "keras_ref", "parity", info.rstrip("/")}, tops
    unwanted = [n for n in names if "tests/" in n or "notebooks" in n or "conftest" in n
                or n.rsplit("/", 1)[-1].startswith("test_")]
    assert not unwanted, f"the wheel holds {unwanted}"
    assert f"\nVersion: {version}\n" in meta
    for script, module in SCRIPTS.items():  # each through fashion_cnn.scripts to its main
        function = script.replace("-", "_")
        assert f"{script} = fashion_cnn.scripts:{function}" in entry_points, script
        assert callable(getattr(scripts, function)), script
        assert callable(importlib.import_module(module).main), module
    core = [line for line in _requires(dist["wheel"]) if "extra ==" not in line]
    assert not [line for line in core if "keras" in line or "tensorflow" in line], core


def test_core_install_has_no_keras(core, tmp_path):
    """The core install resolves (pip check) without TensorFlow or Keras: neither can be
    imported there, every core command imports without them, and the code is the wheel's."""
    code = (
        "import importlib, importlib.util, json, sys\n"
        "mods = " + repr(sorted(set(SCRIPTS.values()) - NEEDS_KERAS)) + "\n"
        "for m in mods: importlib.import_module(m)\n"
        "import fashion_cnn\n"
        "print(json.dumps({'file': fashion_cnn.__file__, 'version': fashion_cnn.__version__,\n"
        "  'findable': [m for m in ('tensorflow', 'keras') if importlib.util.find_spec(m)],\n"
        "  'loaded': [m for m in ('tensorflow', 'keras') if m in sys.modules]}))\n"
    )
    found = _run([core / "python", "-c", code], cwd=tmp_path)
    assert found.returncode == 0, found.stderr[-3000:]
    facts = json.loads(found.stdout)
    assert facts["findable"] == [] and facts["loaded"] == [], facts
    assert Path(facts["file"]).is_relative_to(core.parent), facts["file"]
    assert facts["version"] == fashion_cnn.__version__
    checked = _run([core / "python", "-m", "pip", "check"], cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_console_scripts_and_version(core, tmp_path):
    """Every console script is installed; the core ones answer --version with 'keras absent',
    the Keras reference's say in one line that they need the keras extra, and exit 1 — as
    console scripts, and as `python -m` (those two, and parity.port)."""
    for script, module in SCRIPTS.items():
        assert (core / script).is_file(), f"no console script {script}"
        commands = [[core / script]]
        if module in NEEDS_KERAS or module == "parity.port":
            commands.append([core / "python", "-m", module])
        for command in commands:
            done = _run([*command, "--version"], cwd=tmp_path)
            if module in NEEDS_KERAS:
                assert done.returncode == 1 and done.stdout == "", (command, done)
                assert done.stderr.splitlines() == [
                    f"error: {module}: needs the 'keras' extra: pip install '{DIST}[keras]'"
                ], done.stderr
            else:
                assert done.returncode == 0, (command, done.stderr[-2000:])
                assert done.stdout.startswith(f"{module} {fashion_cnn.__version__} (torch ")
                assert done.stdout.rstrip().endswith(", keras absent)"), done.stdout


def test_port_and_check_without_keras(core, keras_ckpts, data_dir, tmp_path):
    """The book's CNN, saved by Keras here, ported and checked in the core install: the check
    runs against the numpy reference of the Keras layers, and passes."""
    src = keras_ckpts["trained"].files[".keras"]
    dst, report = tmp_path / "book.pt", tmp_path / "report.json"
    opts = ["--samples", "100", "--data-dir", data_dir]
    ported = _run([core / "keras-torch-port", src, dst, *opts], cwd=tmp_path)
    assert ported.returncode == 0, ported.stderr[-2000:]
    assert "numpy float32 reference of the Keras layers" in ported.stdout, ported.stdout
    checked = _run([core / "keras-torch-check", src, dst, *opts, "--test-images", "1000",
                    "--json", report], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "PASS" in checked.stdout, checked.stdout
    facts = json.loads(report.read_text())
    assert facts["passed"] and facts["book"] and "numpy" in facts["keras_side"], facts
    assert facts["test_set"]["predictions_agreeing"] == 1000, facts["test_set"]


def _zoo_model(path: Path) -> Path:
    """A Functional model beyond the book's — strided convolutions, BatchNormalization with
    seeded statistics, a residual Add, global pooling — saved by Keras (this environment)."""
    import numpy as np

    from keras_ref.backend import keras

    L = keras.layers
    keras.utils.set_random_seed(7)
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    y = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(x))
    bn = next(layer for layer in model.layers if isinstance(layer, L.BatchNormalization))
    rng = np.random.default_rng(7)
    gamma, beta, mean, var = (w.shape for w in bn.get_weights())
    bn.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta),
                    rng.normal(0, 0.1, mean), rng.uniform(0.5, 2.0, var)])
    model.save(path)
    return path


def test_zoo_model_without_keras(core, data_dir, tmp_path):
    """A model of another architecture ported (and its source written) in the core install,
    checked against the numpy reference."""
    src = _zoo_model(tmp_path / "zoo.keras")
    dst = tmp_path / "zoo.safetensors"
    opts = ["--samples", "100", "--data-dir", data_dir]
    ported = _run([core / "keras-torch-port", src, dst, *opts, "--module-py", tmp_path / "zoo.py"],
                  cwd=tmp_path)
    assert ported.returncode == 0, ported.stderr[-2000:]
    assert "BatchNormalization" in ported.stdout and "numpy" in ported.stdout, ported.stdout
    checked = _run([core / "keras-torch-check", src, dst, *opts, "--test-images", "1000"],
                   cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "PASS" in checked.stdout and "numpy" in checked.stdout, checked.stdout


def test_train_evaluate_predict_in_the_core_install(core, data_dir, tmp_path):
    """The book's recipe for a few steps, then evaluate and predict on its checkpoint."""
    out = tmp_path / "run"
    trained = _run([core / "fashion-cnn-train", "--device", "cpu", "--epochs", "1", "--limit",
                    "256", "--data-dir", data_dir, "--out", out], cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (out / "best-cnn-model.pt").is_file() and (out / "history.png").is_file()
    assert len(json.loads((out / "history.json").read_text())["history"]["loss"]) == 1
    evaluated = _run([core / "fashion-cnn-evaluate", out / "best-cnn-model.pt", "--device",
                      "cpu", "--data-dir", data_dir, "--limit", "500", "--json"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout)
    assert result["total"] == 500 and 0.1 < result["accuracy"] <= 1, result
    predicted = _run([core / "fashion-cnn-predict", out / "best-cnn-model.pt", "--device",
                      "cpu", "--data-dir", data_dir, "--index", "0"], cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
