"""The parity suite (`pytest parity/`): Keras and PyTorch compute the same thing. Not installed
with the package."""
