"""The console scripts (`[project.scripts]` in pyproject.toml): each runs a command's `main` as
`python -m MODULE` does, with the command lines' thread policy set first for the commands that
run torch (`fashion_cnn.threads`: libgomp reads it once, when torch is imported, so it must come
before the command's module is). Framework-free, like the rest of fashion_cnn.
"""

from __future__ import annotations

import importlib

from fashion_cnn import threads

# console script → the module whose `main` it runs
SCRIPTS = {
    "keras-torch-port": "parity.port",
    "keras-torch-check": "parity.check",
    "keras-torch-visualize": "parity.visualize",
    "fashion-cnn-train": "torch_impl.train",
    "fashion-cnn-evaluate": "torch_impl.evaluate",
    "fashion-cnn-predict": "torch_impl.predict",
    "fashion-cnn-visualize": "torch_impl.visualize",
    "fashion-cnn-keras-train": "keras_ref.train",
    "fashion-cnn-keras-visualize": "keras_ref.visualize",
    "fashion-cnn-data": "fashion_cnn.fashion_mnist",
}
TORCH_COMMANDS = ("parity.", "torch_impl.")  # the modules that call prepare_cli_env as __main__


def run(module: str) -> int:
    if module.startswith(TORCH_COMMANDS):
        threads.prepare_cli_env()
    return importlib.import_module(module).main()


def keras_torch_port() -> int:
    return run("parity.port")


def keras_torch_check() -> int:
    return run("parity.check")


def keras_torch_visualize() -> int:
    return run("parity.visualize")


def fashion_cnn_train() -> int:
    return run("torch_impl.train")


def fashion_cnn_evaluate() -> int:
    return run("torch_impl.evaluate")


def fashion_cnn_predict() -> int:
    return run("torch_impl.predict")


def fashion_cnn_visualize() -> int:
    return run("torch_impl.visualize")


def fashion_cnn_keras_train() -> int:
    return run("keras_ref.train")


def fashion_cnn_keras_visualize() -> int:
    return run("keras_ref.visualize")


def fashion_cnn_data() -> int:
    return run("fashion_cnn.fashion_mnist")
