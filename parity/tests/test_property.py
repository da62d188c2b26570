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

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from parity.layers import REGISTRY, In

COUNT = int(os.environ.get("PROPERTY_MODELS", "6"))
SEED = int(os.environ.get("PROPERTY_SEED", "20261201"))
MAX_LAYERS = 7
WEIGHTED = {"Conv2D", "Dense", "BatchNormalization"}
pytestmark = pytest.mark.slow  # Keras builds and saves each model, the port checks it


def draw_layers(rng: np.random.Generator) -> tuple[tuple[int, ...], list[tuple[str, dict]]]:
    """An input shape and a chain of (class, config) the port's own rules accept."""
    if rng.random() < 0.75:
        shape: tuple[int, ...] = (int(rng.integers(6, 13)), int(rng.integers(6, 13)),
                                  int(rng.integers(1, 4)))
    else:
        shape = (int(rng.integers(4, 33)),)
    inp, layers = In(shape), []
    kinds = sorted(k for k in REGISTRY if k != "InputLayer")
    # layers with weights drawn 3× as often: an elementwise layer fits anywhere, they do not
    odds = np.array([3.0 if REGISTRY[k].torch_classes and k in WEIGHTED else 1.0 for k in kinds])
    for _ in range(int(rng.integers(1, MAX_LAYERS + 1))):
        for kind in rng.choice(kinds, size=len(kinds), replace=False, p=odds / odds.sum()):
            entry = REGISTRY[str(kind)]
            cfg = entry.sample(rng, inp)
            if cfg is None:
                continue
            try:
                out = entry.infer(entry.parse(cfg, "draw"), [inp], "draw")
            except Exception:  # noqa: BLE001  (a config our rules refuse here: draw another)
                continue
            if 0 < np.prod(out.shape) <= 4096:
                layers.append((str(kind), cfg))
                inp = In(out.shape, out.flat_from)
                break
    return shape, layers


def keras_model(keras, shape, layers, functional: bool, rng: np.random.Generator):
    made = [keras.layers.deserialize({"module": "keras.layers", "class_name": k,
                                      "config": dict(c)}) for k, c in layers]
    inputs = keras.Input(shape)
    if functional:
        x = inputs
        for layer in made:
            x = layer(x)
        model = keras.Model(inputs, x)
    else:
        model = keras.Sequential([inputs, *made])
    for layer in model.layers:  # weights and statistics that are not their initial values
        for v in layer.weights:
            if v.name == "moving_variance":
                v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
            elif v.name in ("moving_mean", "beta", "bias"):
                v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
            elif v.name == "gamma":
                v.assign(rng.normal(1.0, 0.3, v.shape).astype(np.float32))
    return model


def _module_of(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("index", range(COUNT))
def test_random_model_ports_both_ways(index, tmp_path, capsys):
    import keras

    import parity
    from parity.formats import read_keras
    from parity.port import main as port_main

    rng = np.random.default_rng([SEED, index])
    shape, layers = draw_layers(rng)
    functional = bool(index % 2)
    keras.utils.set_random_seed(index)
    model = keras_model(keras, shape, layers, functional, rng)
    what = f"model {index} ({'Functional' if functional else 'Sequential'} {shape}: " + ", ".join(
        k for k, _ in layers) + ")"
    src, pt, py = tmp_path / "m.keras", tmp_path / "m.pt", tmp_path / "m.py"
    model.save(src)

    code = port_main([str(src), str(pt), "--module-py", str(py), "--samples", "32"])
    assert code == 0, f"{what}: {capsys.readouterr().err}"
    generated = _module_of(py, f"property_{index}").M()
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
