"""KerasAdam: Keras 3's Adam update rule, checked against a hand computation and against Keras."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from torch_impl.optim import KERAS_EPSILON, KerasAdam

# float32 arithmetic done in a different order (fused vs separate ops) differs by a few ulps.
STEP_RTOL = 1e-6
STEP_ATOL = 1e-9
# Keras's own update in TensorFlow versus ours after many steps: float32 rounding only.
KERAS_ATOL = 1e-6


def keras_adam_reference(w, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=KERAS_EPSILON):
    """keras/src/optimizers/adam.py update_step, written out in numpy float32."""
    f32 = np.float32
    w = w.astype(f32).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        alpha = f32(lr) * np.sqrt(f32(1) - f32(beta2) ** f32(t)) / (f32(1) - f32(beta1) ** f32(t))
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
    np.testing.assert_allclose(state["exp_avg"].numpy(), m_ref, rtol=STEP_RTOL, atol=STEP_ATOL)
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v_ref, rtol=STEP_RTOL, atol=1e-20)
    np.testing.assert_allclose(p.detach().numpy(), w_ref, rtol=STEP_RTOL, atol=STEP_ATOL)
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
    np.testing.assert_allclose(p.detach().numpy(), w_ref, rtol=STEP_RTOL)
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
    np.testing.assert_allclose(
        p.detach().numpy(), np.asarray(var.numpy()), atol=KERAS_ATOL, rtol=0,
        err_msg="KerasAdam differs from keras.optimizers.Adam",
    )


def test_rejects_bad_hyperparameters():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="learning rate"):
        KerasAdam([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        KerasAdam([p], betas=(1.0, 0.999))
