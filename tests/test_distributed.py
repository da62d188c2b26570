"""torch_impl.distributed: the book's recipe under DistributedDataParallel equals one process.

Two gloo ranks on this CPU (`torch.multiprocessing.spawn`, rendezvous through a file in
tmp_path), compared with one process running the same step and epoch (torch_impl.epoch, whose
world defaults to one process), computed in the test:
  - step by step, as parity/tests/test_training_parity.py does: each of 10 steps taken from the
    single process's weights and Adam state on the same real global batch (dropout p = 0) —
    the last batch a partial one of 9 images, split 5 + 4, which is where a plain DDP mean would
    be wrong. Two things are asserted separately, each with the bound it can keep on any CPU:
    the all-reduced gradients equal the single process's up to float32 summation order (a bound
    relative to each gradient's scale), and the optimizer, fed the single process's gradients,
    lands on its weights bit for bit;
  - free runs (10 steps, one epoch) are reported, not asserted: they drift by rounding (only the
    epoch's mean loss is bounded, loosely, against a wrong scale);
  - validation metrics: 12,000 images over 2 ranks in batches of 64 (6,000 is not a multiple of
    64), every image counted once;
and, under torchrun itself: a short real run writes the single-process run's files, a rank
killed with SIGTERM leaves a resumable last.pt, and --resume continues the run exactly.

Why not compare the weights after the whole step within an absolute bound: Adam divides each
gradient element by its own magnitude (Δw ≈ lr·g/(|g| + ε)), so where a gradient element is a sum
of near-cancelling terms, a change in the last bits of that sum — another BLAS kernel summing in
another order, MKL's AVX-512 sgemm against its AVX2 one — moves the update by a large fraction of
lr. Such a bound holds on one machine's BLAS only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from parity.verify.compare import sum_rtol, ulp_distance
from torch_impl import distributed as ddp
from torch_impl.distributed import World, shard, world_from_env
from torch_impl.epoch import make_train_step, train_epoch
from torch_impl.evaluate import evaluate
from torch_impl.model import BookCNN, PoolFirst
from torch_impl.optim import KerasAdam

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
WORLD = 2
STEPS = 10
BATCH = 32
LAST_BATCH = 9  # the 10th global batch: partial and odd (5 + 4 images)
EPOCH_LIMIT = 1001  # the free epoch: 31 batches of 32 and one of 9
# The two sides compute the same float32 sums in other orders (16 + 16 images, then the ranks'
# sum, against 32 at once; other sgemm blockings for 16 rows than for 32). The longest sum in a
# step is conv1's kernel gradient: 32 images × 28 × 28 positions. Gradients: within
# sum_rtol(N_SUM) (Higham's bound for two orders of one float32 sum), relative to each tensor's
# largest gradient.
N_SUM = BATCH * 28 * 28
GRAD_RTOL = sum_rtol(N_SUM)
# The step's loss (≈ 2.3): the mean of 32 cross-entropies of logits made by the same sums, and
# log-softmax moves by at most 2·max|Δlogit|: the same relative bound.
LOSS_RTOL = sum_rtol(N_SUM)
# Validation loss: a mean of 12,000 float32 terms summed in another order (float32 per rank,
# float64 across ranks, against one float32 sum).
VAL_LOSS_RTOL = sum_rtol(12000)
CUDA = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


# --- the plumbing, without processes --------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 9, 32, 12000, 12001])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shards_cover_every_item_once(n, size):
    items = torch.arange(n)
    parts = [shard(items, World(rank=r, size=size, distributed=True)) for r in range(size)]
    assert torch.equal(torch.cat(parts), items), "shards are not disjoint, in order, complete"
    assert max(map(len, parts)) - min(map(len, parts)) <= 1, [len(p) for p in parts]


def test_world_from_env():
    assert world_from_env({}) == World()
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert world_from_env(env) == World(rank=3, size=4, local_rank=1, distributed=True)
    from fashion_cnn.errors import UserError

    with pytest.raises(UserError, match="no world"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_dropout_streams_differ_per_rank_and_epoch():
    draws = set()
    for rank in (1, 2):
        for epoch in (0, 1):
            ddp.reseed_dropout(World(rank=rank, size=3, distributed=True), 42, epoch)
            draws.add(torch.rand(1).item())
    assert len(draws) == 4


# --- two gloo ranks against one process ---------------------------------------------------------


def _clone(state):
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_clone(v) for v in state)
    return state


def _weights(model: nn.Module) -> dict:
    return {k: v.cpu() for k, v in _clone(model.state_dict()).items()}


def _grads(model: nn.Module) -> dict:
    return {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters()}


def _model(weights: dict, device) -> BookCNN:
    model = BookCNN().to(device)
    model.load_state_dict(weights)
    model.dropout.p = 0.0  # dropout off: the ranks' masks could never match one process's
    return model


def _rank_worker(rank: int, size: int, init_file: str, inputs: str, outputs: str, device: str):
    """One rank: the step-by-step steps, a free 10-step run, a free epoch, a validation pass."""
    from torch_impl.device import numerics

    torch.set_num_threads(1)
    world = World(rank=rank, size=size, local_rank=rank, distributed=True)
    data = torch.load(inputs, weights_only=True)
    with ddp.session(world, device, init_method=f"file://{init_file}") as dev, numerics(dev):
        model = _model(data["weights"][0], dev)
        optimizer = KerasAdam(model.parameters())
        step = make_train_step(ddp.wrap(PoolFirst(model), dev, world), optimizer, world)
        out: dict = {"losses": [], "grads": [], "weights": [], "optimizer_alone": []}
        for t, (x, y) in enumerate(data["batches"]):
            model.load_state_dict(data["weights"][t])
            # a copy: load_state_dict adopts CPU tensors as they are, and the step updates them
            optimizer.load_state_dict(_clone(data["optimizer"][t]))
            mine = shard(torch.arange(len(x)), world)
            loss, _ = step(x[mine].to(dev), y[mine].to(dev), len(x))
            (total,) = ddp.all_reduce_sums(loss, world=world)
            out["losses"].append(total / size)  # the ranks' mean: the global batch's mean loss
            out["grads"].append(_grads(model))  # all-reduced: DDP leaves them in .grad
            out["weights"].append(_weights(model))
            # The optimizer alone: the same step from the same state, fed the single process's
            # gradients instead of the all-reduced ones.
            model.load_state_dict(data["weights"][t])
            optimizer.load_state_dict(_clone(data["optimizer"][t]))
            for name, param in model.named_parameters():
                param.grad = data["grads"][t][name].to(dev).clone()
            optimizer.step()
            out["optimizer_alone"].append(_weights(model))

        model.load_state_dict(data["weights"][0])  # free: 10 steps, Adam's state carried
        optimizer = KerasAdam(model.parameters())
        step = make_train_step(ddp.wrap(PoolFirst(model), dev, world), optimizer, world)
        for x, y in data["batches"]:
            mine = shard(torch.arange(len(x)), world)
            step(x[mine].to(dev), y[mine].to(dev), len(x))
        out["free_steps"] = _weights(model)

        model.load_state_dict(data["weights"][0])  # free: an epoch of the trainer's own loop
        optimizer = KerasAdam(model.parameters())
        step = make_train_step(ddp.wrap(PoolFirst(model), dev, world), optimizer, world)
        shuffle = torch.Generator().manual_seed(42)
        x, y = data["epoch_x"].to(dev), data["epoch_y"].to(dev)
        out["epoch"] = train_epoch(model, step, x, y, BATCH, shuffle, world)
        out["free_epoch"] = _weights(model)

        model.load_state_dict(data["weights"][0])
        val = ddp.evaluate(PoolFirst(model), data["val_x"].to(dev), data["val_y"].to(dev), world)
        out["val"] = (val.loss, val.correct, val.total)
    torch.save(out, f"{outputs}.{rank}")


def _reference(book_data, device: torch.device) -> dict:
    """The single-process side, with the trainer's own step and epoch functions."""
    torch.manual_seed(42)
    start = {k: v.to(device) for k, v in BookCNN(init="keras").state_dict().items()}
    order = torch.randperm(len(book_data.train_x), generator=torch.Generator().manual_seed(8))
    sizes = [BATCH] * (STEPS - 1) + [LAST_BATCH]
    picks = order[: sum(sizes)].split(sizes)
    batches = [(book_data.train_x[i], book_data.train_y[i]) for i in picks]

    model = _model(start, device)
    optimizer = KerasAdam(model.parameters())
    step = make_train_step(PoolFirst(model), optimizer)
    ref: dict = {"weights": [], "optimizer": [], "losses": [], "grads": []}
    for x, y in batches:
        ref["weights"].append(_weights(model))
        ref["optimizer"].append(_clone(optimizer.state_dict()))
        loss, _ = step(x.to(device), y.to(device), len(x))
        ref["losses"].append(loss.item())
        ref["grads"].append(_grads(model))
    ref["weights"].append(_weights(model))
    ref["batches"] = batches

    model = _model(start, device)
    step = make_train_step(PoolFirst(model), KerasAdam(model.parameters()))
    shuffle = torch.Generator().manual_seed(42)
    x = book_data.train_x[:EPOCH_LIMIT].to(device)
    y = book_data.train_y[:EPOCH_LIMIT].to(device)
    ref["epoch"] = train_epoch(model, step, x, y, BATCH, shuffle)
    ref["free_epoch"] = _weights(model)
    val = evaluate(PoolFirst(_model(start, device)), book_data.val_x.to(device),
                   book_data.val_y.to(device))
    ref["val"] = (val.loss, val.correct, val.total)
    return ref


def _spawn_ranks(book_data, tmp_path: Path, device: str, size: int) -> tuple[dict, list[dict]]:
    from torch_impl.device import numerics

    dev = torch.device(device)
    with numerics(dev):
        ref = _reference(book_data, dev)
    inputs = tmp_path / "inputs.pt"
    torch.save({"weights": ref["weights"], "optimizer": [_cpu(s) for s in ref["optimizer"]],
                "grads": ref["grads"], "batches": ref["batches"],
                "epoch_x": book_data.train_x[:EPOCH_LIMIT],
                "epoch_y": book_data.train_y[:EPOCH_LIMIT], "val_x": book_data.val_x,
                "val_y": book_data.val_y}, inputs)
    outputs = tmp_path / "rank"
    start = time.perf_counter()
    mp.spawn(_rank_worker, args=(size, str(tmp_path / "rendezvous"), str(inputs), str(outputs),
                                 device), nprocs=size, join=True)
    print(f"\n{size} ranks on {device}: {time.perf_counter() - start:.1f}s")
    ranks = [torch.load(f"{outputs}.{r}", weights_only=True) for r in range(size)]
    return ref, ranks


def _cpu(state):
    return {"state": {i: {k: v.cpu() for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    return max(((a[k] - b[k]).abs().max().item(), k) for k in a)


@pytest.fixture(scope="module")
def two_ranks(book_data, tmp_path_factory):
    return _spawn_ranks(book_data, tmp_path_factory.mktemp("ddp"), "cpu", WORLD)


def _relative_diff(a: dict, b: dict) -> tuple[float, str]:
    """The worst tensor's max |a − b| relative to b's largest entry."""
    return max(
        ((a[k] - b[k]).abs().max().item() / max(b[k].abs().max().item(), 1e-30), k) for k in b
    )


def _check_steps(ref: dict, ranks: list[dict]) -> None:
    rank0 = ranks[0]
    worst_grad = worst_loss = 0.0
    for t in range(STEPS):
        loss, want = rank0["losses"][t], ref["losses"][t]
        assert abs(loss - want) <= LOSS_RTOL * abs(want), (
            f"step {t + 1}: loss {loss} vs one process's {want} (rtol {LOSS_RTOL:.1e})"
        )
        worst_loss = max(worst_loss, abs(loss - want) / abs(want))
        diff, key = _relative_diff(rank0["grads"][t], ref["grads"][t])
        assert diff <= GRAD_RTOL, (
            f"step {t + 1}: the gradient of {key} is {diff:.2e} off, relative to its largest "
            f"entry (bound {GRAD_RTOL:.1e})"
        )
        worst_grad = max(worst_grad, diff)
        alone = rank0["optimizer_alone"][t]
        for key, value in ref["weights"][t + 1].items():
            ulps = ulp_distance(alone[key].numpy(), value.numpy())
            assert ulps == 0, (
                f"step {t + 1}: fed the single process's gradients, the rank's optimizer puts "
                f"{key} {ulps} float32 steps away from the single process's"
            )
        for r, other in enumerate(ranks[1:], 1):  # DDP keeps the replicas identical
            for what in ("weights", "grads", "optimizer_alone"):
                same, key = _max_diff(other[what][t], rank0[what][t])
                assert same == 0, f"step {t + 1}: rank {r}'s {what} {key} differs by {same}"
    steps, key = _max_diff(rank0["weights"][STEPS - 1], ref["weights"][STEPS])
    print(f"\n{STEPS} steps from the same state: gradients within {worst_grad:.2e} of their "
          f"scale (bound {GRAD_RTOL:.1e}), losses within {worst_loss:.2e} (bound "
          f"{LOSS_RTOL:.1e}), the optimizer bit for bit; the whole last step's weights "
          f"{steps:.2e} apart ({key}), reported")


@pytest.mark.slow
def test_each_step_equals_one_process(two_ranks):
    _check_steps(*two_ranks)


@pytest.mark.slow
def test_free_runs_drift_report(two_ranks):
    """Reported, not asserted: independent runs drift by rounding (parity/tests explains why)."""
    ref, ranks = two_ranks
    steps, key = _max_diff(ranks[0]["free_steps"], ref["weights"][STEPS])
    epoch, key_e = _max_diff(ranks[0]["free_epoch"], ref["free_epoch"])
    print(f"\nfree runs, 2 ranks vs 1 process: after {STEPS} steps max |diff| {steps:.2e} ({key}); "
          f"after an epoch of {EPOCH_LIMIT} images max |diff| {epoch:.2e} ({key_e}); "
          f"epoch (loss, accuracy) {ranks[0]['epoch']} vs {ref['epoch']}")
    # Not the drift: every rank reports the same all-reduced epoch, over whole images.
    assert ranks[0]["epoch"] == ranks[1]["epoch"], "the ranks report different epoch metrics"
    # Nor is a scale: drift moves the epoch's mean loss in its last digits (≈1e-7 here), while a
    # rank's loss counted without undoing DDP's averaging would read WORLD times too much.
    loss, want = ranks[0]["epoch"][0], ref["epoch"][0]
    assert abs(loss - want) <= 1e-2 * want, f"epoch loss {loss} vs one process's {want}"
    count = ranks[0]["epoch"][1] * EPOCH_LIMIT
    # accuracy·n recovers the count to within n·2^-53 in float64 (n = 1,001)
    assert abs(count - round(count)) < 1e-6, f"{count} correct images is not a count"


@pytest.mark.slow
def test_validation_counts_each_image_once(two_ranks, book_data):
    ref, ranks = two_ranks
    assert (len(book_data.val_x) // WORLD) % 64 != 0, "the shards must end in a partial batch"
    for r, rank in enumerate(ranks):
        loss, correct, total = rank["val"]
        assert total == len(book_data.val_y) == 12000, f"rank {r}: {total} images"
        assert correct == ref["val"][1], f"rank {r}: {correct} correct vs {ref['val'][1]}"
        assert loss == pytest.approx(ref["val"][0], rel=VAL_LOSS_RTOL), f"rank {r}"


@pytest.mark.slow
@pytest.mark.parametrize("_", [pytest.param("nccl", marks=CUDA)])
def test_each_step_equals_one_process_cuda(_, book_data, tmp_path):
    """The same on GPUs with nccl: one rank per GPU (2, or 1 where the machine has one)."""
    size = min(WORLD, torch.cuda.device_count())
    ref, ranks = _spawn_ranks(book_data, tmp_path, "cuda", size)
    _check_steps(ref, ranks)
    assert ranks[0]["val"][1] == ref["val"][1] and ranks[0]["val"][2] == 12000


# --- torchrun itself ------------------------------------------------------------------------------


def _torchrun(out: Path, data_dir, *args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={WORLD}", "-m", "torch_impl.train",
           "--device", "cpu", "--threads", "1", "--data-dir", str(data_dir), "--out", str(out),
           *RUN_ARGS, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **popen)


RUN_ARGS = ["--limit", "512", "--seed", "7"]
FILES = ["best-cnn-model.pt", "history.json", "history.png", "last.pt"]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("torchrun")
    proc = _torchrun(out, data_dir, "--epochs", "2")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out, stdout


@pytest.mark.slow
def test_torchrun_writes_the_single_process_files(torchrun_run, book_data, tmp_path):
    from torch_impl import train as train_mod

    out, stdout = torchrun_run
    single = tmp_path / "single"
    args = train_mod.build_parser().parse_args(["--device", "cpu", "--out", str(single),
                                                 *RUN_ARGS, "--epochs", "2"])
    train_mod.train(train_mod.config_from_args(args), data=book_data)
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in single.iterdir() if not p.name.startswith("."))
    assert names == FILES, names
    assert stdout.count("Epoch 1/2") == 1, "only rank 0 prints:\n" + stdout

    summary = json.loads((out / "history.json").read_text())
    assert summary["world_size"] == WORLD and summary["epochs_run"] == 2
    assert summary.keys() == json.loads((single / "history.json").read_text()).keys()
    model = BookCNN()
    model.load_state_dict(torch.load(out / "best-cnn-model.pt", weights_only=True))  # strict
    assert torch.load(out / "last.pt", weights_only=True)["config"]["world_size"] == WORLD

    keras_file = tmp_path / "best.keras"
    port = subprocess.run([sys.executable, "-m", "parity.port", str(out / "best-cnn-model.pt"),
                           str(keras_file)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    assert port.returncode == 0, port.stderr[-2000:]
    assert keras_file.stat().st_size > 0


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker of `rank` (from /proc: its children and their RANK)."""
    children = []
    for task in Path(f"/proc/{torchrun_pid}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for pid in map(int, children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_killed_rank_leaves_a_resumable_last_pt(torchrun_run, data_dir, tmp_path, capsys):
    from torch_impl.resume import load_last
    from torch_impl.train import main

    done, _ = torchrun_run
    out = tmp_path / "killed"
    proc = _torchrun(out, data_dir, "--epochs", "3")
    last = out / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None and last.exists(), "no rank 1 running after the first epoch"
    os.kill(pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0, "torchrun reported success for a killed rank"
    assert "FAILED" in stderr or "exitcode" in stderr, stderr[-2000:]

    epochs = load_last(last)["run"]["epoch"]  # whole and valid: atomic_write
    assert 1 <= epochs < 3, f"last.pt after {epochs} epochs: the kill came too late"
    resumed = _torchrun(out, data_dir, "--epochs", "3", "--resume")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert f"resuming {last} after epoch {epochs}" in stdout, stdout
    history = json.loads((out / "history.json").read_text())["history"]
    uninterrupted = json.loads((done / "history.json").read_text())["history"]
    assert len(history["loss"]) == 3
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):  # the same run, exactly
        assert history[key][:2] == uninterrupted[key], f"history[{key!r}] differs after resume"

    # Resuming with another world size is refused in one line, last.pt untouched.
    before = last.read_bytes()
    assert main(["--device", "cpu", "--out", str(out), "--data-dir", str(data_dir), *RUN_ARGS,
                 "--epochs", "4", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained by 2 process(es), not 1" in err[0], err
    assert last.read_bytes() == before
