"""The numpy reference of the Keras layers (each registry entry's `numpy`, run over the graph by
`parity.reference.numpy_keras`) against Keras itself: every layer's output of every zoo model,
on the zoo's real test images; each activation name and each
layer variant the port takes (ReLU/LeakyReLU/Softmax/Rescaling/Reshape/ZeroPadding2D, 'same'
pooling and convolutions with TF's asymmetric padding, …) as a tiny real Keras model on real
Fashion-MNIST test images. Agreement is parity's: `parity.verify.compare.compare(...).passed`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity.layers.activations import NUMPY as ACTIVATIONS
from parity.reference.numpy_keras import layer_outputs
from parity.tests import test_zoo
from parity.verify.compare import compare
from parity.verify.probes import probes

zoo = test_zoo.zoo  # the zoo's module-scoped fixture: the same seven briefly trained models
BATCH = 250  # images per call, as the port passes them
IMAGES = 16  # real test images per tiny model
IMAGE = (28, 28, 1)


def _numpy_outputs(spec, weights, images: np.ndarray) -> list[np.ndarray]:
    batches = range(0, len(images), BATCH)
    parts = [layer_outputs(spec, weights, images[i : i + BATCH]) for i in batches]
    return [np.concatenate(layer) for layer in zip(*parts, strict=True)]


def _failures(spec, keras_outs, numpy_outs) -> tuple[list[str], float]:
    failures, worst = [], 0.0
    for probe, k, n in zip(probes(spec), keras_outs, numpy_outs, strict=True):
        assert n.dtype == np.float32, f"{probe.label}: {n.dtype}"
        d = compare(probe.label, k, n)
        worst = max(worst, d.max_abs)
        if not d.passed:
            failures.append(f"{d.name} max |diff| {d.max_abs:.3e}")
    return failures, worst


@pytest.mark.slow  # the zoo's seven short Keras training runs
@pytest.mark.parametrize("suffix", test_zoo.FORMATS)
@pytest.mark.parametrize("name", test_zoo.ZOO)
def test_zoo_layer_outputs_match_keras(zoo, name, suffix):
    from parity.pipeline import read_source
    from parity.reference.keras_live import KerasReference

    z = zoo[name]
    src = read_source(z.files[suffix])
    keras_outs = KerasReference(src.spec, src.weights).outputs(z.images)
    numpy_outs = _numpy_outputs(src.spec, src.weights, z.images)
    failures, worst = _failures(src.spec, keras_outs, numpy_outs)
    assert not failures, f"{name}{suffix}: " + "; ".join(failures)
    print(f"{name}{suffix}: worst layer max |diff| {worst:.3e}")


# --- tiny real Keras models on real test images ---------------------------------------------


@pytest.fixture(scope="module")
def images(data_dir) -> np.ndarray:
    from parity.pipeline import load_test_images

    return load_test_images(str(data_dir))[0][:IMAGES]


def _check(shape, layers, images: np.ndarray, what: str) -> float:
    """Build keras.Sequential([Input(shape), *layers]) with non-trivial weights (random biases
    and BatchNormalization statistics), run both on the images; return the worst max |diff|."""
    import keras

    from parity.formats import parse

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape), *layers])
    spec = parse(json.loads(model.to_json()), what)
    rng = np.random.default_rng(0)
    weights = {}
    for layer, ns in zip(model.layers, spec.nodes, strict=True):
        for v in layer.weights:
            if v.name == "moving_variance":
                v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
            elif v.name in ("moving_mean", "beta", "bias"):
                v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
            elif v.name == "gamma":
                v.assign(rng.normal(1.0, 0.3, v.shape).astype(np.float32))
            weights[ns.key(v.name)] = np.asarray(v)
    x = np.ascontiguousarray(images.reshape(len(images), *shape))
    cut = keras.Model(model.inputs, [layer.output for layer in model.layers])
    out = cut([x])
    keras_outs = [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]
    # every layer's output (the check's extra value before a last softmax is Keras's logits,
    # which this cut does not give)
    numpy_outs = [o for p, o in zip(probes(spec), layer_outputs(spec, weights, x), strict=True)
                  if not p.pre]
    failures, worst = _failures(_no_pre(spec), keras_outs, numpy_outs)
    assert not failures, f"{what}: " + "; ".join(failures)
    print(f"{what}: worst layer max |diff| {worst:.3e}")
    return worst


def _no_pre(spec):
    """`spec` as `_failures` sees it when the outputs leave out the value before a softmax."""
    from dataclasses import replace

    last = spec.nodes[-1]
    if any(p.pre for p in probes(spec)):
        plain = replace(last, params=last.entry.linear(last.params))
        return replace(spec, nodes=(*spec.nodes[:-1], plain))
    return spec


def test_every_activation_name_and_layer_has_both_forms():
    """Each activation name has its numpy form and its PyTorch module; each registry entry its
    numpy reference and its PyTorch converter."""
    from parity.layers import REGISTRY
    from parity.layers.activations import NAMES, torch_activation

    assert set(ACTIVATIONS) == set(NAMES)
    for name in NAMES:
        if name != "linear":
            torch_activation(name, -1)
    for kind, entry in REGISTRY.items():
        assert callable(getattr(entry, "numpy", None)), kind
        assert callable(getattr(entry, "to_torch", None)), kind


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_keras(name, images):
    """On a map (softmax over the channels) and on a vector, inputs spread over [-3, 3]."""
    import keras

    L = keras.layers
    _check(IMAGE, [L.Rescaling(6.0, offset=-3.0), L.Conv2D(4, 3, strides=3, activation=name)],
           images, f"Conv2D({name})")
    _check(IMAGE, [L.Rescaling(6.0, offset=-3.0), L.Flatten(), L.Dense(16, activation=name)],
           images, f"Dense({name})")
    _check(IMAGE, [L.Rescaling(6.0, offset=-3.0), L.Conv2D(4, 3, strides=3), L.Activation(name)],
           images, f"Activation({name})")


def _spread(L):
    """Inputs spread over [-3, 3]: the -inf padding of 'same' max pooling matters then."""
    return L.Rescaling(6.0, offset=-3.0)


# name → (keras.layers → (input shape, layers)): each a case where Keras's semantics are easy to
# get wrong.
VARIANTS = {
    "relu_max_value": lambda L: (IMAGE, [_spread(L), L.Conv2D(4, 3), L.ReLU(max_value=1.5)]),
    "relu_max_value_6": lambda L: (IMAGE, [_spread(L), L.Conv2D(4, 3), L.ReLU(max_value=6.0)]),
    "relu_negative_slope": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, 3), L.ReLU(negative_slope=0.1)]),
    "leaky_relu_default": lambda L: (IMAGE, [_spread(L), L.Conv2D(4, 3), L.LeakyReLU()]),
    "leaky_relu_slope": lambda L: (
        IMAGE, [_spread(L), L.Flatten(), L.Dense(8), L.LeakyReLU(0.05)]),
    "softmax_map": lambda L: (IMAGE, [_spread(L), L.Conv2D(4, 3), L.Softmax()]),
    "softmax_axis_3": lambda L: (IMAGE, [_spread(L), L.Conv2D(4, 3), L.Softmax(axis=3)]),
    "softmax_vector": lambda L: (IMAGE, [L.Flatten(), L.Dense(10), L.Softmax()]),
    "rescaling": lambda L: (
        IMAGE, [L.Rescaling(1 / 255.0), L.Rescaling(2.0, offset=-1.0), L.Conv2D(4, 3)]),
    "reshape_flat_to_map": lambda L: ((784,), [L.Reshape((28, 28, 1)), L.Conv2D(4, 3)]),
    "reshape_map_to_rows": lambda L: (
        IMAGE, [L.Conv2D(4, 3), L.Reshape((13, -1)), L.Flatten(), L.Dense(10)]),
    "reshape_map_to_map": lambda L: (
        IMAGE, [L.Conv2D(4, 3), L.Reshape((13, 52, 4)), L.Conv2D(4, 3)]),
    "zero_padding_int": lambda L: (IMAGE, [_spread(L), L.ZeroPadding2D(2), L.Conv2D(4, 3)]),
    "zero_padding_pair": lambda L: (
        IMAGE, [_spread(L), L.ZeroPadding2D((1, 3)), L.Conv2D(4, 3)]),
    "zero_padding_pairs": lambda L: (
        IMAGE, [_spread(L), L.ZeroPadding2D(((1, 2), (3, 0))), L.Conv2D(4, 3, strides=2)]),
    "max_pool_same_asymmetric": lambda L: (
        IMAGE, [_spread(L), L.MaxPooling2D(3, 2, padding="same")]),
    "max_pool_same_rect": lambda L: (
        IMAGE, [_spread(L), L.MaxPooling2D((2, 3), (3, 2), padding="same")]),
    "max_pool_valid_strides": lambda L: (IMAGE, [_spread(L), L.MaxPooling2D(3, (2, 1))]),
    "avg_pool_same_asymmetric": lambda L: (
        IMAGE, [_spread(L), L.AveragePooling2D(3, 2, padding="same")]),
    "avg_pool_same_even": lambda L: (
        IMAGE, [_spread(L), L.AveragePooling2D((2, 4), 1, padding="same")]),
    "avg_pool_same_symmetric": lambda L: (
        IMAGE, [_spread(L), L.AveragePooling2D(3, 1, padding="same")]),
    "avg_pool_valid_strides_none": lambda L: (IMAGE, [_spread(L), L.AveragePooling2D(2)]),
    "conv_even_kernel_same": lambda L: (IMAGE, [_spread(L), L.Conv2D(4, 4, padding="same")]),
    "conv_rect_strided_same": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, (2, 5), (2, 3), padding="same")]),
    "conv_dilated_same": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, 3, dilation_rate=2, padding="same")]),
    "conv_dilated_rect_same": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, (3, 2), dilation_rate=(2, 3), padding="same")]),
    "conv_valid_strided_no_bias": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, (3, 5), 2, use_bias=False)]),
    "conv_deep_same_strided": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(8, 3, 2, padding="same"),
                L.Conv2D(16, 3, 2, padding="same", activation="relu")]),
    "conv_groups": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, 3, activation="tanh"), L.Conv2D(8, 3, groups=2)]),
    "global_avg_keepdims": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, 3), L.GlobalAveragePooling2D(keepdims=True), L.Flatten()]),
    "global_max_keepdims": lambda L: (
        IMAGE, [_spread(L), L.Conv2D(4, 3), L.GlobalMaxPooling2D(keepdims=True)]),
    "batch_norm_map_axis_3": lambda L: (IMAGE, [L.Conv2D(4, 3), L.BatchNormalization(axis=3)]),
    "batch_norm_no_affine": lambda L: (
        IMAGE, [L.Conv2D(4, 3), L.BatchNormalization(center=False, scale=False)]),
    "batch_norm_vector": lambda L: (
        IMAGE, [L.Flatten(), L.Dense(16), L.BatchNormalization(scale=False, epsilon=0.01),
                L.Dropout(0.5), L.Dense(10)]),
    "batch_norm_after_flatten": lambda L: (
        IMAGE, [L.Conv2D(4, 3, 2), L.Flatten(), L.BatchNormalization(), L.Dense(10)]),
    "hw_input": lambda L: ((28, 28), [L.Flatten(), L.Dense(10, activation="softmax")]),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_layer_variant_matches_keras(name, images):
    import keras

    shape, layers = VARIANTS[name](keras.layers)
    _check(shape, layers, images, name)


def test_conv_is_the_same_in_bounded_slices(images, monkeypatch):
    """A batch cut into slices (MAX_WINDOW_ELEMENTS) gives the same outputs as one."""
    import keras

    import parity.layers.conv as nk
    from parity.formats import parse

    L = keras.layers
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(4, 3, padding="same")])
    spec = parse(json.loads(model.to_json()), "slices")
    kernel, bias = model.get_weights()
    weights = {"conv2d/kernel": kernel, "conv2d/bias": bias + 0.5}
    whole = layer_outputs(spec, weights, images)[0]
    monkeypatch.setattr(nk, "MAX_WINDOW_ELEMENTS", 28 * 28 * 9 * 3)  # 3 images a slice
    assert np.array_equal(layer_outputs(spec, weights, images)[0], whole)


def test_gelu_is_the_exact_erf_form():
    """numpy has no erf: the module's own is held to math.erf/math.erfc in float64."""
    import math

    from parity.layers.activations import _erf_erfc

    x = np.linspace(-12.0, 12.0, 24_001)
    want = np.array([0.5 * v * math.erfc(-v / math.sqrt(2.0)) for v in x])
    np.testing.assert_allclose(ACTIVATIONS["gelu"](x), want, rtol=1e-11, atol=1e-300)
    a = np.abs(x)
    erf, erfc = _erf_erfc(a)
    np.testing.assert_allclose(erf, [math.erf(v) for v in a], rtol=1e-14, atol=0)
    np.testing.assert_allclose(erfc, [math.erfc(v) for v in a], rtol=1e-11, atol=0)


# --- every registry entry, as its own `sample` draws it ----------------------------------------

ENTRY_SHAPES = [(9, 8, 3), (12,), (7, 6, 4)]


@pytest.mark.parametrize("kind", sorted(k for k in __import__("parity.layers").layers.REGISTRY
                                        if k != "InputLayer"))
def test_every_entry_numpy_reference_matches_keras(kind):
    """Each entry's numpy reference against Keras itself on configs its own `sample` draws (a
    merge on a tensor and a rescaled copy of it), on seeded inputs spread over [-3, 3]: a new
    entry is tested here without new test code."""
    import zlib

    import keras

    from parity.formats import parse
    from parity.layers import REGISTRY, In
    from parity.tests.testdata import keras_call

    entry = REGISTRY[kind]
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    tried = 0
    for attempt in range(12):
        shape = ENTRY_SHAPES[attempt % len(ENTRY_SHAPES)]
        cfg = entry.sample(rng, In(shape))
        takes_many = entry.inputs[1] > 1 or kind.startswith("keras.src.ops.")
        if cfg is None or (takes_many and "value" not in cfg and len(shape) == 0):
            continue
        keras.utils.set_random_seed(attempt)
        inputs = keras.Input(shape)
        x = keras.layers.Rescaling(6.0, offset=-3.0)(inputs)
        xs = [x, keras.layers.Rescaling(0.5, offset=0.25)(x)] if (
            takes_many and "value" not in cfg) else [x]
        try:
            y = keras_call(keras, kind, cfg, xs)
        except ValueError:  # a draw Keras itself refuses for this shape
            continue
        model = keras.Model(inputs, y)
        spec = parse(json.loads(model.to_json()), kind)
        weights = {}
        for layer, ns in zip([lay for lay in model.layers if lay.weights], [
                n for n in spec.nodes if n.out.variables], strict=True):
            for v, var in zip(layer.weights, ns.out.variables, strict=True):
                if var.dtype == "float32":
                    v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
                             if var.name in ("moving_variance", "variance")
                             else rng.normal(0.0, 0.5, v.shape).astype(np.float32))
                weights[ns.key(var)] = np.asarray(v)
            if getattr(REGISTRY[ns.node.class_name], "finalize", False):
                layer.finalize_state()
        data = np.random.default_rng(attempt).random((8, *shape), dtype=np.float32)
        cut = keras.Model(inputs, [model.get_layer(ns.node.name).output if ns.node.path else
                                   y for ns in spec.nodes])
        out = cut(data)
        keras_outs = [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]
        numpy_outs = [o for p, o in zip(probes(spec), layer_outputs(spec, weights, data),
                                        strict=True) if not p.pre]
        failures, _ = _failures(_no_pre(spec), keras_outs, numpy_outs)
        assert not failures, f"{kind} {cfg} on {shape}: " + "; ".join(failures)
        tried += 1
    assert tried >= 2, f"{kind}: its sample drew fewer than 2 configs Keras runs"
