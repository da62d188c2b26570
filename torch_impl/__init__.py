"""The Fashion-MNIST CNN of 혼자 공부하는 머신러닝+딥러닝 (chapters 8-2 and 8-3) in PyTorch.

This package never imports TensorFlow or Keras. Its data module (`torch_impl.fashion_mnist`)
is framework-free (numpy only), so the Keras reference shares the one verification.
"""
