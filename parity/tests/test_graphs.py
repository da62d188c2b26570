"""Functional graphs of a user's own: a small U-Net (skip connections, a transposed convolution, a
concatenation, a residual Add behind ConvNeXt's StochasticDepth, operations with numbers,
depthwise and separable convolutions, bilinear upsampling, cropping), trained one short epoch on
real images, ported and checked through the command lines both ways; and the report of a model
too long to list."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from parity.port import main as port_main
from parity.tests.testdata import all_agree, generated_module

SAMPLES = "200"
pytestmark = pytest.mark.slow  # a short Keras training run


@pytest.fixture(scope="module")
def unet(tmp_path_factory, data_dir):
    import keras
    from keras.src.applications.convnext import StochasticDepth

    from fashion_cnn.fashion_mnist import load_data

    L = keras.layers
    keras.utils.set_random_seed(11)
    inputs = keras.Input((28, 28, 1))
    x = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    skip = L.ReLU(6.0)(x)
    x = L.MaxPooling2D()(skip)
    x = L.SeparableConv2D(16, 3, padding="same", activation="relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(x)
    up = L.Conv2DTranspose(8, 3, strides=2, padding="same")(x)
    x = L.Concatenate()([up, skip])
    x = L.Conv2D(8, 1)(x)
    x = L.Add()([StochasticDepth(0.2)(x), skip])
    x = x * 0.5 + 1.0
    y = L.UpSampling2D(interpolation="bilinear")(L.Conv2D(4, 2, strides=2)(x))
    x = L.Cropping2D(((1, 1), (1, 1)))(y)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    (images, labels), _ = load_data(str(data_dir))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit((images[:256] / 255.0).astype(np.float32)[..., None], labels[:256], epochs=1,
              verbose=0)
    out = tmp_path_factory.mktemp("unet")
    model.save(out / "unet.keras")
    return out / "unet.keras", model



def test_unet_ports_checks_and_reads_like_the_model(unet, tmp_path, capsys, eval_images):
    import keras

    from parity.check import main as check_main
    from parity.formats import read_keras

    src, model = unet
    pt, py = tmp_path / "unet.pt", tmp_path / "unet_model.py"
    assert port_main([str(src), str(pt), "--module-py", str(py), "--samples", SAMPLES]) == 0
    out = capsys.readouterr().out
    assert "every layer within tolerance" in out and all_agree(out, 200), out

    # the source reads like the model: the branch named, the merges as expressions
    text = py.read_text()
    # (Keras numbers a name when this process made that kind of layer before: re_lu_3)
    relu = re.search(r"\n        (re_lu(?:_\d+)?) = self\.re_lu(?:_\d+)?\(x\)", text)
    assert relu, text
    assert f"torch.cat([x, {relu[1]}], dim=1)" in text and f"x + {relu[1]}" in text, text
    assert "x * 0.5" in text and "x + 1.0" in text
    assert "from torchvision.ops import StochasticDepth" in text
    assert re.search(r"= StochasticDepth\(0\.2, 'row'\)", text), text
    generated = generated_module(py, "unet_model").UnetModel()
    generated.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    images = eval_images[0][:64]
    with torch.no_grad():
        ours = generated.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    # float32 sums in two orders; the outputs are probabilities (≤ 1): atol = rtol = 1e-5
    np.testing.assert_allclose(ours, model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)

    assert check_main([str(src), str(pt), "--samples", "64", "--test-images", "256", "--json",
                       str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert "tolerance: |torch − keras| ≤ 1e-05·max(1, s)" in printed, printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and len(report["layers"]) >= 17, report
    assert {d["class"] for d in report["layers"]} >= {"Conv2DTranspose", "Concatenate", "Add"}
    assert "max(1, s)" in report["rule"]

    back = tmp_path / "back.keras"
    assert port_main([str(pt), str(back), "--samples", SAMPLES]) == 0
    original, again = read_keras(src).weights, read_keras(back).weights
    assert [a.tobytes() for a in again.values()] == [a.tobytes() for a in original.values()]
    np.testing.assert_array_equal(keras.models.load_model(back).predict(images, verbose=0),
                                  model.predict(images, verbose=0))


def test_a_long_report_lists_the_worst_and_counts_per_class():
    from parity.verify.compare import LayerDiff
    from parity.verify.report import TABLE_ROWS, WORST_ROWS, format_table

    diffs = [LayerDiff(f"conv{i}", (8, 4, 4, 2), 1e-7 * i, 1e-7, 1e-5, 1e-5, True, 1.0,
                       i / 1000) for i in range(TABLE_ROWS + 60)]
    classes = {d.name: "Conv2D" if i % 2 else "BatchNormalization" for i, d in enumerate(diffs)}
    text = format_table(diffs, 14, classes)
    listed = re.findall(r"^(conv\d+) ", text, re.M)
    assert listed == [f"conv{i}" for i in range(TABLE_ROWS + 59, TABLE_ROWS + 59 - WORST_ROWS,
                                                 -1)], text
    assert re.search(r"^Conv2D +50 +50 +0\.099$", text, re.M), text
    assert re.search(r"^BatchNormalization +50 +50 +0\.098$", text, re.M), text


def test_a_check_too_big_for_one_pass_runs_in_ranges_of_layers(unet, monkeypatch):
    """Where one image's outputs of every layer exceed the budget, the check runs both sides
    once per range of layers that fits, and finds what one pass finds."""
    from parity import pipeline
    from parity.verify import layerwise

    src, _ = unet
    source = pipeline.read_source(src, module=False)
    whole = pipeline.check_plan(source, 32, 32)
    assert len(whole.groups) == 1
    per_image = layerwise.values_per_image(source.spec.input_shape,
                                           [ns.out.shape for ns in source.spec.nodes])
    monkeypatch.setattr(layerwise, "CHECK_BYTES", per_image * layerwise.BYTES_PER_VALUE // 4)
    split = pipeline.check_plan(source, 32, 32)
    assert len(split.groups) >= 4, split
    assert [a for a, _ in split.groups[1:]] == [b for _, b in split.groups[:-1]]  # contiguous
    images = pipeline.images_for(source.spec.input_shape, 32, None)
    ranged = pipeline.verify(source, images, split.batch, groups=split.groups)
    # the same batches in one pass (a batch's size can change Keras's kernels, not a range)
    once = pipeline.verify(pipeline.read_source(src, module=False), images, split.batch)
    assert ranged.passed and once.passed
    assert [d.max_abs for d in ranged.layers] == [d.max_abs for d in once.layers]
    assert ranged.agreeing == once.agreeing == 32
