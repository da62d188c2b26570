"""Benchmarks, Keras against PyTorch: speed (make bench) and full-run accuracy
(make bench-accuracy)."""
