"""The PyTorch module of a checked Keras graph (`parity.spec.Spec`), and its weight rows.

    graph → one converter per node (`parity.layers`, each entry's `to_torch`) → `KerasModel`
    (named children, run in the graph's order) + the rows (Keras variable → state_dict key →
    transform) → weights mapped by those rows → `load_state_dict(strict=True)`.

Names: a chain (a Sequential, or a Functional whose every layer takes the one before) whose
layers carry the names Keras makes up (`conv2d`, `conv2d_1`, `dense`) is named as the book's
PyTorch edition names layers — `conv1, relu1, pool1, …, flatten, dense1, dropout, dense2,
softmax`, a kind numbered where it occurs more than once — so the book's CNN has exactly
`BookCNN`'s keys and the rows of its table (parity/tests pin both). Any other model — a graph
with branches, or a chain whose layers were named (VGG16's `block1_conv1`) — is named after its
Keras layers, made plain identifiers (letters, digits and underscores, never a keyword or a
name `nn.Module` has); a name with any other character is not used at all, its module is named
after its kind (`dense`, `relu_2`).

A layer Keras holds frozen (`trainable: false`) has its parameters' `requires_grad` off (kept
by `load_state_dict(assign=True)`), and its rows and LayerInfo say so.

The module is made on the meta device: it holds no weights (nothing is allocated or
initialised) until `load_state_dict(state, assign=True)` hands it the ported tensors.
"""

from __future__ import annotations

import keyword
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fashion_cnn.errors import UserError, first_line
from fashion_cnn.validate import check_tensors
from parity.ir.graph import Graph
from parity.layers import Converted, Fixed
from parity.layers.transforms import Transform
from parity.spec import NodeSpec, Spec

Shape = tuple[int, ...]
# Kinds named without a number when the model has one of them, as the book's PyTorch edition
# names `flatten` and `dropout`; every other kind is numbered: conv1, relu1, pool1, bn1, …
BARE_WHEN_SINGLE = {"flatten", "dropout", "softmax", "rescale", "reshape"}
# KerasModel's own attributes, which no child may shadow.
_OWN_ATTRIBUTES = {"steps", "keras_spec", "layers", "input_name", "output_name"}


@dataclass(frozen=True)
class Row:
    """One weight: the Keras variable's structural name ("<path>/<var>") ↔ the state_dict key."""

    keras: str
    torch: str
    keras_shape: Shape
    torch_shape: Shape
    transform: Transform
    dtype: str = "float32"  # int64 for a counter (Normalization's count)
    trainable: bool = True  # its layer's Keras `trainable` (False: frozen, no optimizer's)


@dataclass(frozen=True)
class LayerInfo:
    """What one Keras layer became: its modules, output shape, and the torch output's layout."""

    name: str  # the Keras layer's name (file text: data, never an identifier)
    class_name: str
    modules: tuple[str, ...]  # module names, in forward order ([] for a linear Activation)
    inputs: tuple[str, ...]  # the layers (or the model's input) it takes, by Keras name
    shape: Shape  # Keras order, batch-free
    flat_from: tuple[int, int, int] | None  # the output is a C,H,W-ordered flatten of this map
    params: int
    transforms: tuple[str, ...]
    pre_activation: str | None = None  # the module whose output precedes its activation
    trainable: bool = True  # Keras's `trainable`: False for a frozen layer


@dataclass(frozen=True)
class Step:
    """One node of the forward pass: the modules to run on which tensors, and the tensors no
    later step reads (dropped at once: peak memory is the live frontier, not the whole graph)."""

    output: str
    modules: tuple[str, ...]
    inputs: tuple[str, ...]
    release: tuple[str, ...]


class KerasModel(nn.Module):
    """A Keras model rebuilt in PyTorch: named children, run in the graph's order. Images are
    NCHW, as in PyTorch; outputs are what Keras outputs (probabilities where the Keras model
    ends in softmax). `keras_spec` is the checked graph it was built from; `layers` says which
    modules each Keras layer became."""

    def __init__(self, children: OrderedDict, steps: list[Step], spec: Spec,
                 layers: list[LayerInfo]) -> None:
        super().__init__()
        for name, module in children.items():
            self.add_module(name, module)
        self.steps = tuple(steps)
        self.keras_spec = spec
        self.layers = layers
        self.input_name, self.output_name = spec.graph.input_name, spec.graph.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = {self.input_name: x}
        for step in self.steps:
            args = [tensors[i] for i in step.inputs]
            if step.modules:
                y = getattr(self, step.modules[0])(*args)
                for name in step.modules[1:]:
                    y = getattr(self, name)(y)
            else:  # a layer that is the identity here (a linear Activation)
                (y,) = args
            for name in step.release:
                del tensors[name]
            tensors[step.output] = y
        return tensors[self.output_name]


@dataclass
class Built:
    module: KerasModel
    rows: list[Row]  # Keras "<path>/<var>" → state_dict key, with shapes and transform
    fixed: dict[str, Fixed]  # state_dict key → a value with no Keras variable
    layers: list[LayerInfo]
    spec: Spec


# A layer name made of these (at most 60) becomes its module's name, as `identifier` makes it
# plain; any other name (quotes, control or non-ASCII characters, an essay) is data only, and
# its module is named after its kind (`dense`, `relu_2`), so that no text of it reaches code.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_./ -]{1,60}")


def identifier(name: str, taken: set[str]) -> str:
    """A Keras layer name as a module attribute we make: ASCII letters, digits and underscores,
    never starting with a digit, never a keyword or an attribute of nn.Module, not taken."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", name)[:60].strip("_") or "layer"
    if base[0].isdigit():
        base = f"layer_{base}"
    if keyword.iskeyword(base) or hasattr(nn.Module, base) or base in _OWN_ATTRIBUTES:
        base = f"{base}_"
    found, k = base, 1
    while found in taken:
        k += 1
        found = f"{base}_{k}"
    taken.add(found)
    return found


def _convert(ns: NodeSpec) -> Converted:
    try:
        return ns.entry.to_torch(ns.params, ns.ins, ns.out, ns.where)
    except UserError:
        raise
    except (ArithmeticError, ValueError, TypeError, AssertionError, RuntimeError, IndexError,
            KeyError) as err:  # a value the checks let through
        raise UserError(f"{ns.where}: cannot be built ({first_line(err)})") from None


def _auto_named(spec: Spec) -> bool:
    """Whether every layer has the name Keras makes up for it (`conv2d`, `conv2d_1`, `dense`:
    the class in snake case, numbered), as the book's Sequential and most chains have."""
    from parity.ir.keras_config import to_snake_case

    return all(re.fullmatch(re.escape(to_snake_case(ns.node.class_name.rsplit(".", 1)[-1]))
                            + r"(_\d+)?", ns.node.name) for ns in spec.nodes)


def _names(spec: Spec, converted: list[Converted]) -> list[list[str]]:
    """Each node's module names: the book's numbering for a chain whose layers have Keras's
    made-up names, else the layers' own names (VGG16's `block1_conv1`, a graph's)."""
    if spec.graph.is_chain and _auto_named(spec):
        totals: dict[str, int] = {}
        for c in converted:
            for kind, _ in c.modules:
                totals[kind] = totals.get(kind, 0) + 1
        seen: dict[str, int] = {}
        names = []
        for c in converted:
            names.append([])
            for kind, _ in c.modules:
                seen[kind] = seen.get(kind, 0) + 1
                bare = kind in BARE_WHEN_SINGLE and totals[kind] == 1
                names[-1].append(kind if bare else f"{kind}{seen[kind]}")
        return names
    taken: set[str] = set()
    names = []
    for ns, c in zip(spec.nodes, converted, strict=True):
        main = next((p.module for p in c.params), len(c.modules) - 1 if c.modules else 0)
        own = ns.node.name if _NAME_CHARS.fullmatch(ns.node.name) else None
        base = identifier(own or c.modules[main][0], taken) if c.modules else ""
        names.append([base if i == main else identifier(f"{base}_{kind}", taken)
                      for i, (kind, _) in enumerate(c.modules)])
    return names


def _steps(spec: Spec, names: list[list[str]]) -> list[Step]:
    last_use: dict[str, int] = {}
    for i, ns in enumerate(spec.nodes):
        for name in ns.node.tensor_inputs:
            last_use[name] = i
    steps = []
    for i, (ns, mods) in enumerate(zip(spec.nodes, names, strict=True)):
        inputs = ns.node.tensor_inputs
        release = tuple(n for n in dict.fromkeys(inputs)
                        if last_use.get(n) == i and n != spec.graph.output)
        steps.append(Step(ns.node.name, tuple(mods), inputs, release))
    return steps


def build(spec: Spec, source: str) -> Built:
    """Each node's converter, in the graph's order; the modules named; the rows collected."""
    with torch.device("meta"):
        converted = [_convert(ns) for ns in spec.nodes]
    names = _names(spec, converted)
    children: OrderedDict[str, nn.Module] = OrderedDict()
    rows, fixed, infos = [], {}, []
    for ns, c, mods in zip(spec.nodes, converted, names, strict=True):
        for name, (_, module) in zip(mods, c.modules, strict=True):
            if not ns.trainable:  # frozen in Keras: no gradient, no optimizer's
                module.requires_grad_(False)
            children[name] = module
        shapes = {v.name: v.shape for v in ns.out.variables}
        dtypes = {v.name: v.dtype for v in ns.out.variables}
        if [p.var for p in c.params] != list(shapes):  # the entry's two halves must agree
            raise AssertionError(f"{ns.where}: variables {list(shapes)}, params "
                                 f"{[p.var for p in c.params]}")
        for p in c.params:
            rows.append(Row(ns.key(p.var), f"{mods[p.module]}.{p.param}", shapes[p.var],
                            p.torch_shape, p.transform, dtypes[p.var], ns.trainable))
        for fix in c.fixed:
            fixed[f"{mods[fix.module]}.{fix.param}"] = fix
        params = sum(math.prod(v.shape) for v in ns.out.variables)
        transforms = tuple(dict.fromkeys(p.transform.name for p in c.params))
        pre = mods[c.pre_activation] if c.pre_activation is not None else None
        infos.append(LayerInfo(ns.node.name, ns.node.class_name, tuple(mods),
                               ns.node.tensor_inputs, ns.out.shape, ns.out.flat_from, params,
                               transforms, pre, ns.trainable))
    module = KerasModel(children, _steps(spec, names), spec, infos)
    expected = set(module.state_dict())
    got = {r.torch for r in rows} | set(fixed)
    if expected != got:  # a converter's rows must cover its module exactly
        raise AssertionError(f"rows do not cover the module: {sorted(expected ^ got)}")
    return Built(module.eval(), rows, fixed, infos, spec)


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
        layout = np.array(r.transform.to_torch(array), order="C", copy=None)  # 0-d stays 0-d
        state[r.torch] = torch.from_numpy(layout)
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
        r.keras: np.array(r.transform.to_keras(state[r.torch].detach().cpu().numpy()),
                          r.dtype, order="C", copy=None)  # (0-d stays 0-d)
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


def graph_of(module: nn.Module) -> Graph | None:
    spec = getattr(module, "keras_spec", None)
    return spec.graph if isinstance(spec, Spec) else None
