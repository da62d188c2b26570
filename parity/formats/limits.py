"""What the readers take at most, stated once: a file's text is bounded here, not by itself."""

# A `.keras` zip's members, and a bound on what is read of each (the book's weights take 1.3 MB,
# with Adam's two moments 4 MB): a zip bomb or a foreign archive is refused before it is inflated.
CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER = "config.json", "metadata.json", "model.weights.h5"
# config.json, metadata.json, a legacy model_config, a .pt's architecture: keras.applications'
# largest config (NASNetLarge's, 1,041 layers) is 1.6 MB; parsing 16 MB of JSON takes ~0.2 GB
MAX_JSON_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 256 << 20  # a compressed weights member, or one deflated dataset, inflated
