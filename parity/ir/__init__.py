"""The framework-free graph IR of a Keras model (`graph`) and its Keras config, read and
written (`keras_config`)."""
