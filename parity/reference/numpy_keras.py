"""The Keras side of the check where Keras cannot be imported (a GPU box with torch only): each
layer's float32 numpy implementation (its registry entry's `numpy`, in Keras's own layout),
run over the graph. Inference semantics (Dropout is the identity, BatchNormalization uses its
moving statistics), NHWC maps, H,W,C flatten order, TensorFlow's asymmetric 'same' padding.
Sums and transcendental functions are computed in float64, each layer's output rounded to
float32: Keras's float32 kernels differ from it by their own rounding only (parity/tests).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from parity.layers.activations import activate
from parity.spec import Spec
from parity.verify.probes import probes


def layer_outputs(
    spec: Spec, weights: Mapping[str, np.ndarray], images: np.ndarray
) -> list[np.ndarray]:
    """Each probe's output (`parity.verify.probes`) on `images` (Keras layout, batch first)."""
    x = np.asarray(images, dtype=np.float32)
    if x.shape[1:] != tuple(spec.input_shape):
        raise ValueError(f"images of shape {x.shape[1:]}, the model takes {spec.input_shape}")
    tensors = {spec.graph.input_name: x}
    pre: dict[str, np.ndarray] = {}
    wanted = {p.node for p in probes(spec) if p.pre}
    for ns in spec.nodes:
        w = {v.name: weights[ns.key(v)] for v in ns.out.variables}
        xs = [tensors[i] for i in ns.node.tensor_inputs]
        if ns.node.name in wanted:  # the value before its activation, then the activation
            before = np.asarray(ns.entry.numpy(ns.entry.linear(ns.params), w, xs), np.float32)
            pre[ns.node.name] = before
            out = activate(ns.params.activation, before)
        else:
            out = ns.entry.numpy(ns.params, w, xs)
        tensors[ns.node.name] = np.asarray(out, dtype=np.float32)
    return [pre[p.node] if p.pre else tensors[p.node] for p in probes(spec)]


class NumpyReference:
    """The numpy reference holding a model's weights (float32 copies, Keras layout)."""

    description = "numpy float32 reference of the Keras layers (Keras not importable)"

    def __init__(self, spec: Spec, weights: Mapping[str, np.ndarray]) -> None:
        self.spec = spec
        self.weights = {name: np.array(weights[name], dtype=np.float32) for name in weights}

    def outputs(self, images: np.ndarray, start: int = 0,
                stop: int | None = None) -> list[np.ndarray]:
        """The probes' [start, stop) outputs on `images` (one batch; all are computed)."""
        return layer_outputs(self.spec, self.weights, images)[start:stop]

    def final(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[-1]
