"""What relates the Keras reference and the PyTorch product: one port path for every model — a
framework-free graph of the Keras model (`ir`, `spec`), one registry entry per Keras layer class
(`layers`), files by format (`formats`), the PyTorch module (`build`), the two sides of the
check (`reference`, `verify`), readable source (`export`) — thin `port`, `check` and
`visualize` command lines over `pipeline`, and the parity suite (`pytest parity/`).

The Python interface, loaded on first use so that `import parity` stays framework-free:

- `parity.load_torch_model(path)`: a `.keras` or `.h5` of any supported Keras model, or a
  PyTorch file written by this port → an `nn.Module` in eval mode, weights loaded (NCHW images
  in, Keras's outputs out);
- `parity.save_keras(module, path, input_shape)`: an `nn.Sequential` of supported modules, or a
  module built by this port → a `.keras` or `.h5` that `keras.models.load_model` opens;
- `parity.load_torch_training(path) -> (module, optimizer)`: a `.keras` saved with its
  optimizer, or a PyTorch training file → the module and a Keras-exact optimizer holding the
  file's state; `parity.save_torch_training(module, optimizer, path)` and
  `parity.save_keras_training(module, optimizer, path)` write them back (`parity.training_files`);
- `parity.keras_training(module)`: a ported module whose BatchNormalization and Dropout train
  as Keras's do (`parity.training`; Dropout's masks injectable); inference and state_dict
  unchanged.
"""

from __future__ import annotations

__all__ = ["keras_training", "load_torch_model", "load_torch_training", "save_keras",
           "save_keras_training", "save_torch_training"]
_TRAINING_FILES = ("load_torch_training", "save_keras_training", "save_torch_training")


def __getattr__(name: str):
    if name == "load_torch_model":
        from parity.pipeline import load_torch_model

        return load_torch_model
    if name == "save_keras":
        from parity.export.to_keras import save_keras

        return save_keras
    if name in _TRAINING_FILES:
        from parity import training_files

        return getattr(training_files, name)
    if name == "keras_training":
        from parity.training import keras_training

        return keras_training
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
