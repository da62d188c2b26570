"""Checks for values read from an untrusted optimizer config: each failure is a `UserError` in
one line that names the field, shows the value (short, printable) and says what is expected."""

from __future__ import annotations

import math

from fashion_cnn.errors import UserError, one_line


def shown(value: object) -> str:
    """A value from the file, short and on one line, for a message."""
    text = one_line(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def field_name(name: object) -> str:
    """A field name from the file, short and on one line."""
    text = one_line(str(name))
    return text if len(text) <= 40 else text[:37] + "..."


def fail(where: str, value: object, expected: str) -> UserError:
    return UserError(f"optimizer config: {where}={shown(value)}: expected {expected}")


def unknown_field(where: str, name: object, value: object, fields: str) -> UserError:
    return UserError(f"optimizer config: {where}.{field_name(name)}={shown(value)}: no such "
                     f"field (supported: {fields})")


def number(where: str, value: object, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False, floats_only: bool = False) -> float:
    """A finite int or float (never a bool) in [lo, hi] (an end open where asked)."""
    kinds = (float,) if floats_only else (int, float)
    kind = "a float" if floats_only else "a number"
    lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '≤'} "
    hi_s = "" if hi is None else f" {'<' if hi_open else '≤'} {hi}"
    expected = f"{kind} {lo_s}x{hi_s}" if lo_s or hi_s else f"a finite {kind[2:]}"
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise fail(where, value, expected)
    if isinstance(value, int) and abs(value) > 2**53:
        raise fail(where, value, expected)
    v = float(value)
    if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (
        hi is not None and (v >= hi if hi_open else v > hi)
    ):
        raise fail(where, value, expected)
    return v


def boolean(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise fail(where, value, "true or false")
    return value


def header(config: object, module: str, what: str) -> tuple[str, dict]:
    """The class name and inner config of a serialized Keras object (`keras.saving`'s form)."""
    if not isinstance(config, dict):
        raise fail(what, config, "a dict with class_name and config")
    unknown = [k for k in config if k not in ("module", "class_name", "config", "registered_name")]
    if unknown:
        raise unknown_field(what, unknown[0], config[unknown[0]],
                            "module, class_name, config, registered_name")
    name = config.get("class_name")
    if not isinstance(name, str):
        raise fail(f"{what}.class_name", name, "a string")
    if config.get("module", module) != module:
        raise fail(f"{what}.module", config["module"], f"{module!r} (no custom objects)")
    if config.get("registered_name") not in (None, name):
        raise fail(f"{what}.registered_name", config["registered_name"],
                   "null (a built-in Keras class, no custom registered object)")
    inner = config.get("config", {})
    if not isinstance(inner, dict) or not all(isinstance(k, str) for k in inner):
        raise fail(f"{what}.config", inner, "a dict of named fields")
    return name, inner
