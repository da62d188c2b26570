"""Any supported Keras Sequential (or single-chain Functional) model, rebuilt in PyTorch, and back.

    config (JSON) → one converter per layer (`parity.layers.CONVERTERS`) → `KerasSequential`
    + the weight rows (Keras variable → state_dict key → transform) → weights read from the file
    by those rows → `load_state_dict(strict=True)`.

The book's CNN is one model this path handles: its module's keys are exactly `BookCNN`'s, its
rows exactly `parity.mapping.TABLE` (pinned by parity/tests/test_generic.py). Files are
read (`parity.formats.keras_read`) and written (`parity.formats.keras_write`) with h5py,
zipfile and json only; nothing in them is deserialised or run.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.validate import check_tensors
from parity.keras_spec import dtype_name, is_custom, layer_config
from parity.layers import CONVERTERS, PASS_FLATTEN, Chain, Converted, Fixed, supported
from parity.mapping import Row

Shape = tuple[int, ...]
# Kinds named without a number when the model has one of them, as the book's PyTorch edition
# names `flatten` and `dropout`; every other kind is numbered: conv1, relu1, pool1, bn1, …
BARE_WHEN_SINGLE = {"flatten", "dropout", "softmax", "rescale", "reshape"}
# Layers in one model: keras.applications' largest, NASNetLarge, has 1,041. A bound stated here
# keeps every later step's work (build, check, write) bounded, whatever a file says.
MAX_LAYERS = 4096


def to_snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case: the positional path of a layer's weights."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# --- the model's config ----------------------------------------------------------------------


@dataclass(frozen=True)
class KerasLayer:
    class_name: str
    config: dict  # the layer's own config (name, units, …)
    path: str  # positional path in a .keras weights file: conv2d, conv2d_1, …

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path))


@dataclass(frozen=True)
class ModelSpec:
    """A chain of Keras layers and its input shape (Keras order, batch-free)."""

    input_shape: Shape
    layers: tuple[KerasLayer, ...]  # without the InputLayer
    name: str = "sequential"
    functional: bool = False  # a Functional's .keras file stores its InputLayer's group too


def _shape(value: object, where: str, source: str) -> Shape:
    if (
        not isinstance(value, list | tuple)
        or len(value) < 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value[1:])
    ):
        raise UserError(f"{source}: {where} is {value!r}, not a batch shape [None, d1, …]")
    return tuple(value[1:])


def _check_chain(layers: list[Mapping], cfg: Mapping, source: str) -> None:
    """A Functional is taken only when it is one chain: one input, one output, every layer fed
    by the one before it."""

    def single(refs: object, what: str) -> str:
        if isinstance(refs, list) and len(refs) == 3 and isinstance(refs[0], str):
            return refs[0]
        if isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], list):
            return single(refs[0], what)
        raise UserError(f"{source}: the model has several {what}; only a single chain is supported")

    first, last = (
        single(cfg.get("input_layers"), "inputs"),
        single(cfg.get("output_layers"), "outputs"),
    )
    names = [layer.get("name") or layer_config(layer).get("name") for layer in layers]
    if names[0] != first or names[-1] != last:
        raise UserError(f"{source}: the layers are not one chain from {first} to {last}")
    for prev, layer, name in zip(names, layers[1:], names[1:], strict=False):
        nodes = layer.get("inbound_nodes")
        inputs: list = []
        if isinstance(nodes, list) and len(nodes) == 1:
            node = nodes[0]
            if isinstance(node, Mapping):  # Keras 3: {"args": [keras tensor], "kwargs": {}}
                args = node.get("args") or []
                inputs = [
                    a.get("config", {}).get("keras_history", [None])[0]
                    for a in (args[0] if args and isinstance(args[0], list) else args)
                    if isinstance(a, Mapping)
                ]
                kwargs = node.get("kwargs") or {}
                if not isinstance(kwargs, Mapping) or set(kwargs) - {"training"}:
                    inputs.append(
                        f"kwargs {sorted(kwargs)}"
                    )  # `training` does not change inference
            elif isinstance(node, list):  # TF 2.x: [[name, 0, 0, {}], …]
                inputs = [n[0] for n in node if isinstance(n, list) and n]
        if inputs != [prev]:
            raise UserError(
                f"{source}: layer {name} takes {inputs or 'no input'} rather than only the layer "
                f"before it ({prev}): a model with branches is not supported, only a single chain"
            )


def parse_config(config: object, source: str) -> ModelSpec:
    """A Keras model config (config.json, or a legacy .h5's model_config) → ModelSpec.

    Refuses, in one line naming the layer and its class, any class without a converter (a
    Lambda, an LSTM, a custom or nested model), and a Functional that is not a single chain.
    JSON values of unexpected types anywhere are refused in one line too.
    """
    try:
        return _parse_config(config, source)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as err:
        raise UserError(f"{source}: the model config is malformed ({type(err).__name__}: "
                        f"{first_line(err)})") from None


def _parse_config(config: object, source: str) -> ModelSpec:
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping):
        raise UserError(f"{source}: the model config is not a Keras model config")
    cls = config.get("class_name")
    cfg = config["config"]
    layers = cfg.get("layers")
    if (
        not isinstance(layers, list)
        or not layers
        or not all(isinstance(x, Mapping) for x in layers)
    ):
        raise UserError(f"{source}: the model config has no list of layers")
    if cls not in ("Sequential", "Functional", "Model"):
        raise UserError(f"{source}: the model is a {cls}; supported: Sequential, Functional")
    if len(layers) > MAX_LAYERS:
        raise UserError(f"{source}: the model has {len(layers):,} layers, more than "
                        f"{MAX_LAYERS:,} allowed")
    functional = cls != "Sequential"
    if functional:  # branches first: a merge layer is refused as a branch, not as a class
        _check_chain(layers, cfg, source)
    # Layers are numbered as Keras's `model.layers` numbers them: a Sequential's InputLayer not
    # counted, a Functional's counted.
    numbered = [x for x in layers if functional or x.get("class_name") != "InputLayer"]
    index = {id(x): f"layer {i}" for i, x in enumerate(numbered)}
    for layer in layers:
        i = index.get(id(layer), "the input layer")
        lcls = layer.get("class_name")
        custom = is_custom(layer)
        if not isinstance(lcls, str) or lcls not in CONVERTERS or custom:
            what = f"{layer.get('module')}.{lcls}" if custom else lcls
            raise UserError(
                f"{source}: {i} ({layer_config(layer).get('name', '?')}) is a {what}, which "
                f"this port does not support (refused without running it); supported: "
                f"{supported()}"
            )
        dtype = dtype_name(layer_config(layer).get("dtype"))
        if dtype not in (None, "float32"):
            raise UserError(
                f"{source}: {i} ({layer_config(layer).get('name', '?')}) computes in "
                f"{dtype}; only float32 is supported"
            )
    names_seen: set[str] = set()
    for layer in layers:
        name = layer_config(layer).get("name")
        if isinstance(name, str) and name in names_seen:
            raise UserError(f"{source}: two layers are named {name!r}; Keras names are unique")
        names_seen.add(name)  # type: ignore[arg-type]
    inputs = [x for x in layers if x.get("class_name") == "InputLayer"]
    if len(inputs) > 1 or (inputs and layers[0] is not inputs[0]):
        raise UserError(f"{source}: the model has more than one InputLayer")
    if inputs:
        icfg = layer_config(inputs[0])
        key = "batch_shape" if "batch_shape" in icfg else "batch_input_shape"
        input_shape = _shape(icfg.get(key), f"the InputLayer's {key}", source)
    elif cfg.get("build_input_shape") is not None:
        input_shape = _shape(cfg["build_input_shape"], "build_input_shape", source)
    else:
        first = layer_config(layers[0])
        input_shape = _shape(first.get("batch_input_shape"), "the first layer's input", source)
    counts: dict[str, int] = {}
    body = []
    for layer in layers:
        if layer.get("class_name") == "InputLayer" and not functional:
            continue  # a Sequential's weights file has no group for its InputLayer
        base = to_snake_case(layer["class_name"])
        k = counts.get(base, 0)
        counts[base] = k + 1
        if layer.get("class_name") != "InputLayer":
            body.append(
                KerasLayer(
                    layer["class_name"],
                    dict(layer_config(layer)),
                    base if k == 0 else f"{base}_{k}",
                )
            )
    if not body:
        raise UserError(f"{source}: the model has no layers besides its input")
    return ModelSpec(input_shape, tuple(body), str(cfg.get("name") or "sequential"), functional)


# --- the PyTorch module ------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """What one Keras layer became: its modules, output shape, and the torch output's layout."""

    keras: KerasLayer
    modules: tuple[str, ...]  # module names, in forward order ([] for a linear Activation)
    shape: Shape  # Keras order, batch-free
    flat_from: tuple[int, int, int] | None  # the output is a C,H,W-ordered flatten of this map
    params: int
    transforms: tuple[str, ...]


class KerasSequential(nn.Sequential):
    """A Keras chain rebuilt in PyTorch: named children (conv1, relu1, pool1, …, dense2,
    softmax) run in order. Images are NCHW, as in PyTorch; outputs are what Keras outputs
    (probabilities where the Keras model ends in softmax). `keras_spec` is the architecture it
    was built from; `layers` says which modules each Keras layer became."""

    def __init__(
        self, modules: OrderedDict, spec: ModelSpec | None = None, layers: list | None = None
    ) -> None:  # a slice (model[:3], which nn.Sequential builds this way) has no spec
        super().__init__(modules)
        self.keras_spec = spec
        self.layers = layers or []


@dataclass
class Built:
    module: KerasSequential
    rows: list[Row]  # Keras "<path>/<var>" → state_dict key, with shapes and transform
    fixed: dict[str, Fixed]  # state_dict key → a value with no Keras variable
    layers: list[LayerInfo] = field(default_factory=list)


def _dense_follows(layers: tuple[KerasLayer, ...]) -> list[bool]:
    """For each layer, whether a Dense follows it through PASS_FLATTEN layers only (one pass
    from the end: linear in the layer count)."""
    follows, ahead = [False] * len(layers), False
    for i in range(len(layers) - 1, -1, -1):
        follows[i] = ahead
        cls = layers[i].class_name
        ahead = True if cls == "Dense" else ahead and cls in PASS_FLATTEN
    return follows


def build(spec: ModelSpec, source: str) -> Built:
    """Run each layer's converter along the chain; name the modules; collect the rows.

    The module is made on the meta device: it holds no weights (nothing is allocated or
    initialised) until `load_state_dict(state, assign=True)` hands it the ported tensors."""
    chain = Chain(spec.input_shape)
    converted: list[tuple[KerasLayer, Converted]] = []
    follows = _dense_follows(spec.layers)
    with torch.device("meta"):
        for i, layer in enumerate(spec.layers):
            where = f"{source}: layer {i + spec.functional} ({layer.name}, {layer.class_name})"
            chain.dense_follows = follows[i]
            try:
                out = CONVERTERS[layer.class_name](layer.config, chain, where)
            except UserError:
                raise
            except (ArithmeticError, ValueError, TypeError, AssertionError, RuntimeError,
                    IndexError, KeyError) as err:  # a value the checks above let through
                raise UserError(f"{where}: cannot be built ({first_line(err)})") from None
            converted.append((layer, out))
            chain = Chain(out.shape, out.flat_from)
    totals: dict[str, int] = {}
    for _, out in converted:
        for kind, _m in out.modules:
            totals[kind] = totals.get(kind, 0) + 1
    seen: dict[str, int] = {}
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    rows, fixed, infos = [], {}, []
    for layer, out in converted:
        names = []
        for kind, module in out.modules:
            seen[kind] = seen.get(kind, 0) + 1
            bare = kind in BARE_WHEN_SINGLE and totals[kind] == 1
            names.append(kind if bare else f"{kind}{seen[kind]}")
            modules[names[-1]] = module
        for var in out.vars:
            rows.append(
                Row(
                    f"{layer.path}/{var.keras}",
                    f"{names[var.module]}.{var.param}",
                    var.keras_shape,
                    var.torch_shape,
                    var.transform,
                )
            )
        for fix in out.fixed:
            fixed[f"{names[fix.module]}.{fix.param}"] = fix
        params = sum(int(np.prod(v.keras_shape)) for v in out.vars)
        transforms = tuple(dict.fromkeys(v.transform.name for v in out.vars))
        infos.append(LayerInfo(layer, tuple(names), out.shape, out.flat_from, params, transforms))
    module = KerasSequential(modules, spec, infos)
    expected = set(module.state_dict())
    got = {r.torch for r in rows} | set(fixed)
    if expected != got:  # a converter's rows must cover its module exactly
        raise AssertionError(f"rows do not cover the module: {sorted(expected ^ got)}")
    return Built(module.eval(), rows, fixed, infos)


def keras_to_torch(
    built: Built, weights: Mapping[str, np.ndarray], source: str, *, consume: bool = False
) -> dict:
    """Keras arrays by structural name → a full state_dict (torch tensors), every name and shape
    checked first. With `consume` (a dict), each array is dropped from `weights` as soon as its
    tensor is made: the two layouts are never both held whole."""
    check_tensors(
        weights,
        {r.keras: r.keras_shape for r in built.rows},
        source,
        shape_of=np.shape,
        what="the weights do not match the model's config: ",
    )
    state = {}
    for r in built.rows:
        array = weights.pop(r.keras) if consume else weights[r.keras]  # type: ignore[attr-defined]
        state[r.torch] = torch.from_numpy(np.ascontiguousarray(r.transform.to_torch(array)))
        del array
    for key, fix in built.fixed.items():
        state[key] = torch.from_numpy(fix.value.copy())
    return state


def torch_to_keras(built: Built, state: Mapping[str, torch.Tensor], source: str) -> dict:
    """A state_dict → Keras arrays by structural name; a fixed value that Keras cannot hold
    (a BatchNorm bias that is not zero where center=False) is refused."""
    expected = {r.torch: r.torch_shape for r in built.rows}
    expected.update({k: tuple(f.value.shape) for k, f in built.fixed.items()})
    check_tensors(
        state,
        expected,
        source,
        shape_of=lambda t: tuple(t.shape),
        what="the state_dict does not match the model: ",
    )
    for key, fix in built.fixed.items():
        if fix.required and not np.array_equal(state[key].detach().cpu().numpy(), fix.value):
            raise UserError(
                f"{source}: {key} is not {fix.value.flat[0]:g} everywhere; the Keras "
                f"layer (center/scale off) cannot hold it"
            )
    return {
        r.keras: np.ascontiguousarray(
            r.transform.to_keras(state[r.torch].detach().cpu().numpy().astype(np.float32))
        )
        for r in built.rows
    }


class ModuleWeights(Mapping):
    """A built module's weights in Keras layout, by structural name, computed on access from the
    module's own tensors (views where the transform is a transpose): the Keras-layout copy of a
    large model is never held whole beside the PyTorch one."""

    def __init__(self, built: Built) -> None:
        self.rows = {r.keras: r for r in built.rows}
        self.state = built.module.state_dict()

    def __getitem__(self, name: str) -> np.ndarray:
        row = self.rows[name]
        return row.transform.to_keras(self.state[row.torch].detach().numpy())

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def to_keras_layout(info: LayerInfo, array: np.ndarray) -> np.ndarray:
    """A module's output (numpy, PyTorch layout) in Keras's layout, for per-layer comparison."""
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    if info.flat_from is not None and array.ndim == 2:
        h, w, c = info.flat_from
        n = array.shape[0]
        return np.ascontiguousarray(array.reshape(n, c, h, w).transpose(0, 2, 3, 1).reshape(n, -1))
    return array
