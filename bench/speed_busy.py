"""Speed on a quiet and on a busy machine: PyTorch's thread policies and Keras, side by side.

    python -m bench.speed_busy --out bench/results/speed_busy.json [--limit 6000] [--runs 3]

Each configuration runs in a fresh interpreter: the book's model and recipe (batch 32) for one
epoch on the first `--limit` training images (cold, as a `torch_impl.train --limit N` run sees
its first epoch; Keras's includes tracing its graph), then inference over the 10,000 test images
at batch 32 and 64 (PyTorch: the trainer's evaluation forward in inference mode; Keras:
`predict`), a warm-up on 1,000 images, then `--passes` timed passes. Configurations:

- torch policy:    what `python -m torch_impl.train` runs (`--threads auto`): the worker calls
                   `prepare_cli_env` before it imports torch (the count from the load at its
                   start), and its steps go through `torch_impl.device.thread_tuner`, which
                   follows load that comes or goes while it trains;
- torch passive:   OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once), one thread per core;
- torch old:       the old default: libgomp's spinning wait, one thread per core;
- torch threads 1: `--threads 1` (torch.set_num_threads(1)), libgomp's default wait;
- keras:           keras_ref's model, TensorFlow's defaults.

Conditions: quiet (nothing of ours competing); busy — one competing process of our own, a
Python busy loop (`while True: pass`) started before the block and killed by its pid after it
(in a `finally`); busy mid-run — the same loop started by the worker itself after
HOG_AFTER_STEPS training steps (a quarter of a 6,000-image epoch: load that arrives once the run
has chosen its threads) and killed by its pid when the worker ends. Runs are interleaved: each
round runs every configuration in each condition, the order rotated from round to round; medians
over the rounds. The load average is recorded before every run.

The machine's own bound: a one-thread kernel (numpy matmuls, BLAS and OpenMP pinned to one
thread, a fixed amount of work) runs quiet and busy in each round. A process that needs one core
cannot do better beside the busy loop than this kernel does: on a 2-vCPU virtual machine its
busy/quiet ratio is what the host gives a second runnable thread, not something a thread policy
can change. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.speed import cpu_model, worker_result

BATCH_SIZE = 32
INFERENCE_BATCH_SIZES = (32, 64)
TEST_IMAGES, WARM_UP_IMAGES = 10_000, 1_000
EPOCHS = 1  # cold, as a `torch_impl.train --limit N` run sees its first epoch
CONFIGS = ("torch policy", "torch passive", "torch old", "torch threads 1", "keras")
CONDITIONS = ("quiet", "busy", "busy mid-run")
KERNEL_CONDITIONS = ("quiet", "busy")
HOG_AFTER_STEPS = 47  # a quarter of 6,000 images at batch 32: after the tuner's first probe
KERNEL_SIZE, KERNEL_MATMULS, KERNEL_PASSES = 256, 400, 3
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
# libgomp's wait settings: the bench clears the caller's, so that each configuration is its own.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
BUSY_LOOP = "while True: pass"


def _time_passes(run_pass, passes: int) -> list[float]:
    """Seconds of `passes` calls run_pass(TEST_IMAGES), after a warm-up on WARM_UP_IMAGES."""
    run_pass(WARM_UP_IMAGES)
    seconds = []
    for _ in range(passes):
        start = time.perf_counter()
        run_pass(TEST_IMAGES)
        seconds.append(time.perf_counter() - start)
    return seconds


def torch_worker(args: argparse.Namespace) -> dict:
    if args.policy:  # before torch loads libgomp, as the command lines do
        from fashion_cnn.threads import prepare_cli_env

        prepare_cli_env()
    import torch

    from torch_impl.data import load_book_data
    from torch_impl.device import numerics, preferred_memory_format, seed_everything, thread_tuner
    from torch_impl.epoch import make_train_step, train_epoch
    from torch_impl.model import BookCNN, PoolFirst
    from torch_impl.optim import KerasAdam

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_book_data()
    device = torch.device("cpu")
    fmt = preferred_memory_format(device)
    with numerics(device):
        seed_everything(42)
        shuffle = torch.Generator().manual_seed(42)
        model = BookCNN(init="keras").to(memory_format=fmt)
        train_x = data.train_x[: args.limit].contiguous(memory_format=fmt)
        train_y = data.train_y[: args.limit]
        step = make_train_step(PoolFirst(model), KerasAdam(model.parameters()))
        tuner = thread_tuner(args.threads, device, False) if args.policy else None
        step = step if tuner is None else tuner.wrap(step)
        hog = HogAfter(args.hog_after)
        step = hog.wrap(step)
        epochs = []
        try:
            for _ in range(EPOCHS):
                start = time.perf_counter()
                train_epoch(model, step, train_x, train_y, BATCH_SIZE, shuffle)
                epochs.append(time.perf_counter() - start)
            model.eval()
            forward, test_x = PoolFirst(model), data.test_x.contiguous(memory_format=fmt)

            def one_pass(batch_size, n):
                with torch.inference_mode():
                    for i in range(0, n, batch_size):
                        forward(test_x[i : i + batch_size])

            inference = {str(bs): _time_passes(lambda n, bs=bs: one_pass(bs, n), args.passes)
                         for bs in INFERENCE_BATCH_SIZES}
        finally:
            hog.stop()
    return {"epoch_seconds": epochs, "inference_seconds": inference,
            "threads": torch.get_num_threads(), "hog_started_at_step": hog.started_at,
            "thread_tuning": None if tuner is None else tuner.report(),
            "wait_env": {k: os.environ[k] for k in WAIT_SETTINGS if k in os.environ},
            "framework": f"torch {torch.__version__}"}


def keras_worker(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ref.data import load_book_data
    from keras_ref.model import build_model
    from keras_ref.train import EpochTimer

    keras.utils.set_random_seed(42)
    train_scaled, _, train_target, _, test_scaled, _ = load_book_data()
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer, hog = EpochTimer(), HogAfter(args.hog_after)

    class StartHog(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            hog.step()

    try:
        model.fit(train_scaled[: args.limit], train_target[: args.limit], epochs=EPOCHS,
                  batch_size=BATCH_SIZE, verbose=0, callbacks=[timer, StartHog()])
        test32 = test_scaled.astype(np.float32)
        inference = {str(bs): _time_passes(
            lambda n, bs=bs: model.predict(test32[:n], batch_size=bs, verbose=0),
            args.passes)
            for bs in INFERENCE_BATCH_SIZES}
    finally:
        hog.stop()
    return {"epoch_seconds": timer.seconds, "inference_seconds": inference,
            "hog_started_at_step": hog.started_at,
            "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}"}


def kernel_worker(args: argparse.Namespace) -> dict:
    """The one-thread kernel: KERNEL_PASSES timed passes of KERNEL_MATMULS float32 matmuls."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((KERNEL_SIZE, KERNEL_SIZE), dtype=np.float32)
    b = a @ a  # warm-up: BLAS loaded, caches filled
    seconds = []
    for _ in range(KERNEL_PASSES):
        start = time.perf_counter()
        for _ in range(KERNEL_MATMULS):
            b = a @ a
        seconds.append(time.perf_counter() - start)
    return {"kernel_seconds": seconds, "checksum": float(b[0, 0])}


class HogAfter:
    """The busy mid-run condition's competitor: a busy loop started when `step()` has been
    called `after` times (0: never), killed by its pid in `stop()`."""

    def __init__(self, after: int) -> None:
        self.after, self.steps = after, 0
        self.started_at: int | None = None
        self.proc: subprocess.Popen | None = None

    def step(self) -> None:
        self.steps += 1
        if self.after and self.proc is None and self.steps > self.after:
            self.proc, self.started_at = start_busy_loop(), self.steps - 1

    def wrap(self, step):
        if not self.after:
            return step

        def counted(*args, **kwargs):
            self.step()
            return step(*args, **kwargs)

        return counted

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def config_env(name: str) -> tuple[dict[str, str], list[str]]:
    """(environment, extra worker arguments) of one configuration."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS + ("OMP_NUM_THREADS",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if name == "torch policy":  # the worker decides, as the command line does at its start
        return env, ["--worker", "torch", "--policy"]
    if name == "one-thread kernel":
        return {**env, **ONE_THREAD}, ["--worker", "kernel"]
    if name == "torch passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if name == "torch threads 1":
        return env, ["--worker", "torch", "--threads", "1"]
    return env, ["--worker", "keras" if name == "keras" else "torch"]


def run_one(name: str, args: argparse.Namespace, hog_after: int = 0) -> dict:
    env, extra = config_env(name)
    cmd = [sys.executable, "-m", "bench.speed_busy", *extra, "--limit", str(args.limit),
           "--passes", str(args.passes), "--hog-after", str(hog_after)]
    load = os.getloadavg()
    result = worker_result(cmd, env, f"bench.speed_busy: the {name} worker")
    result["load_average_before"] = load
    return result


def start_busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP])


def stop(proc: subprocess.Popen) -> None:
    proc.kill()  # by its pid: only the process this bench started
    proc.wait()


def run_rounds(args: argparse.Namespace) -> dict:
    """({condition: {config: [run, …]}}, {condition: [kernel run, …]}): every configuration in
    every condition, and the kernel quiet and busy, in each round."""
    runs = {c: {name: [] for name in CONFIGS} for c in CONDITIONS}
    kernel = {c: [] for c in KERNEL_CONDITIONS}
    for r in range(args.runs):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
        for condition in CONDITIONS:
            hog = start_busy_loop() if condition == "busy" else None
            hog_after = HOG_AFTER_STEPS if condition == "busy mid-run" else 0
            try:
                if condition in KERNEL_CONDITIONS:
                    kernel[condition].append(run_one("one-thread kernel", args))
                for name in order:
                    print(f"round {r + 1}/{args.runs}, {condition}: {name} "
                          f"(load {os.getloadavg()[0]:.2f}) …", flush=True)
                    runs[condition][name].append(run_one(name, args, hog_after))
            finally:
                if hog is not None:
                    stop(hog)
    return runs, kernel


def medians(runs: list[dict], test_images: int = TEST_IMAGES) -> dict:
    out = {f"epoch_{i + 1}_seconds": statistics.median(r["epoch_seconds"][i] for r in runs)
           for i in range(EPOCHS)}
    for bs in map(str, INFERENCE_BATCH_SIZES):
        out[f"inference_batch_{bs}_images_per_second"] = test_images / statistics.median(
            statistics.median(r["inference_seconds"][bs]) for r in runs)
    out["load_average_1min"] = [r["load_average_before"][0] for r in runs]
    return out


def markdown(summary: dict, ratios: dict, kernel: dict) -> str:
    """One row per configuration: the epoch and inference in each condition, and the ratios."""
    epoch = " | ".join(f"epoch, {c} (s)" for c in CONDITIONS)
    slow = " | ".join(f"{c} ÷ quiet" for c in CONDITIONS[1:])
    infer = " | ".join(f"inference b32, {c} (images/s)" for c in CONDITIONS)
    lines = [f"| | {epoch} | {slow} | {infer} |",
             "|---" + "|---:" * (2 * len(CONDITIONS) + len(CONDITIONS) - 1) + "|"]
    for n in CONFIGS:
        cells = [f"{summary[c][n]['epoch_1_seconds']:.2f}" for c in CONDITIONS]
        cells += [f"{ratios[f'{c} / quiet, epoch 1'][n]:.2f}×" for c in CONDITIONS[1:]]
        cells += [f"{summary[c][n]['inference_batch_32_images_per_second']:,.0f}"
                  for c in CONDITIONS]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append(f"\nOne-thread kernel (the machine's bound): {kernel['quiet']:.2f} s quiet, "
                 f"{kernel['busy']:.2f} s busy, {ratios['one-thread kernel, busy / quiet']:.2f}×.")
    return "\n".join(lines)


def ratios_of(summary: dict, kernel: dict) -> dict:
    """The figures the issue asks for: each busy condition against quiet, PyTorch against Keras,
    the policy against the fixed settings, and the one-thread kernel's bound."""
    def epoch(c: str, n: str) -> float:
        return summary[c][n]["epoch_1_seconds"]

    out = {c: {"torch policy / keras, epoch 1": epoch(c, "torch policy") / epoch(c, "keras"),
               "torch policy / keras, inference batch 32": (
                   summary[c]["torch policy"]["inference_batch_32_images_per_second"]
                   / summary[c]["keras"]["inference_batch_32_images_per_second"]),
               "torch policy / torch old, epoch 1": (
                   epoch(c, "torch policy") / epoch(c, "torch old")),
               "torch policy / torch threads 1, epoch 1": (
                   epoch(c, "torch policy") / epoch(c, "torch threads 1"))}
           for c in CONDITIONS}
    for c in CONDITIONS[1:]:
        out[f"{c} / quiet, epoch 1"] = {n: epoch(c, n) / epoch("quiet", n) for n in CONFIGS}
    out["one-thread kernel, busy / quiet"] = kernel["busy"] / kernel["quiet"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed_busy",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/speed_busy.json",
                   help="JSON report (default: bench/results/speed_busy.json)")
    p.add_argument("--limit", type=int, default=6000,
                   help="training images per epoch (default: 6000)")
    p.add_argument("--runs", type=int, default=3,
                   help="rounds; every configuration runs once per round and condition "
                        "(default: 3)")
    p.add_argument("--passes", type=int, default=3,
                   help="timed inference passes per run, after a warm-up (default: 3)")
    p.add_argument("--worker", choices=("torch", "keras", "kernel"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--policy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hog-after", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # inside a subprocess: one JSON line on stdout
        worker = {"torch": torch_worker, "keras": keras_worker, "kernel": kernel_worker}
        print(json.dumps(worker[args.worker](args)))
        return 0

    started = os.getloadavg()
    runs, kernel_runs = run_rounds(args)
    summary = {c: {n: medians(runs[c][n]) for n in CONFIGS} for c in CONDITIONS}
    kernel = {c: statistics.median(statistics.median(r["kernel_seconds"]) for r in kernel_runs[c])
              for c in KERNEL_CONDITIONS}
    ratios = ratios_of(summary, kernel)
    report = {"command": "python -m bench.speed_busy " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "affinity": len(os.sched_getaffinity(0))},
              "settings": {"limit": args.limit, "runs": args.runs, "passes": args.passes,
                           "batch_size": BATCH_SIZE, "busy_loop": BUSY_LOOP},
              "load_average_start": started, "load_average_end": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "summary": summary, "one_thread_kernel_seconds": kernel, "ratios": ratios,
              "runs": runs, "kernel_runs": kernel_runs}
    report["markdown"] = markdown(summary, ratios, kernel)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(report["markdown"])
    print(json.dumps(ratios, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
