"""The Keras reference: chapters 8-2 and 8-3 of 혼자 공부하는 머신러닝+딥러닝, as the book
writes them.

Never imports torch. Data comes through `torch_impl.fashion_mnist`, which is numpy-only, so both
frameworks share one verification of the files and one split.
"""
