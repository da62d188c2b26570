"""What relates the Keras reference and the PyTorch product: the mapping table, Keras and PyTorch
checkpoint files, the port and check command lines, and the parity suite (`pytest parity/`)."""
