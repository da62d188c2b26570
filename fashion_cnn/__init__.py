"""The framework-free core that torch_impl, keras_ref and parity share.

numpy, matplotlib and the standard library only — never torch, TensorFlow or Keras:
the verified Fashion-MNIST and the book's split (`fashion_mnist`), the one error type and the
command-line edge (`errors`), history.json and the loss plot (`history`), and atomic file
writes (`files`).
"""

# The project's one version: setuptools reads it (pyproject.toml, [tool.setuptools.dynamic]) and
# every command's --version prints it.
__version__ = "0.1.0"
