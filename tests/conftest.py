"""Fixtures of tests/ beyond the root conftest: the hostile-input tests' canary, refusal check,
Keras blocker and real PyTorch checkpoint; the destination tests' real full and read-only file
systems and empty data folder (all defined in tests/hostile.py)."""

from hostile import (  # noqa: F401
    canary,
    full_disk,
    good_pt,
    keras_blocker,
    no_data,
    read_only,
    refuse,
)
