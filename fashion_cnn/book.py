"""The book's CNN in numbers both frameworks share (8-2); no framework is imported.

Conv2D(32, 3, relu, same) → MaxPooling2D(2) → Conv2D(64, 3, relu, same) → MaxPooling2D(2) →
Flatten → Dense(100, relu) → Dropout(0.4) → Dense(10, softmax). `keras_ref/model.py` writes it as
the book does; `torch_impl/model.py` builds the PyTorch module from these numbers, and
`parity/mapping.py` takes the Flatten permutation's shape from here.
"""

from __future__ import annotations

IMAGE_HW = (28, 28)
CHANNELS = 1
INPUT_CHW = (CHANNELS, *IMAGE_HW)  # PyTorch's layout (C, H, W)
INPUT_HWC = (*IMAGE_HW, CHANNELS)  # Keras's layout (H, W, C)
FILTERS = (32, 64)
KERNEL_SIZE = 3
DENSE_UNITS = 100
DROPOUT = 0.4
NUM_CLASSES = 10
# Two 2×2 poolings: 28 → 14 → 7, with conv2's 64 channels.
FLATTEN_CHW = (FILTERS[-1], IMAGE_HW[0] // 4, IMAGE_HW[1] // 4)  # (64, 7, 7)
FLATTEN_WIDTH = FLATTEN_CHW[0] * FLATTEN_CHW[1] * FLATTEN_CHW[2]  # 3,136
