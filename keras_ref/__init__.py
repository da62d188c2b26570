"""The Keras reference: chapters 8-2 and 8-3 of 혼자 공부하는 머신러닝+딥러닝, as the book
writes them.

Imports Keras and the framework-free core `fashion_cnn` only — never torch or torch_impl. The
data comes through `fashion_cnn.fashion_mnist`, so both frameworks share one verification of the
files and one split.
"""
