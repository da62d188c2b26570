"""A graph with every node checked: its registry entry, its parameters (the config's fields,
validated once, by the entry's `parse`), its inputs' and output's shapes and its Keras variables
(`infer`). What a reader needs to read a file's tensors, and what the builder, the references
and the writers share; framework-free (no torch, no Keras).

Where a Flatten's output reaches anything but a Dense (through elementwise layers and
BatchNormalization only), its C,H,W order cannot stay pending: that Flatten flattens in Keras's
H,W,C order instead (decided once here, in a pass linear in the graph).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fashion_cnn.errors import UserError
from parity.ir.graph import Graph, Node
from parity.layers import REGISTRY, Entry, In, Out, Var, supported
from parity.layers.registry import flag


@dataclass(frozen=True)
class NodeSpec:
    node: Node
    entry: type[Entry]
    params: Any
    ins: tuple[In, ...]
    out: Out
    where: str  # "<source>: layer 3 (conv2d_1, Conv2D)", for messages
    # Keras's `trainable`: False for a frozen layer (its weights no optimizer's, a
    # BatchNormalization in inference mode even in training), or in a model saved frozen whole
    trainable: bool = True

    def key(self, var: Var | str) -> str:
        """A variable's structural name: "<path>/<var>" (conv2d_1/kernel)."""
        return f"{self.node.path}/{var if isinstance(var, str) else var.name}"


@dataclass(frozen=True)
class Spec:
    graph: Graph
    nodes: tuple[NodeSpec, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    def variables(self) -> Iterator[tuple[str, Var, NodeSpec]]:
        """Every Keras variable, by structural name, in the order the file stores them."""
        for ns in self.nodes:
            for var in ns.out.variables:
                yield ns.key(var), var, ns

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: var.shape for key, var, _ in self.variables()}


def _dtype_name(dtype: object) -> str | None:
    """A layer's dtype: "float32", or Keras 3's {"class_name": "DTypePolicy", "config": {…}}."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict):
        cfg = dtype.get("config")
        if isinstance(cfg, dict):
            return cfg.get("name")  # type: ignore[return-value]
    return repr(dtype)


def check(graph: Graph, source: str) -> Spec:
    """Every node's entry, parameters, shapes and variables; one UserError on the first node
    the port cannot take, naming it."""
    entries = []
    whole = flag({"trainable": graph.trainable}, "trainable", True, f"{source}: the model")
    for i, node in enumerate(graph.nodes, start=1 if graph.kind == "Functional" else 0):
        where = f"{source}: layer {i} ({node.name}, {node.class_name.rsplit('.', 1)[-1]})"
        entry = REGISTRY.get(node.class_name)
        if entry is None or node.class_name == "InputLayer":
            raise UserError(
                f"{source}: layer {i} ({node.name}) is a {node.class_name}, which this port does "
                f"not support (refused without running it); supported: {supported()}"
            )
        dtype = _dtype_name(node.config.get("dtype"))
        if dtype not in (None, "float32"):
            raise UserError(f"{where}: computes in {dtype}; only float32 is supported")
        low, high = entry.inputs
        if not low <= len(node.tensor_inputs) <= high:
            raise UserError(f"{where}: takes {len(node.tensor_inputs)} inputs; it takes "
                            f"{low}" + (f" to {high}" if high != low else ""))
        trainable = flag(node.config, "trainable", True, where) and whole
        entries.append((node, entry, entry.parse_call(node.config, node.inputs, where), where,
                        trainable))
    materialise: set[str] = set()
    spec = _infer(graph, entries, materialise)
    materialise = _unabsorbed_flattens(spec)
    return _infer(graph, entries, materialise) if materialise else spec


def _infer(graph: Graph, entries, materialise: set[str]) -> Spec:
    outs: dict[str, In] = {graph.input_name: In(graph.input_shape)}
    nodes = []
    for node, entry, params, where, trainable in entries:
        ins = tuple(outs[i] for i in node.tensor_inputs)
        out = entry.infer(params, ins, where)
        if node.name in materialise:
            out = Out(out.shape, out.variables, None)
        outs[node.name] = In(out.shape, out.flat_from)
        nodes.append(NodeSpec(node, entry, params, ins, out, where, trainable))
    return Spec(graph, tuple(nodes))


def _unabsorbed_flattens(spec: Spec) -> set[str]:
    """The Flatten nodes whose pending order reaches something other than a Dense: the graph's
    output, a merge, a Reshape, … (memoised: each node is looked at once)."""
    by_name = {ns.node.name: ns for ns in spec.nodes}
    absorbed: dict[str, bool] = {}

    def is_absorbed(name: str) -> bool:  # every use of `name`'s pending output takes it
        if name in absorbed:
            return absorbed[name]
        ok = name != spec.graph.output
        for c in spec.graph.consumers(name):
            taker = by_name[c]
            if not ok:
                break
            if taker.node.class_name == "Dense":
                continue
            ok = (taker.entry.passes_flatten and len(taker.node.tensor_inputs) == 1
                  and is_absorbed(c))
        absorbed[name] = ok
        return ok

    found = set()
    for ns in reversed(spec.nodes):  # consumers first: the recursion stays shallow
        if ns.out.flat_from is not None:
            is_absorbed(ns.node.name)
    for ns in spec.nodes:
        if ns.node.class_name == "Flatten" and ns.out.flat_from is not None and len(
            ns.ins[0].shape
        ) == 3 and not absorbed.get(ns.node.name, True):
            found.add(ns.node.name)
    return found
