"""The legacy HDF5 formats, read without TensorFlow and written as Keras 3.15.1 writes them:

- a full model `.h5` (`model.save('best-cnn-model.h5')`, TF 2.x's and Keras 3's): a
  `model_config` attribute and `model_weights/<layer name>/…`, each layer's datasets listed in
  order by its `weight_names` attribute (`conv2d/kernel:0` in TF 2.x, `sequential/conv2d/kernel`
  in Keras 3); for a compiled model a `training_config` attribute (JSON: loss, metrics, … and
  the optimizer's `optimizer_config`) and an `optimizer_weights` group, its datasets listed in
  Keras's order (`optimizer.variables`) by its `weight_names` attribute
  (`adam/sequential_conv2d_kernel_momentum`), read by `read_optimizer` for a port
  `--with-optimizer` and otherwise counted, never read;
- a TF 2.x `save_weights('x.h5')` file: the same groups at the root, no config — its layers
  that hold weights are taken in the file's order, as Keras's own loader takes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from fashion_cnn.errors import UserError
from fashion_cnn.hdf5 import H5Tree, attr_list, read_attr
from parity.formats.keras_json import KERAS_FORMAT_VERSION, legacy_config
from parity.formats.keras_v3 import _read_array, json_of
from parity.spec import NodeSpec, Spec

OPTIMIZER_GROUP = "optimizer_weights"


def model_config_of(h5: h5py.File, source: str) -> bytes | str:
    if "model_config" not in h5.attrs:
        raise UserError(f"{source}: not a full Keras model .h5 (no model_config)")
    return read_attr(h5, "model_config", "/@model_config", source)  # type: ignore[return-value]


def training_config_of(h5: h5py.File, source: str) -> dict | None:
    """The `training_config` Keras writes for a compiled model (its loss, metrics, … and
    `optimizer_config`), a JSON object bounded as the model_config is; None when the file has
    none (saved uncompiled, or without its optimizer). Every field is checked by its user."""
    if "training_config" not in h5.attrs:
        return None
    raw = read_attr(h5, "training_config", "/@training_config", source)
    found = json_of(raw, "training_config", source)  # type: ignore[arg-type]
    if not isinstance(found, dict):
        raise UserError(f"{source}: training_config is not a JSON object")
    if not isinstance(found.get("optimizer_config"), dict):
        raise UserError(f"{source}: training_config has no optimizer_config object")
    return found


def read_optimizer(
    tree: H5Tree, source: str, variables: list[tuple[str, tuple[int, ...], str]]
) -> list[np.ndarray] | None:
    """The `optimizer_weights` datasets, in their `weight_names` order (Keras's), one for each
    (label, shape, dtype) of `variables`, each through the same gate as a weight; None when the
    file holds none. A label is `… <Keras name>[<i>]` (`optimizer momentum[2]`): each stored
    name must end as Keras names that variable. Unlisted, missing, repeated or misnamed
    datasets are refused."""
    group = tree.groups.get(OPTIMIZER_GROUP)
    if group is None:
        if OPTIMIZER_GROUP in tree.datasets:
            raise UserError(f"{source}: {OPTIMIZER_GROUP} is a dataset, not a group")
        return None
    names = attr_list(group, "weight_names", OPTIMIZER_GROUP, source)
    if names is None:
        raise UserError(f"{source}: {OPTIMIZER_GROUP} has no weight_names attribute")
    paths = [f"{OPTIMIZER_GROUP}/{n}" for n in names]
    found = sorted(n for n in tree.datasets if n.startswith(f"{OPTIMIZER_GROUP}/"))
    missing = [p for p in paths if p not in tree.datasets]
    extra = [n for n in found if n not in set(paths)]
    repeated = [p for i, p in enumerate(paths) if p in paths[:i]]
    problem = (f"lists {missing[0]}, which it does not hold" if missing
               else f"holds {extra[0]}, which its weight_names does not list" if extra
               else f"lists {repeated[0]} twice" if repeated
               else None if len(paths) == len(variables)
               else f"holds {len(paths)} variables; the config's optimizer over this model has "
                    f"{len(variables)}")
    if problem:
        raise UserError(f"{source}: its {OPTIMIZER_GROUP} {problem}")
    for name, (label, _, _) in zip(names, variables, strict=True):
        _check_optimizer_name(name, label, source)
    return [_read_array(tree, p, shape, label, source, dtype)
            for p, (label, shape, dtype) in zip(paths, variables, strict=True)]


def _check_optimizer_name(name: str, label: str, source: str) -> None:
    """`name` is the Keras name of the variable `label` stands for: `<optimizer>/iteration`,
    `…/learning_rate`, `…/<model variable's path>_<slot>` (Nadam's u_product: unchecked)."""
    keras_name = label.rsplit(" ", 1)[-1].split("[", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if "[" in label:
        ok = last.endswith(f"_{keras_name}")
    else:
        ok = last == keras_name or keras_name not in ("iteration", "learning_rate")
    if not ok:
        raise UserError(f"{source}: {OPTIMIZER_GROUP}/{name} stands where the config's "
                        f"optimizer has {label}")


def _stored(tree: H5Tree, prefix: str, source: str) -> list[tuple[str, list[str]]]:
    """(layer name, weight names) of each layer of the file that holds weights, in its order."""
    group = tree.groups.get(prefix.rstrip("/"))
    stored = attr_list(group, "layer_names", prefix or "/", source) if group is not None else None
    if stored is None:
        raise UserError(f"{source}: {prefix or '/'} has no layer_names attribute")
    holding = []
    for name in stored:
        layer_group = tree.groups.get(f"{prefix}{name}")
        if layer_group is None:
            raise UserError(f"{source}: layer {name} is listed but has no group in the file")
        names = [n for n in attr_list(layer_group, "weight_names", f"{prefix}{name}", source)
                 or [] if n]
        if names:
            holding.append((name, names))
    return holding


def read_weights(
    tree: H5Tree, prefix: str, spec: Spec, source: str, *, by_name: bool,
    where: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Every variable of `spec` from the legacy groups under `prefix` ("model_weights/" or ""),
    by structural name. `by_name`: each layer found under its config name (a full model);
    otherwise the file's layers that hold weights, in order (a weights-only file)."""
    weighted = [ns for ns in spec.nodes if ns.out.variables]
    if any("/" in ns.node.path for ns in weighted):
        raise UserError(f"{source}: a nested model's weights in a legacy .h5 are not supported; "
                        f"save it as .keras")
    holding = _stored(tree, prefix, source)
    if by_name:
        found = dict(holding)
        for ns in weighted:
            if ns.node.name not in found:
                raise UserError(f"{source}: missing tensors of layer {ns.node.name} (no weights "
                                f"stored)")
        names = {ns.node.name for ns in weighted}
        extra = [n for n, _ in holding if n not in names]
        if extra:
            raise UserError(f"{source}: unexpected tensors of layer {extra[0]}: not a weighted "
                            f"layer of the config")
        holding = [(ns.node.name, found[ns.node.name]) for ns in weighted]
    elif len(holding) != len(weighted):
        raise UserError(f"{source}: {len(holding)} layers hold weights; the model has "
                        f"{len(weighted)}")
    weights = {}
    for ns, (layer, names) in zip(weighted, holding, strict=True):
        _check_names(ns, layer, names, source)
        for var, wname in zip(ns.out.variables, names, strict=True):
            h5path = f"{prefix}{layer}/{wname}"
            weights[ns.key(var)] = _read_array(tree, h5path, var.shape, ns.key(var), source,
                                               var.dtype)
            if where is not None:
                where[ns.key(var)] = h5path
    return weights


def _check_names(ns: NodeSpec, layer: str, names: list[str], source: str) -> None:
    variables = [v.name for v in ns.out.variables]
    if len(names) != len(variables):
        kind = "missing" if len(names) < len(variables) else "extra"
        raise UserError(f"{source}: layer {layer} stores {len(names)} tensors ({kind}); its "
                        f"config implies {len(variables)} ({', '.join(variables)})")
    for var, wname in zip(variables, names, strict=True):
        if wname.split("/")[-1].split(":")[0] != var:
            raise UserError(f"{source}: layer {layer} stores {wname} where its config has {var}")


def _layer_names(spec: Spec) -> list[str]:
    """The layers a legacy file lists: a Functional's input too, operations never."""
    model = spec.graph
    return ([model.input_name] if model.kind == "Functional" else []) + [
        ns.node.name for ns in spec.nodes if ns.node.path]


def names_problem(spec: Spec) -> str | None:
    """Why the layer names cannot be a legacy file's groups (one each), or None."""
    names = _layer_names(spec)
    if len(set(names)) != len(names):
        return "two layers share a name; a legacy .h5 cannot hold them"
    for name in names:  # HDF5 group names: no NUL, and "/" would nest groups
        if not name or "\x00" in name or "/" in name or name in (".", ".."):
            return f"a legacy .h5 cannot hold a layer named {name!r}; write a .keras"
    return None


def write_legacy(
    tmp: Path, config: dict, spec: Spec, tensor: Callable[[str], np.ndarray]
) -> None:
    """A full model `.h5` as Keras 3's legacy saver writes it (`names_problem` checked)."""
    model = spec.graph
    names = _layer_names(spec)
    with h5py.File(tmp, "w") as h5:
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["keras_version"] = KERAS_FORMAT_VERSION
        h5.attrs["model_config"] = json.dumps(legacy_config(config)).encode("utf8")
        group = h5.create_group("model_weights")
        group.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = KERAS_FORMAT_VERSION.encode("utf8")
        if model.kind == "Functional":
            group.create_group(model.input_name).attrs["weight_names"] = np.array([])
        for ns in spec.nodes:
            if not ns.node.path:
                continue
            layer_group = group.create_group(ns.node.name)
            wnames = [f"{model.name}/{ns.node.name}/{v.name}" for v in ns.out.variables]
            layer_group.attrs["weight_names"] = np.array([n.encode("utf8") for n in wnames])
            for wname, var in zip(wnames, ns.out.variables, strict=True):
                layer_group.create_dataset(wname, data=tensor(ns.key(var)))
        group.create_group("top_level_model_weights").attrs["weight_names"] = np.array([])
