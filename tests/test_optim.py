"""KerasAdam: Keras 3's Adam update rule, checked against a hand computation and against Keras."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from parity.verify.compare import ulp_distance
from torch_impl.optim import KERAS_EPSILON, KerasAdam, float_power

# Adam is elementwise float32 arithmetic: no sums, so no summation order. KerasAdam evaluates
# Keras's operations in Keras's order, each rounded once, so it gives the same bits as the
# formulas written out in numpy and as keras.optimizers.Adam itself, on any CPU.
ADAM_ULPS = 0


def keras_adam_reference(w, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=KERAS_EPSILON):
    """keras/src/optimizers/adam.py update_step, written out in numpy float32."""
    f32 = np.float32
    w = w.astype(f32).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        # TensorFlow's float32 power of a scalar is the C library's powf (`float_power`)
        alpha = f32(lr) * np.sqrt(f32(1) - float_power(beta2, t)) / (f32(1) - float_power(beta1, t))
        m = m + (g - m) * f32(1 - beta1)
        v = v + (np.square(g) - v) * f32(1 - beta2)
        w = w - (m * alpha) / (np.sqrt(v) + f32(eps))
    return w, m, v


def torch_steps(w0, grads, **kwargs):
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = KerasAdam([p], **kwargs)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    return p, opt


def test_matches_keras_formulas_by_hand(rng):
    w0 = rng.standard_normal((7, 5)).astype(np.float32)
    # Gradients of mixed scale, including exact zeros where ε dominates the denominator.
    grads = [(rng.standard_normal((7, 5)) * 10.0 ** rng.integers(-8, 1)).astype(np.float32)
             for _ in range(25)]
    grads[3][0, :] = 0.0
    p, opt = torch_steps(w0, grads)
    w_ref, m_ref, v_ref = keras_adam_reference(w0, grads)
    state = opt.state[p]
    assert ulp_distance(state["exp_avg"].numpy(), m_ref) <= ADAM_ULPS, "m"
    assert ulp_distance(state["exp_avg_sq"].numpy(), v_ref) <= ADAM_ULPS, "v"
    assert ulp_distance(p.detach().numpy(), w_ref) <= ADAM_ULPS, "weights"
    assert state["step"].item() == 25.0


def test_first_step_differs_from_torch_adam(rng):
    """The epsilon placement matters: with tiny gradients torch's Adam moves ~lr, Keras's less."""
    w0 = np.zeros(4, np.float32)
    g = np.full(4, 1e-9, np.float32)
    p, _ = torch_steps(w0, [g])
    q = torch.nn.Parameter(torch.zeros(4))
    q.grad = torch.from_numpy(g.copy())
    torch.optim.Adam([q], lr=1e-3, eps=1e-7).step()
    # Keras: α·m/(√v + ε) = 1e-3·√0.001/0.1 · 1e-10 / (√1e-21 + 1e-7) ≈ 1e-4 · ... ≪ torch's step.
    w_ref, _, _ = keras_adam_reference(w0, [g])
    assert ulp_distance(p.detach().numpy(), w_ref) <= ADAM_ULPS
    assert abs(q.detach()[0].item()) > 10 * abs(p.detach()[0].item()), (
        "torch.optim.Adam and KerasAdam should differ on the first step with tiny gradients"
    )


def test_state_dict_round_trip_resumes_exactly(rng):
    """Saving after 5 steps and loading into a fresh optimizer continues bit for bit."""
    w0 = rng.standard_normal(10).astype(np.float32)
    grads = [rng.standard_normal(10).astype(np.float32) for _ in range(10)]
    p_full, _ = torch_steps(w0, grads)

    p, opt = torch_steps(w0, grads[:5])
    buf = io.BytesIO()
    torch.save({"w": p.detach().clone(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    p2 = torch.nn.Parameter(saved["w"])
    opt2 = KerasAdam([p2])
    opt2.load_state_dict(saved["opt"])
    for g in grads[5:]:
        p2.grad = torch.from_numpy(g.copy())
        opt2.step()
    assert torch.equal(p2.detach(), p_full.detach()), "resumed optimizer diverged"


def test_matches_keras_adam(rng):
    """The real keras.optimizers.Adam, fed the same gradients, lands on the same weights."""
    keras = pytest.importorskip("keras")
    w0 = rng.standard_normal((6, 3)).astype(np.float32)
    grads = [rng.standard_normal((6, 3)).astype(np.float32) for _ in range(20)]
    var = keras.Variable(w0.copy())
    opt = keras.optimizers.Adam()
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    p, _ = torch_steps(w0, grads)
    far = ulp_distance(p.detach().numpy(), np.asarray(var.numpy()))
    assert far <= ADAM_ULPS, f"KerasAdam is {far} float32 steps from keras.optimizers.Adam"


def test_step_size_is_kerass_in_float32():
    """α at every step of a long run (3,000 steps, then sparser to 200,000) is the float32
    value Keras's own expression gives (on scalars, as Adam.update_step evaluates it)."""
    keras = pytest.importorskip("keras")
    ops = keras.ops
    f32 = "float32"
    bad = []
    for step in [*range(1, 3001), *range(3001, 200_000, 4999)]:
        t = ops.cast(step, f32)
        b1, b2 = ops.power(ops.cast(0.9, f32), t), ops.power(ops.cast(0.999, f32), t)
        keras_alpha = float(ops.cast(1e-3, f32) * ops.sqrt(1 - b2) / (1 - b1))
        if KerasAdam.step_size(1e-3, 0.9, 0.999, step) != keras_alpha:
            bad.append(step)
    assert not bad, f"α differs from Keras's at steps {bad[:10]}"


def test_rejects_bad_hyperparameters():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="learning rate"):
        KerasAdam([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        KerasAdam([p], betas=(1.0, 0.999))
