"""What the readers take at most, stated once: a file's text is bounded here, not by itself."""

# A `.keras` zip's members, and a bound on what is read of each (the book's weights take 1.3 MB,
# with Adam's two moments 4 MB): a zip bomb or a foreign archive is refused before it is inflated.
CONFIG_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER = "config.json", "metadata.json", "model.weights.h5"
MAX_JSON_BYTES = 1 << 20  # config.json, metadata.json, a legacy model_config, a .pt's architecture
MAX_WEIGHTS_BYTES = 256 << 20  # a compressed weights member, or one deflated dataset, inflated
