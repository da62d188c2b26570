"""The install's optional parts (pyproject.toml's extras), and the one line a command prints
when it needs one that is not installed.

`pip install fashion-cnn-parity` is the core: PyTorch and the framework-free core, every command
but the Keras reference's. The `keras` extra adds TensorFlow and Keras, `notebooks` what runs
the notebooks. Whether an extra is there is asked of the import system (`find_spec`), which
imports nothing: TensorFlow is never loaded to find out.
"""

from __future__ import annotations

import importlib.util

from fashion_cnn.errors import UserError

DISTRIBUTION = "fashion-cnn-parity"

# extra → the top-level modules it provides (one of them missing: the extra is missing)
EXTRAS = {
    "keras": ("keras", "tensorflow"),
    "notebooks": ("torchinfo", "nbclient", "nbformat", "ipykernel", "jupytext"),
}


class MissingExtra(UserError):
    """A command or function needs an extra that is not installed."""


def check(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra (one line, exit 1 at a command's edge) unless `modules` (default:
    all of the extra's) can be imported."""
    wanted = EXTRAS[extra] if modules is None else modules
    if any(importlib.util.find_spec(m) is None for m in wanted):
        raise MissingExtra(f"{what}: needs the {extra!r} extra: "
                           f"pip install '{DISTRIBUTION}[{extra}]'")


def require(extra: str, command: str) -> None:
    """For a command's module, called before the imports the extra provides: without the extra,
    `error: COMMAND: needs the 'keras' extra: …` on stderr and exit status 1, not a traceback
    from the import (the module cannot be run, or imported, without it)."""
    try:
        check(extra, command)
    except MissingExtra as err:
        raise SystemExit(f"error: {err}") from None
