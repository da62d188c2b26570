"""The Fashion-MNIST CNN of 혼자 공부하는 머신러닝+딥러닝 (chapters 8-2 and 8-3) in PyTorch.

Imports torch and the framework-free core `fashion_cnn` only — never TensorFlow, Keras,
keras_ref or parity (tests/test_imports.py proves it).
"""
