"""Fixtures of the parity suite: real Keras checkpoints (random and briefly trained) and the real
test images, made once per session."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def eval_images(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real test images (N, 28, 28, 1) float32 scaled as the book does, and labels."""
    from parity.pipeline import load_test_images

    return load_test_images(str(data_dir))


@pytest.fixture(params=["random", "trained"])
def ckpt(request, keras_ckpts):
    """Each model in turn: Keras's random initialisation, then briefly trained weights."""
    return keras_ckpts[request.param]
