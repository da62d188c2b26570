"""Both models: layer shapes, parameter counts (320 / 18,496 / 313,700 / 1,010 = 333,526), init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_impl.model import BookCNN, keras_init_, summary

BOOK_PARAMS = {"conv1": 320, "conv2": 18_496, "dense1": 313_700, "dense2": 1_010}


def test_torch_shapes_per_layer(book_data):
    model = BookCNN().eval()
    x = book_data.val_x[:4]
    shapes = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name in ("relu1", "pool1", "relu2", "pool2", "flatten", "dense1", "dense2")
    ]
    logits = model(x)
    for h in hooks:
        h.remove()
    assert shapes == {
        "relu1": (4, 32, 28, 28), "pool1": (4, 32, 14, 14), "relu2": (4, 64, 14, 14),
        "pool2": (4, 64, 7, 7), "flatten": (4, 3136), "dense1": (4, 100), "dense2": (4, 10),
    }
    assert logits.shape == (4, 10)
    probs = model.predict_proba(x)
    # ten float32 probabilities sum to 1 within ten roundings (allclose: atol 1e-8 + rtol 1e-5)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4))


def test_torch_parameter_counts():
    model = BookCNN()
    counts = {
        name: sum(p.numel() for p in getattr(model, name).parameters()) for name in BOOK_PARAMS
    }
    assert counts == BOOK_PARAMS
    assert sum(p.numel() for p in model.parameters()) == 333_526


def test_torch_summary_table_matches_keras_counts():
    table = summary(BookCNN())
    for count in ("320", "18,496", "313,700", "1,010", "333,526"):
        assert count in table, f"{count} missing from the summary table"
    assert "[1, 64, 7, 7]" in table


def test_keras_init_is_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    model = keras_init_(BookCNN())
    for layer, fan_in, fan_out in ((model.conv1, 9, 288), (model.conv2, 288, 576),
                                   (model.dense1, 3136, 100), (model.dense2, 100, 10)):
        limit = np.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit
        assert torch.count_nonzero(layer.bias) == 0
    # The book (8-3): an untrained Conv2D's kernels have std ≈ 0.08 (U(-l, l): std = l/√3).
    # 288 draws of U(±√(6/297)): their std within 15% of the distribution's (a sampling bound)
    assert model.conv1.weight.std().item() == pytest.approx(np.sqrt(6 / 297) / np.sqrt(3), rel=0.15)


def test_torch_default_init_differs_from_keras():
    torch.manual_seed(0)
    model = BookCNN(init="torch")
    assert torch.count_nonzero(model.conv1.bias) > 0  # PyTorch draws biases too
    with pytest.raises(ValueError, match="init must be"):
        BookCNN(init="he")


def test_keras_model_layers_shapes_and_counts():
    from keras_ref.model import build_model

    model = build_model()
    classes = [type(layer).__name__ for layer in model.layers]
    assert classes == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense",
                       "Dropout", "Dense"]
    assert [layer.count_params() for layer in model.layers] == [320, 0, 18_496, 0, 0, 313_700,
                                                                0, 1_010]
    assert model.count_params() == 333_526
    assert [tuple(layer.output.shape) for layer in model.layers] == [
        (None, 28, 28, 32), (None, 14, 14, 32), (None, 14, 14, 64), (None, 7, 7, 64),
        (None, 3136), (None, 100), (None, 100), (None, 10),
    ]
    assert model.layers[6].rate == pytest.approx(0.4)
    assert model.layers[0].padding == "same" and model.layers[-1].activation.__name__ == "softmax"
