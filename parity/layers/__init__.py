"""One converter per Keras layer class: Keras config + incoming shape → PyTorch modules + rows.

The registry is one dict, `CONVERTERS`, filled by `@converter("Conv2D")` on one small function
per Keras layer class (onnx2torch's pattern). Each function takes the layer's config and the
state of the chain (the incoming shape in Keras order, batch-free; a Flatten whose H,W,C → C,H,W
permutation is still pending) and returns a `Converted`: the PyTorch modules, each with its
*kind* (the builder numbers them: conv1, relu1, pool1, …), the output shape (Keras order), and
the weight rows — Keras variable → module parameter → transform, the mapping as data.

Tensors inside the PyTorch module are in PyTorch's layout: a Keras (H, W, C) map is an
(N, C, H, W) tensor, so a Flatten gives C,H,W order and the next Dense takes its rows permuted
(`flat_dense`), exactly as `parity.mapping.FLAT_DENSE` does for the book's CNN. Every converter
refuses, in one line naming the layer, what it cannot compute exactly. Nothing is deserialised
or run: configs are plain JSON values.
"""

from __future__ import annotations

from parity.layers import convert  # noqa: F401  (fills CONVERTERS)
from parity.layers.convert import activation_layer, relu_layer  # noqa: F401
from parity.layers.modules import (  # noqa: F401
    AvgPool2dSame,
    Exponential,
    FlattenHWC,
    GlobalPool2d,
    KerasReshape,
    Rescale,
)
from parity.layers.registry import (  # noqa: F401
    CONVERTERS,
    FIELDS,
    PASS_FLATTEN,
    Chain,
    Converted,
    Fixed,
    Shape,
    Var,
    activation,
    flat_dense,
    flat_vector,
    supported,
)
