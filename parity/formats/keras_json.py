"""The config a written Keras file holds (config.json of a `.keras`, a legacy `.h5`'s
model_config), made from a checked spec as Keras 3.15.1 writes it — each layer rebuilt by us
from the fields its registry entry read, so nothing else a source file held (a custom
initializer, a regularizer, a name's stray keys) travels into a file Keras will deserialise.

A chain is written as the Sequential it is; a graph as a Functional, nested models flattened,
each layer's `trainable` its own (a frozen base's layers stay frozen).
The written config is parsed back by our own reader (`written`), so the paths its weights take
in the file are the ones every reader computes.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.ir.graph import Const
from parity.ir.keras_config import parse_model
from parity.spec import NodeSpec, Spec, check

# The Keras version whose file layout the writers mirror (keras/src/saving/saving_lib.py and
# keras/src/legacy/saving/legacy_h5_format.py of that release).
KERAS_FORMAT_VERSION = "3.15.1"


def dtype_policy() -> dict:
    """A layer's `dtype` as Keras 3 writes it in a config: float32."""
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
            "registered_name": None}


def _input_layer(name: str, shape: tuple[int, ...]) -> dict:
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": [None, *shape], "dtype": "float32", "sparse": False,
                   "ragged": False, "name": name, "optional": False},
        "registered_name": None,
    }


def _layer(ns: NodeSpec) -> dict:
    node = ns.node
    kept = {k: node.config[k] for k in ns.entry.fields if k in node.config}
    cls = node.class_name.rsplit(".", 1)[-1]
    operation = not node.path  # an operation on tensors (`x + 3.0`): no variables, no dtype
    cfg = {"name": node.name} if operation else {
        "name": node.name, "trainable": ns.trainable, "dtype": dtype_policy(), **kept}
    entry = {
        "module": node.module,
        "class_name": cls,
        "config": cfg,
        "registered_name": None if node.module == "keras.layers" else cls,
    }
    if ns.out.variables or cls == "Flatten":  # Keras records a build for these
        shapes = [[None, *i.shape] for i in ns.ins]
        entry["build_config"] = {"input_shape": shapes[0] if len(shapes) == 1 else shapes}
    return entry


def _tensor(name: str, shape: tuple[int, ...]) -> dict:
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [None, *shape], "dtype": "float32",
                       "keras_history": [name, 0, 0]}}


def model_config(spec: Spec) -> dict:
    """The config.json Keras 3.15.1 writes for this model: a Sequential for a chain, else a
    Functional."""
    graph = spec.graph
    if graph.is_chain:
        layers = [_layer(ns) for ns in spec.nodes]
        batch = [None, *graph.input_shape]
        return {
            "module": "keras",
            "class_name": "Sequential",
            "config": {"name": graph.name, "trainable": True, "dtype": dtype_policy(),
                       "layers": [_input_layer("input_layer", graph.input_shape), *layers],
                       "build_input_shape": batch},
            "registered_name": None,
            "build_config": {"input_shape": batch},
            "compile_config": {},
        }
    shapes = {graph.input_name: graph.input_shape}
    shapes.update({ns.node.name: ns.out.shape for ns in spec.nodes})
    layers = [{**_input_layer(graph.input_name, graph.input_shape), "name": graph.input_name,
               "inbound_nodes": []}]
    for ns in spec.nodes:
        args = [_tensor(i, shapes[i]) if isinstance(i, str) else i.value  # type: ignore[union-attr]
                for i in ns.node.inputs]
        merge = len(ns.node.tensor_inputs) > 1 and not any(isinstance(i, Const)
                                                           for i in ns.node.inputs)
        if merge and ns.node.path:  # a merge layer takes its tensors as one list
            args = [args]
        layers.append({**_layer(ns), "name": ns.node.name,
                       "inbound_nodes": [{"args": args, "kwargs": {}}]})
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {"name": graph.name, "trainable": True, "layers": layers,
                   "input_layers": [[graph.input_name, 0, 0]],
                   "output_layers": [[graph.output, 0, 0]]},
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
        "compile_config": {},
    }


def legacy_config(config: dict) -> dict:
    """The model_config Keras 3's legacy `.h5` writes: no module, registered_name or
    build_config on layers (`use_legacy_config=True` in legacy_h5_format.py)."""
    layers = [{k: v for k, v in layer.items() if k not in ("module", "registered_name",
                                                           "build_config")}
              for layer in config["config"]["layers"]]
    return {"class_name": config["class_name"], "config": {**config["config"], "layers": layers}}


@dataclass(frozen=True)
class Written:
    config: dict  # config.json
    spec: Spec  # the written model as our reader reads it back
    keys: dict[str, str]  # a variable's structural name in the source → in the written file


def written(spec: Spec, source: str) -> Written:
    """The config a file of `spec` holds, the spec our reader reads from it, and where each
    variable lands (a Functional chain written as a Sequential renumbers its paths)."""
    config = model_config(spec)
    back = check(parse_model(config, source), source)
    keys = {}
    for old, new in zip(spec.nodes, back.nodes, strict=True):
        for var in old.out.variables:
            keys[old.key(var)] = new.key(var)
    return Written(config, back, keys)
