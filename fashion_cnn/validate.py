"""One check of a set of named tensors against what a model expects, for every reader and writer.

Like Hugging Face's loader, it reports every problem at once — missing names, unexpected names,
shapes, dtypes, NaN/Inf — in one line that names the file, rather than stopping at the first.
It looks at shapes and dtypes through small accessors, so numpy arrays, torch tensors and
not-yet-read HDF5 datasets are checked by the same code; no framework is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

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
    checks: Iterable[Callable[[str, object], str | None]] = (),
    label: Callable[[str], str] = str,
    what: str = "",
) -> None:
    """Raise one UserError listing every problem of `found` against `expected` (name → shape).

    `shape_of(value)` gives a value's shape, or None for a value that is not a tensor at all;
    each of `checks(name, value)` returns a problem (dtype, NaN/Inf, …) or None, and runs only on
    values of the right shape; `label(name)` says where a name sits in the file (an HDF5 path);
    `what` prefixes the message ("not the book's CNN: ").
    """
    problems = Problems()
    problems.missing = [label(n) for n in expected if n not in found]
    problems.unexpected = [label(str(n)) for n in found if n not in expected]
    for name, want in expected.items():
        if name not in found:
            continue
        value = found[name]
        got = shape_of(value)
        if got is None:
            problems.other.append(f"{label(name)} is a {type(value).__name__}, not a tensor")
            continue
        if tuple(got) != tuple(want):
            problems.mismatched.append(f"{label(name)} has shape {tuple(got)}, expected {want}")
            continue
        problems.other += [p for check in checks if (p := check(name, value)) is not None]
    if problems:
        raise UserError(f"{source}: {what}{problems.line()}")
