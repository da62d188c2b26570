"""What the check compares: one probe per Keras layer (its output), and for a model whose last
layer carries a probability activation (softmax, sigmoid) its value before that activation too —
the logits — so that a wrong activation and a wrong affine map are told apart. Both sides
(`parity.reference`, `parity.verify.capture`) give their outputs in this order."""

from __future__ import annotations

from dataclasses import dataclass

from parity.spec import Spec

PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")


@dataclass(frozen=True)
class Probe:
    node: str  # the Keras layer's name
    pre: bool = False  # its value before its activation

    @property
    def label(self) -> str:
        return f"{self.node} (before its activation)" if self.pre else self.node


def probes(spec: Spec) -> list[Probe]:
    found = [Probe(ns.node.name) for ns in spec.nodes]
    last = spec.nodes[-1] if spec.nodes else None
    if last is not None and last.node.name == spec.graph.output and _split(last):
        found.insert(len(found) - 1, Probe(last.node.name, pre=True))
    return found


def _split(ns) -> bool:
    """A layer whose activation is applied inside it (Dense/Conv2D(activation=…))."""
    return (hasattr(ns.entry, "linear")
            and getattr(ns.params, "activation", "linear") in PROBABILITY_ACTIVATIONS)
