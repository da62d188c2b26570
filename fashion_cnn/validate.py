"""One check of a set of named tensors against what a model expects, for every reader and writer.

Like Hugging Face's loader, it reports every problem at once — missing names, unexpected names,
shapes, dtypes, NaN/Inf — in one line that names the file, rather than stopping at the first.
It looks at shapes and dtypes through small accessors, so numpy arrays, torch tensors and
not-yet-read HDF5 datasets are checked by the same code; no framework is imported here (numpy
only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fashion_cnn.errors import UserError

MAX_LISTED = 6  # names listed per kind of problem before "… and N more"


@dataclass
class Problems:
    """What is wrong with a set of tensors, by kind, in the order found."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name has shape (…), expected (…)"
    other: list[str] = field(default_factory=list)  # dtype, NaN/Inf, not a tensor, …

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched or self.other)

    def line(self) -> str:
        """Every problem, in one line: missing and unexpected names, then the rest."""
        parts = [f"missing {_listed(self.missing)}"] if self.missing else []
        parts += [f"unexpected {_listed(self.unexpected)}"] if self.unexpected else []
        parts += [_listed(items) for items in (self.mismatched, self.other) if items]
        return "; ".join(parts)


def _listed(items: list[str]) -> str:
    if len(items) <= MAX_LISTED:
        return ", ".join(items)
    return f"{', '.join(items[:MAX_LISTED])} … and {len(items) - MAX_LISTED} more"


def check_tensors(
    found: Mapping[str, object],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    *,
    shape_of: Callable[[object], tuple[int, ...] | None],
    checks: Sequence[Callable[[str, object], str | None]] = (),
    before_shape: Callable[[str, object], str | None] | None = None,
    label: Callable[[str], str] = str,
    what: str = "",
) -> None:
    """Raise one UserError listing every problem of `found` against `expected` (name → shape).

    `shape_of(value)` gives a value's shape, or None for a value that is not a tensor at all;
    `checks(name, value)` return a problem (dtype, NaN/Inf, …) or None; they run in order on
    values of the right shape, up to the first problem (`before_shape`, on every value, before its
    shape is asked); `label(name)` says where a name sits in
    the file (an HDF5 path); `what` prefixes a message that names missing or unexpected tensors
    ("not the book's CNN: ").
    """
    problems = Problems()
    problems.missing = [label(n) for n in expected if n not in found]
    problems.unexpected = [label(str(n)) for n in found if n not in expected]
    for name, want in expected.items():
        if name not in found:
            continue
        value = found[name]
        problem = before_shape(name, value) if before_shape is not None else None
        if problem is not None:  # a value whose shape cannot even be asked (a nested tensor)
            problems.other.append(problem)
            continue
        got = shape_of(value)
        if got is None:
            problems.other.append(f"{label(name)} is a {type(value).__name__}, not a tensor")
            continue
        if tuple(got) != tuple(want):
            problems.mismatched.append(f"{label(name)} has shape {tuple(got)}, expected {want}")
            continue
        # The first problem of each tensor: later checks may assume the earlier ones passed.
        problem = next((p for check in checks if (p := check(name, value)) is not None), None)
        if problem is not None:
            problems.other.append(problem)
    if problems:
        prefix = what if problems.missing or problems.unexpected else ""
        raise UserError(f"{source}: {prefix}{problems.line()}")


def finite(allow_nonfinite: bool, label: Callable[[str], str] = str, hint: str = ""):
    """A check: no NaN/Inf values (numpy arrays, or anything np.asarray reads without copying)."""

    def check(name: str, value: object) -> str | None:
        if allow_nonfinite:
            return None
        array = np.asarray(value)
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        return f"{label(name)} holds {bad} NaN/Inf values{hint}" if bad else None

    return check
