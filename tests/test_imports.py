"""The import rules: torch_impl never loads TensorFlow/Keras; keras_ref never loads torch."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    path = ROOT / package
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def _loaded_after_import(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_torch_impl_never_imports_tensorflow_or_keras():
    modules = _modules("torch_impl")
    assert "torch_impl.model" in modules and "torch_impl.fashion_mnist" in modules
    loaded = _loaded_after_import(modules, ("tensorflow", "keras", "tf_keras"))
    assert loaded == [], f"torch_impl loaded {loaded[:5]}"


def test_keras_ref_never_imports_torch():
    modules = _modules("keras_ref")
    assert "keras_ref.model" in modules and "keras_ref.train" in modules
    loaded = _loaded_after_import(modules, ("torch", "torchvision"))
    assert loaded == [], f"keras_ref loaded {loaded[:5]}"


@pytest.mark.parametrize("package,forbidden", [("torch_impl", ("tensorflow", "keras")),
                                               ("keras_ref", ("torch",))])  # fmt: skip
def test_no_forbidden_import_statements(package, forbidden):
    """Also catch imports inside functions, which the module-loading check cannot see."""
    for path in (ROOT / package).glob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from"):
                top = words[1].split(".")[0]
                assert top not in forbidden, f"{path.name}:{n} imports {top}"
