"""`parity.training.keras_training`: a ported module whose BatchNormalization trains as Keras's
does (the biased batch variance in the moving update, Keras's momentum), against Keras itself,
step by step; PyTorch's own BatchNorm as the negative control; inference unchanged."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from parity.training import KerasBatchNorm1d, KerasBatchNorm2d, keras_training
from parity.verify.compare import U32, sum_rtol

STEPS = 5
BATCH = 8
SHAPES = {"maps": (6, 6, 3), "vectors": (12,)}


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if x.ndim == 4 else x)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def bn_model(request, tmp_path_factory):
    """A Keras model of one BatchNormalization (momentum 0.9, so that a step moves the moving
    statistics by a tenth of the batch's), randomised statistics, saved; its batches."""
    import keras

    shape = SHAPES[request.param]
    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inputs))
    rng = np.random.default_rng(3)
    bn = model.layers[-1]
    bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape))
    bn.beta.assign(rng.normal(0, 0.5, bn.beta.shape))
    bn.moving_mean.assign(rng.normal(0, 0.3, bn.moving_mean.shape))
    bn.moving_variance.assign(rng.uniform(0.5, 1.5, bn.moving_variance.shape))
    path = tmp_path_factory.mktemp("bn") / "bn.keras"
    model.save(path)
    batches = [rng.normal(1.0, 1.5, (BATCH, *shape)).astype(np.float32) for _ in range(STEPS)]
    return path, batches


def _keras_run(path, batches):
    """Keras's training-mode calls: each batch's outputs, then the moving statistics."""
    import keras

    model = keras.models.load_model(path)
    outs = [np.asarray(model(x, training=True)) for x in batches]
    bn = model.layers[-1]
    return outs, np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)


def _torch_run(module, batches):
    module.train()
    with torch.no_grad():
        outs = [module(_nchw(x)).numpy() for x in batches]
    (bn,) = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return outs, bn.running_mean.numpy(), bn.running_var.numpy()


def _bounds(batches):
    """What two float32 runs of the same steps can differ by, whatever order each sums in.
    A batch statistic is a sum of n = batch × positions terms: within sum_rtol(n) of its terms'
    scale (|x| for the mean, the variance itself for the two-pass variance, whose terms are
    squares ≥ 0), plus 4 roundings of the update; STEPS updates add up (momentum < 1 only
    damps them). The normalised outputs move by those relative errors over σ."""
    n = batches[0].size // batches[0].shape[-1]
    x_scale = max(float(np.abs(x).max()) for x in batches)
    rel = STEPS * (sum_rtol(n) + 4 * U32)
    sigma = min(float(x.reshape(-1, x.shape[-1]).std(0).min()) for x in batches)
    return rel * x_scale, rel, rel * (x_scale / sigma) * 4


def test_keras_training_batchnorm_takes_kerass_steps(bn_model):
    from parity import load_torch_model

    path, batches = bn_model
    k_outs, k_mean, k_var = _keras_run(path, batches)
    module = keras_training(load_torch_model(path))
    assert any(isinstance(m, KerasBatchNorm1d | KerasBatchNorm2d) for m in module.modules())
    t_outs, t_mean, t_var = _torch_run(module, batches)
    mean_atol, var_rtol, out_atol = _bounds(batches)
    np.testing.assert_allclose(t_mean, k_mean, rtol=0, atol=mean_atol)
    np.testing.assert_allclose(t_var, k_var, rtol=var_rtol, atol=0)
    for t, k in zip(t_outs, k_outs, strict=True):
        k = k.transpose(0, 3, 1, 2) if k.ndim == 4 else k
        np.testing.assert_allclose(t, k, rtol=0, atol=out_atol)


def test_pytorchs_own_batchnorm_fails_the_bound(bn_model):
    """The negative control: PyTorch's BatchNorm (unbiased variance, n/(n − 1)) is outside the
    same bound on the moving variance."""
    from parity import load_torch_model

    path, batches = bn_model
    _, _, k_var = _keras_run(path, batches)
    _, _, t_var = _torch_run(load_torch_model(path), batches)
    _, var_rtol, _ = _bounds(batches)
    assert np.max(np.abs(t_var - k_var) / np.abs(k_var)) > 3 * var_rtol


def test_inference_and_state_dict_are_unchanged(bn_model):
    from parity import load_torch_model

    path, batches = bn_model
    plain = load_torch_model(path).eval()
    keras_like = keras_training(copy.deepcopy(plain)).eval()
    assert list(keras_like.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        x = _nchw(batches[0])
        assert torch.equal(keras_like(x), plain(x))


def test_module_py_with_keras_training_takes_kerass_steps(bn_model, tmp_path, capsys):
    """`port --module-py --keras-training`: the generated file holds Keras's BatchNormalization
    itself (no import of parity), loads the port's weights strict, and trains as Keras does."""
    from parity.port import main as port_main
    from parity.tests.testdata import generated_module

    path, batches = bn_model
    pt, py = tmp_path / "bn.pt", tmp_path / "bn_model.py"
    assert port_main([str(path), str(pt), "--module-py", str(py), "--keras-training",
                      "--samples", "20"]) == 0
    text = py.read_text()
    assert "class _KerasBatchNorm:" in text and "parity" not in text.split('"""', 2)[2]
    module = generated_module(py, f"bn_model_{len(batches[0].shape)}").BnModel()
    module.load_state_dict(torch.load(pt, weights_only=True), strict=True)
    assert any(type(m).__name__.startswith("KerasBatchNorm") for m in module.modules())
    k_outs, k_mean, k_var = _keras_run(path, batches)
    t_outs, t_mean, t_var = _torch_run(module, batches)
    mean_atol, var_rtol, out_atol = _bounds(batches)
    np.testing.assert_allclose(t_mean, k_mean, rtol=0, atol=mean_atol)
    np.testing.assert_allclose(t_var, k_var, rtol=var_rtol, atol=0)


def test_keras_training_without_module_py_is_a_usage_error(bn_model, tmp_path, capsys):
    from parity.port import main as port_main

    with pytest.raises(SystemExit) as exit_:
        port_main([str(bn_model[0]), str(tmp_path / "bn.pt"), "--keras-training"])
    assert exit_.value.code == 2 and "--module-py" in capsys.readouterr().err
    assert not (tmp_path / "bn.pt").exists()
