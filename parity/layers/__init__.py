"""One registry entry per Keras layer class (`parity.layers.registry`), grouped by family as
Keras's own `layers/` and onnx2torch's `node_converters/` group them: core, conv (and separable),
pooling, merging, normalization, activations, reshaping. Importing this package fills `REGISTRY`;
it imports no framework (an entry's PyTorch parts import torch when called)."""

from parity.layers import (  # noqa: F401  (each family registers its entries)
    activations,
    applications,
    conv,
    core,
    merging,
    normalization,
    pooling,
    reshaping,
    separable,
)
from parity.layers.registry import (  # noqa: F401
    REGISTRY,
    Converted,
    Entry,
    Fixed,
    In,
    Out,
    Param,
    Shape,
    Var,
    supported,
)
