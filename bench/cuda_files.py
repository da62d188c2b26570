"""The files `bench/cuda_check.sh` needs on a GPU box that has PyTorch but no TensorFlow.

    python -m bench.cuda_files [--out .gpu]

Made here, where Keras and TensorFlow are installed: four real Keras models (the book's CNN, and
the zoo's BatchNorm/strided, pooling/dilated and no-channel-axis MLP models of
`parity/tests/test_zoo.py`), each briefly trained (one seeded epoch of Adam on 6,000 real
training images) and saved by Keras as `.keras`, each ported here to `.pt` (checked against
Keras itself); a copy of the four Fashion-MNIST files; and torchinfo's wheel for Python 3.12 in
`.whl/`. Run `bash bench/cuda_check.sh` there with `.gpu` and `.whl` beside the checkout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

MODELS = ("book", "cnn_bn_strided", "cnn_pool_dilated", "mlp_dropout_hw")
TRAIN_IMAGES = 6000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cuda_files", description=__doc__)
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from fashion_cnn.fashion_mnist import load_data, locate
    from keras_ref.backend import keras
    from parity.port import main as port
    from parity.tests.test_zoo import _zoo

    out = args.out
    (out / "data").mkdir(parents=True, exist_ok=True)
    for f in locate(None).iterdir():
        shutil.copy(f, out / "data" / f.name)
    (x, y), _ = load_data(None)
    x = (x[:TRAIN_IMAGES] / 255.0).astype(np.float32)
    zoo = _zoo(keras)
    for name in MODELS:
        keras.utils.set_random_seed(42)
        model = zoo[name]()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x.reshape(-1, *model.input_shape[1:]), y[:TRAIN_IMAGES], epochs=1,
                  batch_size=32, verbose=0)
        model.save(out / f"{name}.keras")
        if port([str(out / f"{name}.keras"), str(out / f"{name}.pt"), "--force"]) != 0:
            return 1
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    "--platform", "manylinux_2_17_x86_64", "-d", ".whl", "torchinfo==1.8.0"],
                   check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
