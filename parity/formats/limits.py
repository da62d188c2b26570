"""What the readers take at most, stated once: a file's text is bounded here, not by itself."""

# A `.keras` zip's members, and a bound on what is read of each (the book's weights take 1.3 MB,
# with Adam's two moments 4 MB): a zip bomb or a foreign archive is refused before it is inflated.
CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER = "config.json", "metadata.json", "model.weights.h5"
# config.json, metadata.json, a legacy model_config, a .pt's architecture: keras.applications'
# largest config (NASNetLarge's, 1,041 layers) is 1.6 MB; parsing 16 MB of JSON takes ~0.2 GB
MAX_JSON_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 256 << 20  # a compressed weights member, or one deflated dataset, inflated
# A PyTorch file that carries its architecture (any model, not only the book's CNN): the file
# and what its zip records declare. ConvNeXtXLarge's is 1.4 GB; its tensors must also stand for
# no more bytes than the file holds, and memory then follows the model's own size.
MAX_TORCH_FILE_BYTES = 16 << 30
