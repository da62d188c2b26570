"""parity.optim against the real Keras: every optimizer and schedule it reproduces, step by step.

Each case builds Keras's optimizer and ours from one serialized config, feeds both the same
seeded float32 gradients (mixed scale, exact zeros, an all-zero tensor) for three variables of
different shapes, and compares the weights and every optimizer variable bit for bit.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from fashion_cnn.errors import UserError
from parity.optim import SLOTS, KerasAdamW, from_keras, parse_optimizer
from parity.optim.schedules import parse_schedule
from parity.verify.compare import ulp_distance
from torch_impl.optim import KerasAdam

keras = pytest.importorskip("keras")

# Optimizer updates are elementwise float32 arithmetic: no sums, so no summation order. Ours
# evaluates Keras's operations in Keras's order, each rounded once, and takes β^t and cos from
# the C library's powf/cosf, which TensorFlow's CPU kernels call for a scalar: the same bits,
# so every comparison here is at 0 ulps, transcendentals included. (Where libm cannot be
# loaded, float_power and float_cos fall back to correctly rounded values, which glibc's powf
# and cosf are but for rare near-ties: that fallback is not tested here.)
EXACT = 0
SHAPES = [(5, 4), (7,), (2, 3, 3)]
STEPS = 20


def schedule(name, **config):
    return {"module": "keras.optimizers.schedules", "class_name": name, "config": config,
            "registered_name": None}


CASES = {
    "adam": ("Adam", {}),
    "adam_amsgrad": ("Adam", {"amsgrad": True, "beta_1": 0.8, "epsilon": 1e-6,
                              "learning_rate": 0.01}),
    "adam_exponential_staircase": ("Adam", {"learning_rate": schedule(
        "ExponentialDecay", initial_learning_rate=0.01, decay_steps=4, decay_rate=0.5,
        staircase=True)}),
    "adamw": ("AdamW", {"weight_decay": 0.05, "learning_rate": 0.01}),
    "adamw_amsgrad_exponential": ("AdamW", {"amsgrad": True, "learning_rate": schedule(
        "ExponentialDecay", initial_learning_rate=0.01, decay_steps=3, decay_rate=0.7)}),
    "sgd": ("SGD", {"learning_rate": 0.1}),
    "sgd_momentum": ("SGD", {"momentum": 0.9, "learning_rate": 0.05}),
    "sgd_nesterov_weight_decay_piecewise": ("SGD", {
        "momentum": 0.8, "nesterov": True, "weight_decay": 0.01,
        "learning_rate": schedule("PiecewiseConstantDecay", boundaries=[5, 12],
                                  values=[0.1, 0.05, 0.01])}),
    # w·wd·lr as large as w: the decay's own rounding (w·wd first, then ·lr) shows
    "sgd_heavy_weight_decay": ("SGD", {"learning_rate": 0.7, "weight_decay": 0.9}),
    "rmsprop": ("RMSprop", {}),
    "rmsprop_centered_momentum": ("RMSprop", {"centered": True, "momentum": 0.9, "rho": 0.8,
                                              "learning_rate": 0.01}),
    "rmsprop_weight_decay_cosine": ("RMSprop", {"weight_decay": 0.1, "learning_rate": schedule(
        "CosineDecay", initial_learning_rate=0.01, decay_steps=15, alpha=0.1)}),
    "nadam": ("Nadam", {}),
    "nadam_weight_decay_cosine_warmup": ("Nadam", {"weight_decay": 0.02, "learning_rate": schedule(
        "CosineDecay", initial_learning_rate=0.001, decay_steps=10, warmup_target=0.01,
        warmup_steps=5)}),
    "adagrad": ("Adagrad", {"learning_rate": 0.05}),
    "adagrad_zero_start_weight_decay": ("Adagrad", {"initial_accumulator_value": 0.0,
                                                    "epsilon": 1e-5, "weight_decay": 0.01}),
}


def serialized(case: str) -> dict:
    """The case's config as a `.keras` file holds it: Keras's own serialization of the
    optimizer built from the bare {"class_name", "config"} form."""
    name, config = CASES[case]
    opt = keras.optimizers.deserialize({"class_name": name, "config": copy.deepcopy(config)})
    return keras.optimizers.serialize(opt)


def draws(seed: int, steps: int = STEPS):
    """Initial weights and `steps` gradients per shape: |g| from 1e-8 to 1e2, a fifth exactly
    zero, and one all-zero tensor. (No subnormal results: TensorFlow's CPU flushes them.)

    The weights start at N(0, 1), at 0 and at N(0, 1e-3²): an update far smaller than w is
    lost in w's rounding, so only weights of the update's size show its every bit."""
    rng = np.random.default_rng(seed)
    w0 = [(rng.standard_normal(s) * scale).astype(np.float32)
          for s, scale in zip(SHAPES, (1.0, 0.0, 1e-3), strict=True)]
    grads = []
    for _ in range(steps):
        step = []
        for s in SHAPES:
            g = rng.standard_normal(s) * 10.0 ** rng.integers(-8, 3, s)
            g[rng.random(s) < 0.2] = 0.0
            step.append(g.astype(np.float32))
        grads.append(step)
    grads[3][1][:] = 0.0
    return w0, grads


def run_keras(config: dict, w0, grads):
    """Weights and optimizer variables (by name) after Keras's apply_gradients on each step;
    a None gradient is passed as None (Keras skips the variable, counts the step)."""
    opt = keras.optimizers.deserialize(copy.deepcopy(config))
    variables = [keras.Variable(w.copy(), name=f"w{i}") for i, w in enumerate(w0)]
    for step in grads:
        opt.apply_gradients([(None if g is None else keras.ops.convert_to_tensor(g), v)
                             for g, v in zip(step, variables, strict=True)])
    slots = {v.name: np.asarray(v.numpy()) for v in opt.variables}
    if hasattr(opt, "_u_product"):  # Nadam's, a variable named "variable" (numbered if many)
        slots["u_product"] = np.asarray(opt._u_product.numpy())
    return [np.asarray(v.numpy()) for v in variables], slots


def make_torch(config, w0):
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in w0]
    return params, from_keras(config, params)


def run_torch(params, opt, grads):
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step()
    return params, opt


def assert_matches_keras(config, params, opt, keras_weights, keras_slots, ulps=EXACT):
    """Weights, every state tensor against its Keras variable, and the step counter."""
    class_name = parse_optimizer(config).class_name
    for i, (p, w) in enumerate(zip(params, keras_weights, strict=True)):
        far = ulp_distance(p.detach().numpy(), w)
        assert far <= ulps, f"w{i} is {far} float32 steps from Keras's"
        state = opt.state[p]
        expected = {key for key, kname in SLOTS[class_name] if f"w{i}_{kname}" in keras_slots}
        if "u_product" in state:
            expected.add("u_product")
        assert set(state) - {"step"} == expected, f"w{i}'s state has the wrong slots"
        for key, kname in SLOTS[class_name]:
            if key not in state:
                continue
            kv = keras_slots["u_product" if key == "u_product" else f"w{i}_{kname}"]
            far = ulp_distance(state[key].numpy(), kv)
            assert far <= ulps, f"w{i}'s {key} is {far} float32 steps from Keras's {kname}"
        assert state["step"].dtype == torch.float32 and state["step"].device.type == "cpu"
        assert state["step"].item() == keras_slots["iteration"]


@pytest.fixture(scope="module")
def keras_runs():
    """Each case's serialized config and Keras's result on draws(seed=index)."""
    runs = {}
    for index, case in enumerate(CASES):
        config = serialized(case)
        w0, grads = draws(index)
        runs[case] = (config, w0, grads, *run_keras(config, w0, grads))
    return runs


@pytest.mark.parametrize("case", list(CASES))
def test_matches_keras(case, keras_runs):
    config, w0, grads, keras_weights, keras_slots = keras_runs[case]
    params, opt = run_torch(*make_torch(config, w0), grads)
    assert_matches_keras(config, params, opt, keras_weights, keras_slots)


def test_plain_adam_is_kerasadam(keras_runs):
    """KerasAdam is one case of from_keras: a plain Adam with a float learning rate."""
    assert type(from_keras(keras_runs["adam"][0], [torch.zeros(1)])) is KerasAdam
    for case in ("adam_amsgrad", "adam_exponential_staircase", "adamw"):
        assert type(from_keras(keras_runs[case][0], [torch.zeros(1)])) is KerasAdamW


@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")
@pytest.mark.parametrize("case", ["adamw_amsgrad_exponential", "nadam_weight_decay_cosine_warmup"])
def test_missing_gradient_counts_the_step(case, keras_runs):
    """A variable without a gradient is skipped, yet `iterations` (Adam's t, Nadam's u_product,
    the schedule's step) moves on for all, as in Keras."""
    config, w0, grads = keras_runs[case][:3]
    grads = [list(step) for step in grads]
    for i in (2, 3, 9):
        grads[i][0] = None
    grads[0][2] = None  # its state is made at step 1, with Keras's iterations of then
    keras_weights, keras_slots = run_keras(config, w0, grads)
    params, opt = run_torch(*make_torch(config, w0), grads)
    assert_matches_keras(config, params, opt, keras_weights, keras_slots)


def torch_counterpart(class_name: str, hyper: dict, params):
    """torch.optim's optimizer with the same hyper-parameters (each rule's negative control)."""
    lr = hyper["learning_rate"]
    if class_name in ("Adam", "AdamW"):
        cls = torch.optim.AdamW if class_name == "AdamW" else torch.optim.Adam
        return cls(params, lr=lr, betas=(hyper["beta_1"], hyper["beta_2"]),
                   eps=hyper["epsilon"], amsgrad=hyper["amsgrad"],
                   weight_decay=hyper["weight_decay"] or 0.0)
    if class_name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=hyper["momentum"],
                               nesterov=hyper["nesterov"])
    if class_name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=hyper["rho"], eps=hyper["epsilon"],
                                   momentum=hyper["momentum"], centered=hyper["centered"])
    if class_name == "Nadam":  # momentum_decay=1: torch's μ_t is then Keras's β1(1 − ½·0.96^t)
        return torch.optim.NAdam(params, lr=lr, betas=(hyper["beta_1"], hyper["beta_2"]),
                                 eps=hyper["epsilon"], momentum_decay=1.0)
    return torch.optim.Adagrad(params, lr=lr, eps=hyper["epsilon"],
                               initial_accumulator_value=hyper["initial_accumulator_value"])


@pytest.mark.parametrize("case", ["adam_amsgrad", "adamw", "sgd_momentum", "rmsprop",
                                  "rmsprop_centered_momentum", "nadam", "adagrad"])
def test_torch_optimizers_fail_the_bound(case, keras_runs):
    """Negative control: torch.optim's own optimizer, same hyper-parameters, same gradients,
    is not Keras's (epsilon placement, momentum form, rounding order)."""
    config, w0, grads, keras_weights, _ = keras_runs[case]
    hyper = config["config"]
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in w0]
    run_torch(params, torch_counterpart(config["class_name"], hyper, params), grads)
    far = max(ulp_distance(p.detach().numpy(), w)
              for p, w in zip(params, keras_weights, strict=True))
    assert far > EXACT, f"torch.optim's {config['class_name']} matched Keras bit for bit"


@pytest.mark.parametrize("case", ["adam_exponential_staircase",
                                  "sgd_nesterov_weight_decay_piecewise",
                                  "nadam_weight_decay_cosine_warmup"])
def test_schedule_one_step_late_fails_the_bound(case, keras_runs):
    """Negative control for the schedule's timing: evaluated at iterations + 1 instead of
    iterations (before the increment), the run is no longer Keras's."""
    config, w0, grads, keras_weights, _ = keras_runs[case]
    params, opt = make_torch(config, w0)
    on_time = opt.schedule
    opt.schedule = lambda iterations: on_time(iterations + 1)
    run_torch(params, opt, grads)
    assert max(ulp_distance(p.detach().numpy(), w)
               for p, w in zip(params, keras_weights, strict=True)) > EXACT


@pytest.mark.parametrize("config", [
    schedule("ExponentialDecay", initial_learning_rate=0.1, decay_steps=7, decay_rate=0.93),
    schedule("ExponentialDecay", initial_learning_rate=0.3, decay_steps=10.5, decay_rate=0.5,
             staircase=True),
    schedule("CosineDecay", initial_learning_rate=0.05, decay_steps=200),
    schedule("CosineDecay", initial_learning_rate=0.01, decay_steps=180, alpha=0.2,
             warmup_target=0.1, warmup_steps=30),
    schedule("PiecewiseConstantDecay", boundaries=[10, 100, 200.7], values=[1.0, 0.5, 0.1, 1e-3]),
], ids=["exponential", "exponential_staircase", "cosine", "cosine_warmup", "piecewise"])
def test_schedules_match_keras_at_every_step(config):
    """Each schedule, at every step of a run of 250 and then sparser to 10**6, gives the float32
    value Keras's own schedule gives at that int64 `iterations`."""
    ours, theirs = parse_schedule(config, "lr"), keras.optimizers.schedules.deserialize(config)
    bad = []
    for it in [*range(250), *range(250, 10**6, 49_999)]:
        expected = np.float32(theirs(keras.ops.convert_to_tensor(it, "int64")))
        got = ours(it)
        if got.dtype != np.float32 or ulp_distance(np.array(got), np.array(expected)) > EXACT:
            bad.append((it, got, expected))
    assert not bad, f"the schedule differs from Keras's at {bad[:5]}"


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip_resumes_exactly(case, keras_runs):
    """8 steps, torch.save, torch.load(weights_only=True) into a fresh optimizer, 12 more steps:
    the same bits as 20 steps without a break."""
    config, w0, grads = keras_runs[case][:3]
    full, full_opt = run_torch(*make_torch(config, w0), grads)
    params, opt = run_torch(*make_torch(config, w0), grads[:8])
    buf = io.BytesIO()
    torch.save({"w": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params2, opt2 = make_torch(config, [w.numpy() for w in saved["w"]])
    opt2.load_state_dict(saved["opt"])
    run_torch(params2, opt2, grads[8:])
    for p, q in zip(full, params2, strict=True):
        assert torch.equal(p.detach(), q.detach()), "resumed weights diverged"
        a, b = full_opt.state[p], opt2.state[q]
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "state diverged"


def bare(name, **config):
    return {"class_name": name, "config": config}


@pytest.mark.parametrize(("config", "field"), [
    (bare("Adam", learning_rate="0.001"), "learning_rate"),
    (bare("Adam", learning_rate=float("nan")), "learning_rate"),
    (bare("Adam", learning_rate=-0.1), "learning_rate"),
    (bare("Adam", learning_rate=True), "learning_rate"),
    (bare("Adam", learning_rate=1), "learning_rate"),
    (bare("Adam", beta_1=1.5), "beta_1"),
    (bare("Adam", epsilon=float("inf")), "epsilon"),
    (bare("Adam", amsgrad="yes"), "amsgrad"),
    (bare("Adamax"), "class_name"),
    (bare("Adam", clipnorm=1.0), "clipnorm"),
    (bare("SGD", clipvalue=0.5), "clipvalue"),
    (bare("RMSprop", global_clipnorm=1.0), "global_clipnorm"),
    (bare("Adam", use_ema=True), "use_ema"),
    (bare("Adam", gradient_accumulation_steps=2), "gradient_accumulation_steps"),
    (bare("Adam", loss_scale_factor=128.0), "loss_scale_factor"),
    (bare("Adam", jit_compile=True), "jit_compile"),
    (bare("AdamW", weight_decay=None), "weight_decay"),
    (bare("SGD", momentum=-0.5), "momentum"),
    (bare("SGD", momentum=1), "momentum"),
    (bare("Adagrad", initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (bare("Adam", learning_rate=schedule("PolynomialDecay", initial_learning_rate=0.1,
                                         decay_steps=10)), "class_name"),
    (bare("Adam", learning_rate=schedule("ExponentialDecay", initial_learning_rate=0.1,
                                         decay_steps=0, decay_rate=0.9)), "decay_steps"),
    (bare("Adam", learning_rate=schedule("PiecewiseConstantDecay", boundaries=[1, 2],
                                         values=[0.1, 0.2])), "values"),
    (bare("Adam", learning_rate={**schedule("CosineDecay", initial_learning_rate=0.1,
                                            decay_steps=10), "module": "os"}), "module"),
    ({"class_name": "Adam", "config": {}, "registered_name": "my_package>Adam"},
     "registered_name"),
    ({"module": "my_package.optimizers", "class_name": "Adam", "config": {}}, "module"),
    ({"class_name": "Adam\n\x1b[31mred", "config": {}}, "class_name"),
    ([1, 2, 3], "optimizer"),
])
def test_bad_configs_are_refused_in_one_line(config, field):
    with pytest.raises(UserError, match=field) as err:
        from_keras(config, [torch.zeros(1)])
    message = str(err.value)
    assert "\n" not in message and "\x1b" not in message, message


def test_what_keras_writes_for_the_books_model_is_accepted():
    """compile(optimizer="adam") saves Keras's full Adam config, defaults spelled out."""
    config = keras.optimizers.serialize(keras.optimizers.get("adam"))
    assert type(from_keras(config, [torch.zeros(1)])) is KerasAdam
    assert type(from_keras("adam", [torch.zeros(1)])) is KerasAdam
