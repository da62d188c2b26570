"""A property test of the whole port on models nobody wrote by hand: seeded random valid Keras
models of the supported grammar — the registry's own, each entry's `sample` drawing a config for
the input it is given, so a new layer joins without new test code — as Sequentials and as
Functional models, with random weights, biases and BatchNormalization statistics, each saved by
Keras itself. Every one must:

  1. port to PyTorch through the command line (`parity.port`, which refuses to write unless
     every layer agrees with Keras on seeded inputs), with `--module-py`;
  2. load into its generated source strictly (`load_state_dict(strict=True)`), which then
     computes what `parity.load_torch_model` computes, bit for bit;
  3. port back to `.keras` with the same weights, bit for bit.

PROPERTY_MODELS models (default 6 in `make test`; `make test-property` runs 200),
PROPERTY_SEED picks the draw.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from parity.ir.graph import Const
from parity.layers import REGISTRY, In
from parity.tests.testdata import generated_module, keras_call, keras_layer

COUNT = int(os.environ.get("PROPERTY_MODELS", "6"))
SEED = int(os.environ.get("PROPERTY_SEED", "20261201"))
MAX_LAYERS = 7
WEIGHTED = {"Conv2D", "Dense", "BatchNormalization", "DepthwiseConv2D", "SeparableConv2D",
            "Conv2DTranspose", "LayerNormalization"}
MERGE_ODDS = 0.35  # a Functional model's chance, at each step, of a branch and a merge
pytestmark = pytest.mark.slow  # Keras builds and saves each model, the port checks it

# A drawn model: its input shape, and its nodes (registry kind, config, the nodes it takes by
# index, -1 the model's input), in order.
Drawn = tuple[tuple[int, ...], list[tuple[str, dict, list[int]]]]


def _takes_many(kind: str) -> bool:
    return REGISTRY[kind].inputs[1] > 1


def _node(rng, kind: str, ins: list[In]) -> tuple[dict, In] | None:
    """A config of `kind` the port's own rules accept on `ins`, and its output; or None."""
    entry = REGISTRY[kind]
    cfg = entry.sample(rng, ins[0])
    if cfg is None or (kind.startswith("keras.src.ops.") and ("value" in cfg) != (len(ins) == 1)):
        return None
    operands = ([Const(cfg["value"])] if "value" in cfg else []) + ["x"] * len(ins)
    if cfg.get("first") is False:
        operands.reverse()
    try:
        params = entry.parse_call({} if kind.startswith("keras.src.ops.") else cfg, operands,
                                  "draw")
        out = entry.infer(params, ins, "draw")
    except Exception:  # noqa: BLE001  (a config our rules refuse here: draw another)
        return None
    if not 0 < np.prod(out.shape) <= 4096:
        return None
    return cfg, In(out.shape, out.flat_from)


def draw_model(rng: np.random.Generator, functional: bool) -> Drawn:
    """An input shape and a model of the registry's grammar: a chain, and in a Functional
    model branches — a layer on the current tensor, then a merge (or an operation) of the
    two — and operations with numbers."""
    if rng.random() < 0.75:
        shape: tuple[int, ...] = (int(rng.integers(6, 13)), int(rng.integers(6, 13)),
                                  int(rng.integers(1, 4)))
    else:
        shape = (int(rng.integers(4, 33)),)
    nodes: list[tuple[str, dict, list[int]]] = []
    outs: dict[int, In] = {-1: In(shape)}
    kinds = sorted(k for k in REGISTRY if k != "InputLayer")
    operation = [k for k in kinds if k.startswith("keras.src.ops.")]  # Functional only
    # an operation is drawn both ways: on a number (here) and on two tensors (a merge)
    single = [k for k in kinds if (not _takes_many(k) or k in operation)
              and (functional or k not in operation)]
    many = [k for k in kinds if _takes_many(k) or k in operation]
    # layers with weights drawn 3× as often: an elementwise layer fits anywhere, they do not
    odds = np.array([3.0 if k in WEIGHTED else 1.0 for k in single])
    current = -1
    for _ in range(int(rng.integers(1, MAX_LAYERS + 1))):
        if functional and rng.random() < MERGE_ODDS:
            for kind in rng.permutation(many):
                side = _same_shape_layer(rng, single, outs[current])
                if side is None:
                    continue
                if str(kind).endswith("CustomScaleLayer") and any(
                    k.startswith("keras.src.ops.")
                    for k in (side[0], nodes[current][0] if current >= 0 else "")
                ):
                    # Keras itself cannot build this: CustomScaleLayer has no output shape of
                    # its own, and its traced call is handed an operation's tensor as sparse
                    continue
                drawn = _node(rng, str(kind), [outs[current], side[2]])
                if drawn is not None:
                    nodes.append((side[0], side[1], [current]))
                    outs[len(nodes) - 1] = side[2]
                    nodes.append((str(kind), drawn[0], [current, len(nodes) - 1]))
                    current = len(nodes) - 1
                    outs[current] = drawn[1]
                    break
            continue
        for kind in rng.choice(single, size=len(single), replace=False, p=odds / odds.sum()):
            drawn = _node(rng, str(kind), [outs[current]])
            if drawn is not None:
                nodes.append((str(kind), drawn[0], [current]))
                current = len(nodes) - 1
                outs[current] = drawn[1]
                break
    return shape, nodes


def _same_shape_layer(rng, single: list[str], inp: In) -> tuple[str, dict, In] | None:
    """A branch: one layer on `inp` whose output has inp's shape (a merge takes both)."""
    for kind in rng.permutation(single):
        drawn = _node(rng, str(kind), [inp])
        if drawn is not None and drawn[1].shape == inp.shape and drawn[1].flat_from is None:
            return str(kind), drawn[0], drawn[1]
    return None


def keras_model(keras, drawn: Drawn, functional: bool, rng: np.random.Generator):
    shape, nodes = drawn
    inputs = keras.Input(shape)
    if functional:
        tensors = {-1: inputs}
        for i, (kind, cfg, ins) in enumerate(nodes):
            tensors[i] = keras_call(keras, kind, cfg, [tensors[j] for j in ins])
        model = keras.Model(inputs, tensors[len(nodes) - 1])
    else:
        model = keras.Sequential([inputs, *(keras_layer(keras, k, c) for k, c, _ in nodes)])
    for layer in model.layers:  # weights and statistics that are not their initial values
        for v in layer.weights:
            if v.name == "moving_variance":
                v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
            elif v.name in ("moving_mean", "beta", "bias"):
                v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
            elif v.name == "gamma":
                v.assign(rng.normal(1.0, 0.3, v.shape).astype(np.float32))
    return model



@pytest.mark.parametrize("index", range(COUNT))
def test_random_model_ports_both_ways(index, tmp_path, capsys):
    import keras

    import parity
    from parity.formats import read_keras
    from parity.port import main as port_main

    rng = np.random.default_rng([SEED, index])
    functional = bool(index % 2)
    drawn = draw_model(rng, functional)
    shape = drawn[0]
    keras.utils.set_random_seed(index)
    model = keras_model(keras, drawn, functional, rng)
    what = f"model {index} ({'Functional' if functional else 'Sequential'} {shape}: " + ", ".join(
        f"{k.rsplit('.', 1)[-1]}{ins if len(ins) > 1 else ''}" for k, _, ins in drawn[1]) + ")"
    src, pt, py = tmp_path / "m.keras", tmp_path / "m.pt", tmp_path / "m.py"
    model.save(src)

    code = port_main([str(src), str(pt), "--module-py", str(py), "--samples", "32"])
    assert code == 0, f"{what}: {capsys.readouterr().err}"
    generated = generated_module(py, f"property_{index}").M()
    generated.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    x = torch.from_numpy(np.random.default_rng(index).random(
        (8, *((shape[2], shape[0], shape[1]) if len(shape) == 3 else shape)), dtype=np.float32))
    with torch.no_grad():
        assert torch.equal(generated.eval()(x), parity.load_torch_model(src)(x)), what

    back = tmp_path / "back.keras"
    code = port_main([str(pt), str(back), "--samples", "32"])
    assert code == 0, f"{what}: {capsys.readouterr().err}"
    original, again = read_keras(src).weights, read_keras(back).weights
    assert [a.tobytes() for a in again.values()] == [a.tobytes() for a in original.values()], what
    print(f"\n{what}: ported, loaded, back bit for bit")
    capsys.readouterr()
