"""`python -m parity.visualize`: Keras's and PyTorch's 8-3 feature maps of the same image, from a
real Keras checkpoint and its PyTorch port, within MAPS_TOLERANCE; other weights are caught."""

from __future__ import annotations

import re

import numpy as np
import pytest

from parity import visualize as pv
from parity.port import port
from parity.verify.compare import sum_rtol

pytestmark = pytest.mark.slow  # both frameworks on real checkpoints

MAPS_DIFF = re.compile(r"^Keras vs PyTorch (conv\d) feature maps: max \|diff\| (\S+) over", re.M)


@pytest.fixture(scope="module")
def pair(keras_ckpts, data_dir, tmp_path_factory):
    """The briefly trained Keras checkpoint and its PyTorch port."""
    keras_file = keras_ckpts["trained"].files[".keras"]
    torch_file = tmp_path_factory.mktemp("pair") / "model.pt"
    port(keras_file, torch_file, samples=64, data_dir=data_dir)
    return keras_file, torch_file


def test_feature_maps_agree_and_are_drawn(pair, data_dir, raw_data, tmp_path, capsys):
    from keras_ref.visualize import book_input, feature_maps, load_book_model

    keras_file, torch_file = pair
    argv = [str(keras_file), str(torch_file), "--out", str(tmp_path), "--data-dir", str(data_dir)]
    assert pv.main(argv) == 0
    printed = dict(MAPS_DIFF.findall(capsys.readouterr().out))
    found = pv.compare_feature_maps(keras_file, torch_file, 0, data_dir)
    assert [m.name for m in found] == ["conv1", "conv2"]
    for maps in found:
        assert maps.diffs.shape == ((32,) if maps.name == "conv1" else (64,))
        assert maps.diffs.max() <= pv.MAPS_TOLERANCE, f"{maps.name}: {maps.diffs.max():.2e}"
        # printed with 3 significant digits (%.2e): within half a unit of the last, < 1%
        assert float(printed[maps.name]) == pytest.approx(maps.diffs.max(), rel=0.01, abs=1e-12)
        assert np.abs(maps.torch).max() > 0.01, f"{maps.name}: all maps zero; proves nothing"
        assert (tmp_path / f"keras-vs-torch-{maps.name}.png").stat().st_size > 1000
    # The Keras side equals the model Keras itself deserializes from the file, as the book cuts it.
    (train_input, _), _ = raw_data
    k1, k2 = feature_maps(load_book_model(keras_file), book_input(train_input, 0))
    for maps, keras_maps in zip(found, (k1, k2), strict=True):
        # The same Keras layers and weights in two models, so possibly two kernel choices for
        # the same ≤ 288-term sums: sum_rtol(288) of the terms' scale (maps ≤ ~5 here)
        np.testing.assert_allclose(maps.keras, keras_maps[0].transpose(2, 0, 1),
                                   atol=5 * sum_rtol(288))


def test_other_weights_are_caught(pair, keras_ckpts, data_dir, tmp_path, capsys):
    """A Keras file holding other weights: the pictures still come, then exit 1 naming the gap."""
    _, torch_file = pair
    other = keras_ckpts["random"].files[".keras"]
    argv = [str(other), str(torch_file), "--out", str(tmp_path), "--data-dir", str(data_dir)]
    assert pv.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "feature maps differ" in err, err
    assert (tmp_path / "keras-vs-torch-conv1.png").is_file()
