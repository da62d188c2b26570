"""The README's command lines cannot drift from the code: every `python -m MODULE …` line in its
shell blocks names a module that answers `--help` through this interpreter (the project's venv
under `make test`), and every flag the line shows is one that module's help lists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # an interpreter per command line

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"^(?:torchrun .*?)?python -m ([\w.]+)|^torchrun .*?-m ([\w.]+)")


def readme_commands() -> dict[str, set[str]]:
    """module → the flags the README shows with it, from its ```sh blocks."""
    text = (ROOT / "README.md").read_text()
    found: dict[str, set[str]] = {}
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            match = COMMAND.match(line)
            if match:
                module = match.group(1) or match.group(2)
                # A torchrun line: its own flags before `-m MODULE`, the module's after.
                found.setdefault(module, set()).update(FLAG.findall(line[match.end() :]))
                if line.startswith("torchrun "):
                    found.setdefault("torchrun", set()).update(FLAG.findall(line[: match.end()]))
    return found


@pytest.fixture(scope="module")
def help_texts() -> dict[str, str]:
    """Every module's --help, the interpreters started side by side (each imports a framework)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    procs = {
        module: subprocess.Popen(
            [*([torchrun] if module == "torchrun" else [sys.executable, "-m", module]), "--help"],
            cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for module in COMMANDS
    }
    texts = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"python -m {module} --help: {err[-500:]}"
        texts[module] = out
    return texts


COMMANDS = readme_commands()


def test_readme_shows_the_users_commands():
    for module in ("torch_impl.train", "parity.port", "parity.check", "parity.visualize"):
        assert module in COMMANDS, f"the README shows no `python -m {module}` line"


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_documented_flags_exist(module, help_texts):
    listed = set(FLAG.findall(help_texts[module]))
    missing = sorted(COMMANDS[module] - listed)
    assert not missing, f"README shows python -m {module} {missing}, which --help does not list"


PROJECT = ("bench/", "docs/", "fashion_cnn/", "keras_ref/", "notebooks/", "parity/", "tests/",
           "torch_impl/")


def test_documented_paths_exist():
    """Every project path the README names in backticks is in the tree (a glob matches one)."""
    text = (ROOT / "README.md").read_text()
    named = {p for p in re.findall(r"`([a-z_]+/[A-Za-z0-9_./*-]*)`", text) if p.startswith(PROJECT)}
    made = ("/results/", "/runs/")  # written by the commands, not in a clone
    missing = sorted(p for p in named
                     if not any(m in p for m in made) and not list(ROOT.glob(p.rstrip("/"))))
    assert not missing, f"the README names {missing}, which the tree does not hold"


def test_documented_names_resolve():
    """Every `package.module.name` the README names is importable, down to its attribute."""
    import importlib

    text = (ROOT / "README.md").read_text()
    names = set(re.findall(r"`((?:parity|torch_impl|fashion_cnn|keras_ref)(?:\.\w+)+)", text))
    unresolved = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                unresolved.append(name)
            break
        else:
            unresolved.append(name)
    assert not unresolved, f"the README names {unresolved}, which do not resolve"
