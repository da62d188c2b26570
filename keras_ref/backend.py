"""Keras (and TensorFlow, its backend here), imported for the reference with TensorFlow's
start-up chatter kept off stderr.

TensorFlow 2.21 prints "oneDNN custom operations are on …" from C++ before its logging is set
up, whatever TF_CPP_MIN_LOG_LEVEL says; a command's refusal must stay one line on stderr. So
the import runs with file descriptor 2 pointed at /dev/null and put back right after (an error
raised by the import itself is still printed: the descriptor is restored before it travels up).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Descriptor 2 → /dev/null for the block (C++ libraries write there, not to sys.stderr)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with native_stderr_silenced():
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402  (the book's backend: op determinism, thread settings)

__all__ = ["keras", "native_stderr_silenced", "tf"]
