"""A Keras model config (a `.keras` archive's config.json, a legacy `.h5`'s model_config) → the
framework-free `Graph`, as `keras/src/models/functional.py` (`functional_from_config`,
`process_node`) reads it — without ever deserialising anything.

Read: Sequential and Functional models of Keras 3 and TF 2.x, nested Sequential and Functional
models (flattened into the graph, their layers' names kept), and each layer's call:
- Keras 3 writes `{"args": [tensor, …], "kwargs": {…}}`, a tensor being
  `{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node, index]}}`;
  a merge layer's tensors come as one list, an operation's numbers (`x + 3.0`) beside them;
- TF 2.x writes `[[layer, node, index, kwargs], …]`.
A nested model's own `trainable` is not kept: Keras 3.15.1 does not apply it on load (its
`base.trainable = False` reaches the file as every inner layer's `trainable: false`, which each
node keeps in its config); the outer model's is (`Graph.trainable`: false, nothing trains).
A `mask` of null and a `training` flag are call options, not inputs (Keras 3 records
`{"mask": null}` for every layer whose call takes a mask: BatchNormalization, Softmax, …).

Refused in one line: several inputs or outputs, a layer called more than once (shared), a
layer's second output, a tensor passed by keyword, a cycle, an input that names no layer, more
than MAX_LAYERS layers, two layers of one name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fashion_cnn.errors import UserError
from parity.ir.graph import Const, Graph, Node, Shape, topological

# Layers in one model: keras.applications' largest, NASNetLarge, has 1,041 (EfficientNetV2L
# 1,031). A bound stated here keeps every later step's work (build, check, write) bounded,
# whatever a file says.
MAX_LAYERS = 4096
MODELS = ("Sequential", "Functional", "Model")
# Keras 3 writes operations on KerasTensors (`x + 3.0`) as layers of these modules.
OPERATIONS = ("keras.src.ops.",)
# Call keywords that are options, not inputs: a null mask, a training flag.
OPTIONS = {"mask", "training"}


def to_snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case: the positional path of a layer's weights."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def layer_config(layer: Mapping) -> Mapping:
    """A layer's `config`, or {} where a malformed file has something else there."""
    cfg = layer.get("config")
    return cfg if isinstance(cfg, Mapping) else {}


def kind_of(layer: Mapping) -> str:
    """What the registry knows a layer as: its class for Keras's own layers
    ("Conv2D"), the module and class for anything else ("keras.src.ops.numpy.Add",
    "keras.src.applications.convnext.LayerScale"): a class name alone could be anyone's."""
    cls = layer.get("class_name")
    module = layer.get("module")
    if not isinstance(cls, str):
        return repr(cls)
    if module in (None, "keras.layers", "keras") or not isinstance(module, str):
        return cls
    return f"{module}.{cls}"


def _fail(message: str) -> None:
    raise UserError(message)


def _batch_shape(value: object, where: str, source: str) -> Shape:
    if (
        not isinstance(value, list | tuple)
        or len(value) < 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value[1:])
    ):
        raise UserError(f"{source}: {where} is {value!r}, not a batch shape [None, d1, …]")
    return tuple(value[1:])


def _input_shape(layer: Mapping, source: str) -> Shape:
    cfg = layer_config(layer)
    key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
    return _batch_shape(cfg.get(key), f"the InputLayer's {key}", source)


@dataclass
class _Builder:
    """Collects nodes from the model and its nested models; names must stay unique."""

    source: str
    nodes: list[Node]
    names: set[str]

    def add(self, node: Node) -> None:
        if node.name in self.names:
            raise UserError(f"{self.source}: two layers are named {node.name!r}; Keras names "
                            f"are unique")
        if len(self.nodes) >= MAX_LAYERS:
            raise UserError(f"{self.source}: the model has more than {MAX_LAYERS:,} layers; "
                            f"refused")
        self.names.add(node.name)
        self.nodes.append(node)


def parse_model(config: object, source: str) -> Graph:
    """A Keras model config → Graph. Raises UserError naming the file and the problem."""
    try:
        return _parse_model(config, source)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as err:
        raise UserError(f"{source}: the model config is malformed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None


def _parse_model(config: object, source: str) -> Graph:
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping):
        raise UserError(f"{source}: the model config is not a Keras model config")
    cls = config.get("class_name")
    if cls not in MODELS:
        raise UserError(f"{source}: the model is a {cls}; supported: Sequential, Functional")
    cfg = config["config"]
    layers = _layer_list(cfg, source)
    builder = _Builder(source, [], set())
    name = str(cfg.get("name") or ("sequential" if cls == "Sequential" else "functional"))
    if cls == "Sequential":
        input_name, shape = _sequential_input(cfg, layers, source)
        builder.names.add(input_name)
        output = _sequential(layers, input_name, "", builder)
        input_path = None
    else:
        input_name, shape, output, input_path = _functional(cfg, layers, "", None, builder)
    nodes = topological(builder.nodes, input_name, source, _fail)
    if not nodes:
        raise UserError(f"{source}: the model has no layers besides its input")
    return Graph(name, input_name, shape, nodes, output,
                 "Sequential" if cls == "Sequential" else "Functional", input_path,
                 cfg.get("trainable", True))


def _layer_list(cfg: Mapping, source: str) -> list[Mapping]:
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, Mapping)
                                                              for x in layers):
        raise UserError(f"{source}: the model config has no list of layers")
    if len(layers) > MAX_LAYERS:
        raise UserError(f"{source}: the model has {len(layers):,} layers, more than "
                        f"{MAX_LAYERS:,} allowed")
    return layers


def _sequential_input(cfg: Mapping, layers: list[Mapping], source: str) -> tuple[str, Shape]:
    """A Sequential's input: its InputLayer, else its build_input_shape, else the first
    layer's batch_input_shape (TF 2.x)."""
    first = layers[0]
    if first.get("class_name") == "InputLayer":
        return str(layer_config(first).get("name") or "input_layer"), _input_shape(first, source)
    if cfg.get("build_input_shape") is not None:
        return "input_layer", _batch_shape(cfg["build_input_shape"], "build_input_shape", source)
    shape = layer_config(first).get("batch_input_shape")
    return "input_layer", _batch_shape(shape, "the first layer's input", source)


def _paths(layers: list[Mapping], prefix: str, count_input: bool) -> list[str]:
    """Each layer's group in a Keras 3 weights file: its class in snake case, numbered per
    class in the container's order (keras.src.saving: `layers/conv2d_1`), inside a nested
    model `sequential/layers/conv2d`. A Sequential's InputLayer has none; operations none."""
    counts: dict[str, int] = {}
    paths = []
    for layer in layers:
        cls = layer.get("class_name")
        if (cls == "InputLayer" and not count_input) or _is_operation(layer):
            paths.append("")
            continue
        base = to_snake_case(cls if isinstance(cls, str) else "layer")
        k = counts.get(base, 0)
        counts[base] = k + 1
        paths.append(f"{prefix}{base if k == 0 else f'{base}_{k}'}")
    return paths


def _is_operation(layer: Mapping) -> bool:
    module = layer.get("module")
    return isinstance(module, str) and module.startswith(OPERATIONS)


def _sequential(layers: list[Mapping], previous: str, prefix: str, builder: _Builder) -> str:
    """A Sequential's layers as a chain after `previous`; returns the last one's name."""
    source = builder.source
    if any(x.get("class_name") == "InputLayer" for x in layers[1:]):
        raise UserError(f"{source}: the model has more than one InputLayer")
    body = [x for x in layers if x.get("class_name") != "InputLayer"]
    if not body:
        return previous
    for layer, path in zip(body, _paths(body, prefix, count_input=False), strict=True):
        name = str(layer_config(layer).get("name") or path)
        if layer.get("class_name") in MODELS:
            previous = _nested(layer, name, previous, path, builder)
            continue
        builder.add(Node(name, kind_of(layer), dict(layer_config(layer)), (previous,), path,
                         str(layer.get("module") or "keras.layers")))
        previous = name
    return previous


def _single_ref(refs: object, what: str, source: str) -> str:
    """The one [layer, node, index] of input_layers / output_layers (a bare triple or a list
    of one)."""
    if isinstance(refs, list) and len(refs) == 3 and isinstance(refs[0], str):
        return refs[0]
    if isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], list):
        return _single_ref(refs[0], what, source)
    raise UserError(f"{source}: the model has several {what}; only one is supported")


def _functional(
    cfg: Mapping, layers: list[Mapping], prefix: str, outer_input: str | None, builder: _Builder
) -> tuple[str, Shape, str, str | None]:
    """A Functional's layers into the builder; returns (input name, input shape, output name,
    the InputLayer's weights path). Nested (`outer_input` given), its input is the outer
    tensor it is called on."""
    source = builder.source
    input_ref = _single_ref(cfg.get("input_layers"), "inputs", source)
    output_ref = _single_ref(cfg.get("output_layers"), "outputs", source)
    inputs = [x for x in layers if x.get("class_name") == "InputLayer"]
    if len(inputs) != 1:
        raise UserError(f"{source}: the model has {len(inputs)} InputLayers; only one is "
                        f"supported")
    paths = _paths(layers, prefix, count_input=True)
    alias: dict[str, str] = {}  # a nested model's name → the node that gives its output
    shape: Shape = ()
    input_path = None
    for layer, path in zip(layers, paths, strict=True):
        name = _layer_name(layer)
        if layer.get("class_name") == "InputLayer":
            if name != input_ref:
                raise UserError(f"{source}: the model's input {input_ref!r} is not its "
                                f"InputLayer {name!r}")
            shape = _input_shape(layer, source)
            input_path = path
            if outer_input is None:
                builder.names.add(name)
            else:
                alias[name] = outer_input
            continue
        args = [alias.get(a, a) if isinstance(a, str) else a
                for a in _call_args(layer, name, source)]
        if layer.get("class_name") in MODELS:
            if len(args) != 1 or not isinstance(args[0], str):
                raise UserError(f"{source}: the nested model {name!r} is called on "
                                f"{len(args)} inputs; only one is supported")
            alias[name] = _nested(layer, name, args[0], path, builder)
            continue
        module = str(layer.get("module") or "keras.layers")
        builder.add(Node(name, kind_of(layer), dict(layer_config(layer)), tuple(args), path,
                         module))
    output = alias.get(output_ref, output_ref)
    return (outer_input or input_ref), shape, output, input_path


def _nested(layer: Mapping, name: str, previous: str, path: str, builder: _Builder) -> str:
    """A nested Sequential or Functional, flattened into the builder after `previous`; returns
    the node that gives its output. Its layers' weights live under `<path>/layers/…`."""
    cfg = layer_config(layer)
    inner = _layer_list(cfg, builder.source)
    prefix = f"{path}/layers/"
    if layer.get("class_name") == "Sequential":
        return _sequential(inner, previous, prefix, builder)
    _, _, output, _ = _functional(cfg, inner, prefix, previous, builder)
    return output


def _layer_name(layer: Mapping) -> str:
    name = layer.get("name", layer_config(layer).get("name"))
    if not isinstance(name, str) or not name:
        raise UserError("a layer has no name")
    return name


def _call_args(layer: Mapping, name: str, source: str) -> list[str | Const]:
    """The inputs of a Functional layer's one call, by name (numbers as Const)."""
    nodes = layer.get("inbound_nodes")
    if not isinstance(nodes, list) or not nodes:
        raise UserError(f"{source}: layer {name!r} is never called")
    if len(nodes) > 1:
        raise UserError(f"{source}: layer {name!r} is called {len(nodes)} times (a shared "
                        f"layer); only layers called once are supported")
    node = nodes[0]
    if isinstance(node, Mapping):  # Keras 3
        kwargs = node.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise UserError(f"{source}: layer {name!r} has call keywords {kwargs!r}")
        _check_options(kwargs, name, source)
        args = node.get("args") or []
        if not isinstance(args, list):
            raise UserError(f"{source}: layer {name!r} has call arguments {args!r}")
        flat: list = []
        for a in args:  # a merge layer's tensors come as one list
            flat.extend(a if isinstance(a, list) else [a])
        return [_arg(a, name, source) for a in flat]
    if isinstance(node, list):  # TF 2.x: [[layer, node, index, kwargs], …]
        found: list[str | Const] = []
        for ref in node:
            if not isinstance(ref, list) or len(ref) < 3 or not isinstance(ref[0], str):
                raise UserError(f"{source}: layer {name!r} has an inbound node {ref!r}")
            _check_index(ref[1], ref[2], ref[0], name, source)
            if len(ref) > 3 and isinstance(ref[3], Mapping):
                _check_options(ref[3], name, source)
            found.append(ref[0])
        return found
    raise UserError(f"{source}: layer {name!r} has an inbound node of type "
                    f"{type(node).__name__}")


def _arg(value: object, name: str, source: str) -> str | Const:
    if isinstance(value, Mapping) and value.get("class_name") == "__keras_tensor__":
        history = layer_config(value).get("keras_history")
        if not isinstance(history, list) or len(history) != 3 or not isinstance(history[0], str):
            raise UserError(f"{source}: layer {name!r} takes a tensor of unknown origin")
        _check_index(history[1], history[2], history[0], name, source)
        return history[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Const(float(value))
    shown = value.get("class_name") if isinstance(value, Mapping) else type(value).__name__
    raise UserError(f"{source}: layer {name!r} takes an argument of kind {shown!r}; only "
                    f"tensors and numbers are supported")


def _check_index(node_index: object, tensor_index: object, of: str, name: str, source: str):
    if tensor_index != 0:
        raise UserError(f"{source}: layer {name!r} takes output {tensor_index!r} of {of!r}; "
                        f"only layers with one output are supported")
    if node_index != 0:
        raise UserError(f"{source}: layer {name!r} takes call {node_index!r} of {of!r} (a "
                        f"shared layer); only layers called once are supported")


def _check_options(kwargs: Mapping, name: str, source: str) -> None:
    """Call keywords: a null mask and a training flag change nothing at inference; anything
    else (a tensor by keyword, a mask) is refused."""
    for key, value in kwargs.items():
        if key == "mask" and value is None:
            continue
        if key == "training" and (value is None or isinstance(value, bool)):
            continue
        raise UserError(f"{source}: layer {name!r} is called with {key}=…; only a null mask "
                        f"and a training flag are supported")
