"""A Keras model as a graph, framework-free: nodes with their inputs by name, in topological
order (onnx2torch's shape: edges are names, and the driver is one loop over the nodes).

Nothing here imports torch, Keras or TensorFlow. A node's `config` is the layer's own JSON
config, still unchecked: each layer class's registry entry (`parity.layers`) parses and checks
the fields it reads. Names are data: they are never used as identifiers in generated code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Shape = tuple[int, ...]  # Keras order, batch-free: (H, W, C), (H, W) or (F,)


@dataclass(frozen=True)
class Const:
    """A number an operation node takes beside a tensor (`x + 3.0`, `x * (1/6)`)."""

    value: float


@dataclass(frozen=True)
class Node:
    """One Keras layer (or operation) called once: what it is, and what it takes."""

    name: str  # the Keras layer's name: unique in the graph
    class_name: str  # "Conv2D", "Add", …
    config: Mapping[str, object]  # the layer's own config (name, filters, …), unchecked
    inputs: tuple[str | Const, ...]  # the nodes it takes, by name, in call order
    path: str  # its group in a Keras 3 weights file ("conv2d_1"; "" for an operation)
    module: str = "keras.layers"  # "keras.layers", or "keras.src.ops.numpy" for an operation

    @property
    def tensor_inputs(self) -> tuple[str, ...]:
        return tuple(i for i in self.inputs if isinstance(i, str))


@dataclass(frozen=True)
class Graph:
    """A model with one input and one output: its nodes in topological order."""

    name: str
    input_name: str
    input_shape: Shape
    nodes: tuple[Node, ...]  # the InputLayer is not among them
    output: str
    kind: str = "Sequential"  # or "Functional"
    # Functional files store their InputLayer's (empty) group too: its path, else None
    input_path: str | None = None
    trainable: object = True  # the model's own `trainable` (unchecked; parity.spec reads it)
    _consumers: dict = field(default_factory=dict, compare=False, repr=False)

    def node(self, name: str) -> Node:
        return self._index()[name]

    def _index(self) -> dict[str, Node]:
        index = self._consumers.get("index")
        if index is None:
            index = self._consumers["index"] = {n.name: n for n in self.nodes}
        return index

    def consumers(self, name: str) -> list[str]:
        """The nodes that take `name`'s output, in order."""
        table = self._consumers.get("table")
        if table is None:
            table = {}
            for n in self.nodes:
                for i in n.tensor_inputs:
                    table.setdefault(i, []).append(n.name)
            self._consumers["table"] = table
        return table.get(name, [])

    @property
    def is_chain(self) -> bool:
        """Every node takes exactly the one before it (a Sequential, or a Functional chain)."""
        previous = self.input_name
        for n in self.nodes:
            if n.inputs != (previous,):
                return False
            previous = n.name
        return previous == self.output


def topological(nodes: list[Node], start: str, source: str, error) -> tuple[Node, ...]:
    """`nodes` ordered so that each comes after every node it takes (Kahn's algorithm, ties in
    the file's order); `error(message)` raises on an input that names no node, and on a cycle."""
    by_name = {n.name: n for n in nodes}
    waiting: dict[str, int] = {}
    takers: dict[str, list[str]] = {}
    for n in nodes:
        deps = {i for i in n.tensor_inputs}
        for d in deps:
            if d != start and d not in by_name:
                error(f"{source}: layer {n.name!r} takes {d!r}, which is no layer of the model")
            takers.setdefault(d, []).append(n.name)
        waiting[n.name] = len(deps - {start})
    position = {n.name: i for i, n in enumerate(nodes)}
    ready = sorted((name for name, k in waiting.items() if k == 0), key=position.__getitem__)
    order: list[Node] = []
    import heapq

    heap = [(position[name], name) for name in ready]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        order.append(by_name[name])
        for t in takers.get(name, []):
            waiting[t] -= 1
            if waiting[t] == 0:
                heapq.heappush(heap, (position[t], t))
    if len(order) != len(nodes):
        stuck = sorted((n for n, k in waiting.items() if k > 0), key=position.__getitem__)
        error(f"{source}: the layers {stuck[:3]!r} take each other's outputs in a cycle")
    return tuple(order)
