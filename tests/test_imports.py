"""The import rules between the packages, proven two ways: every import statement (also those
inside functions) parsed with `ast`, and the modules each package really loads in a fresh
interpreter.

- fashion_cnn: the framework-free core; imports no framework and none of the other packages.
- torch_impl: the core and torch; never TensorFlow/Keras, keras_ref or parity — but for one
  import inside a function (`LAZY`): `--resume-from model.keras` reads the Keras file through
  parity's framework-free readers, loaded only then (and loading no TensorFlow).
- keras_ref: the core and Keras; never torch, torch_impl or parity.
- parity: may import all three.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS_TORCH = ("torch", "torchvision", "torchinfo", "safetensors")
FRAMEWORKS_TF = ("tensorflow", "keras", "tf_keras")

# (file, module) → the one import allowed inside a function only, never at the top of the file.
LAZY = {("torch_impl/resume.py", "parity.training_files")}
# package → top-level names its source may never import.
FORBIDDEN = {
    "fashion_cnn": FRAMEWORKS_TORCH + FRAMEWORKS_TF + ("torch_impl", "keras_ref", "parity"),
    "torch_impl": FRAMEWORKS_TF + ("keras_ref", "parity"),
    "keras_ref": FRAMEWORKS_TORCH + ("torch_impl", "parity"),
}


def _modules(package: str) -> list[str]:
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / package)])]


def _imported_tops(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _loaded_after_import(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import_statements(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no source in {package}"
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for path in files
        for line, top in _imported_tops(path)
        if top in FORBIDDEN[package] and line not in _lazy_lines(path)
    ]
    assert bad == [], bad


def _lazy_lines(path: Path) -> set[int]:
    """The lines of `LAZY`'s imports in `path` that sit inside a function."""
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    return {node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (rel, node.module) in LAZY
            and id(node) not in top}


@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_modules_load_no_forbidden_package(package):
    modules = _modules(package)
    assert len(modules) >= 3, modules
    loaded = _loaded_after_import(modules, FORBIDDEN[package])
    assert loaded == [], f"{package} loaded {loaded[:5]}"


def test_ast_check_sees_nested_imports(tmp_path):
    """The parser finds an import inside a function, which a module-loading check cannot see."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from torch import nn\n    import keras.layers as L\n")
    assert _imported_tops(src) == [(2, "torch"), (3, "keras")]

@pytest.mark.slow

def test_the_port_s_readers_and_numpy_reference_load_no_framework():
    """The graph IR, the layer registry, the spec, every Keras file's reader and writer, the
    book as data and the check's comparison are numpy + h5py only: reading a Keras file, and
    checking a port where Keras cannot be imported, need no TensorFlow — and these need no
    torch either (an entry's PyTorch parts import it when called)."""
    modules = ["parity", "parity.ir.keras_config", "parity.layers", "parity.spec", "parity.book",
               "parity.formats", "parity.formats.keras_v3", "parity.formats.keras_h5_legacy",
               "parity.verify.compare", "parity.verify.layerwise"]
    loaded = _loaded_after_import(modules, FRAMEWORKS_TORCH + FRAMEWORKS_TF)
    assert loaded == [], f"{modules} loaded {loaded[:5]}"


@pytest.mark.slow
def test_the_numpy_reference_loads_no_keras():
    """Where Keras cannot be imported the check runs the numpy reference of its layers: it and
    the port's pipeline load no TensorFlow or Keras until the Keras side is asked for."""
    modules = ["parity.reference.numpy_keras", "parity.pipeline", "parity.port", "parity.check"]
    loaded = _loaded_after_import(modules, FRAMEWORKS_TF)
    assert loaded == [], f"{modules} loaded {loaded[:5]}"
