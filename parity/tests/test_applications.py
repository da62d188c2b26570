"""The `keras.applications` family, each built by Keras with `weights=None` (no download) at its
smallest input, BatchNormalization statistics randomised (a freshly built model's are 0 and 1,
which would hide a swapped mean and variance), saved with `model.save`, then:

  1. ported to PyTorch through the command line with `--module-py` — the port checks every
     node against Keras on seeded images and refuses to write otherwise;
  2. loaded strictly into the generated source, which computes what `parity.load_torch_model`
     computes from the `.keras` file, bit for bit;
  3. ported back to `.keras`: the same weights bit for bit, and plain `keras.models.load_model`
     of it predicts what the original predicts.

`make test` runs SMALL (one model per family of layers the others add nothing to);
`make test-zoo` (APPLICATIONS=all) runs all 40 architectures of Keras 3.15's keras.applications.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from parity.tests.testdata import generated_module

# architecture → the smallest square input it builds at (keras.applications' own minimum):
# all 40 of Keras 3.15's keras.applications
ARCHITECTURES = {
    "VGG16": 32, "VGG19": 32,
    "ResNet50": 32, "ResNet101": 32, "ResNet152": 32,
    "ResNet50V2": 32, "ResNet101V2": 32, "ResNet152V2": 32,
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32, "MobileNetV3Large": 32,
    "DenseNet121": 32, "DenseNet169": 32, "DenseNet201": 32,
    **{f"EfficientNetB{i}": 32 for i in range(8)},
    **{f"EfficientNetV2B{i}": 32 for i in range(4)},
    "EfficientNetV2S": 32, "EfficientNetV2M": 32, "EfficientNetV2L": 32,
    "InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71,
    "NASNetMobile": 32, "NASNetLarge": 32,
    "ConvNeXtTiny": 32, "ConvNeXtSmall": 32, "ConvNeXtBase": 32, "ConvNeXtLarge": 32,
    "ConvNeXtXLarge": 32,
}
# Built with weights=None and random BN statistics, these two are so deep (740 and 1,030
# layers) that their magnitudes and the frameworks' float32 differences grow past the check's
# per-layer bound (1.5× and more at their squeeze-excite blocks): the port refuses to write,
# naming the layer, and must keep refusing in one line until the bound or the model changes.
DIVERGES = {"EfficientNetV2M", "EfficientNetV2L"}
# merges, depthwise convolutions, operation nodes, squeeze-excite, hard-swish, Rescaling;
# LayerNormalization, LayerScale, Dense on maps, a nested Sequential, Normalization from the
# config; Normalization with adapted weights (an int64 count)
SMALL = ["MobileNetV3Small", "ConvNeXtTiny", "EfficientNetB0"]
CHOSEN = list(ARCHITECTURES) if os.environ.get("APPLICATIONS") == "all" else SMALL
pytestmark = pytest.mark.slow  # Keras builds and saves each model, the port checks it


def build(name: str, size: int, path) -> None:
    """The architecture with weights=None at `size`, BN statistics randomised, saved."""
    import keras

    keras.utils.set_random_seed(0)
    kwargs = {"weights": None, "input_shape": (size, size, 3), "classes": 10}
    model = getattr(keras.applications, name)(**kwargs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    model.save(path)



@pytest.mark.parametrize("name", CHOSEN)
def test_application_ports_both_ways(name, tmp_path, capsys):
    import keras

    import parity
    import parity.formats
    from parity.formats import read_keras
    from parity.port import main as port_main

    size = ARCHITECTURES[name]
    src, pt, py = tmp_path / f"{name}.keras", tmp_path / f"{name}.pt", tmp_path / "model.py"
    build(name, size, src)
    if name in DIVERGES:
        assert port_main([str(src), str(pt), "--samples", "8"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the two models disagree" in err, err
        assert not pt.exists()
        with capsys.disabled():
            print(f"\n| {name} | {size} | refused by the check: {err.split('(first at ')[-1]}")
        return
    assert port_main([str(src), str(pt), "--module-py", str(py), "--samples", "8"]) == 0, (
        capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "every layer within tolerance" in out and "predictions agreeing: 8/8" in out, out
    params = re.search(r"read: keras \(\d+ tensors, ([\d,]+) parameters\)", out).group(1)
    worst = re.search(r"worst (.+?) used ([\d.]+) of it \(max \|diff\| (\S+), scale (\S+)\); "
                      r"output max \|diff\| (\S+)", out)
    nodes = len(parity.formats.read_keras(src).spec.nodes)

    generated = generated_module(py, f"application_{name}").Model()
    generated.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    x = torch.from_numpy(np.random.default_rng(1).random((2, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        assert torch.equal(generated.eval()(x), parity.load_torch_model(src)(x))

    back = tmp_path / "back.keras"
    assert port_main([str(pt), str(back), "--samples", "8"]) == 0, capsys.readouterr().err
    original, again = read_keras(src).weights, read_keras(back).weights
    assert len(original) == len(again)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(original.values(), again.values(),
                                                          strict=True))
    images = x.numpy().transpose(0, 2, 3, 1)
    want = keras.models.load_model(src).predict(images, verbose=0)
    np.testing.assert_array_equal(keras.models.load_model(back).predict(images, verbose=0), want)
    with capsys.disabled():  # the README's zoo table: make test-zoo prints one row per model
        print(f"\n| {name} | {size} | {nodes} | {params} | {worst.group(2)} ({worst.group(1)}, "
              f"max \\|diff\\| {worst.group(3)}) | {worst.group(5)} | yes |")
