"""Shared fixtures for tests/ and parity/: the real Fashion-MNIST, verified once per session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# torch's lazily imported compiler stack (torch._dynamo, which loads triton; the first
# torch.optim optimizer imports it) segfaults when it is loaded after TensorFlow in the same
# process. Load it first, before any test module imports keras.
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401

from fashion_cnn.fashion_mnist import locate  # noqa: E402
from fashion_cnn.threads import usable_cpus  # noqa: E402

# Under pytest-xdist (`make test` runs TEST_WORKERS processes), each worker's frameworks take their
# share of the cores: two workers' spinning OpenMP threads on the same cores wait for each other
# (README, "Speed on a busy machine"). The CLIs the tests start choose their own count.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = max(1, usable_cpus() // _WORKERS)
    torch.set_num_threads(_SHARE)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(_SHARE))  # read when TF starts its pools


@pytest.fixture(scope="session")
def data_dir():
    """The directory of the four verified official IDX files."""
    return locate()


@pytest.fixture(scope="session")
def raw_data(data_dir):
    """((train_input, train_target), (test_input, test_target)) uint8, as Keras's load_data()."""
    from fashion_cnn.fashion_mnist import load_data

    return load_data(data_dir)


@pytest.fixture(scope="session")
def book_data(data_dir):
    """The book's split as PyTorch tensors (torch_impl.data.BookData)."""
    from torch_impl.data import load_book_data

    return load_book_data(data_dir)


@pytest.fixture(scope="session")
def keras_ckpts(tmp_path_factory, data_dir):
    """{"random": …, "trained": …}: real Keras checkpoints of the book's CNN in every format,
    saved by Keras itself once per session (parity.tests.testdata.KerasCheckpoints)."""
    from parity.tests.testdata import session_checkpoints

    return session_checkpoints(tmp_path_factory, data_dir)


@pytest.fixture
def rng():
    """A seeded generator: tests seed before they sample."""
    return np.random.default_rng(1234)

