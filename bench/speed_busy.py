"""Speed on a quiet and on a busy machine: PyTorch's thread policies and Keras, side by side.

    python -m bench.speed_busy --out bench/results/speed_busy.json [--limit 6000] [--runs 3]

Each configuration runs in a fresh interpreter: the book's model and recipe (batch 32) for one
epoch on the first `--limit` training images (cold, as a `torch_impl.train --limit N` run sees
its first epoch; Keras's includes tracing its graph), then inference over the 10,000 test images
at batch 32 and 64 (PyTorch: the trainer's evaluation forward in inference mode; Keras:
`predict`), a warm-up on 1,000 images, then `--passes` timed passes. Configurations:

- torch policy:    the command lines' environment (`fashion_cnn.threads.openmp_env`, decided
                   when the run starts: `--threads auto`) — what `python -m torch_impl.train`
                   now runs;
- torch passive:   OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once), one thread per core;
- torch old:       the old default: libgomp's spinning wait, one thread per core;
- torch threads 1: `--threads 1` (torch.set_num_threads(1)), libgomp's default wait;
- keras:           keras_ref's model, TensorFlow's defaults.

Conditions: quiet (nothing of ours competing), and busy — one competing process of our own, a
Python busy loop (`while True: pass`) started before the block and killed by its pid after it
(in a `finally`). Runs are interleaved: each round runs every configuration quiet, then every
configuration busy, the order rotated from round to round; medians over the rounds. The load
average is recorded before every run. A benchmark, not a test.
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
from fashion_cnn.threads import openmp_env

BATCH_SIZE = 32
INFERENCE_BATCH_SIZES = (32, 64)
TEST_IMAGES, WARM_UP_IMAGES = 10_000, 1_000
EPOCHS = 1  # cold, as a `torch_impl.train --limit N` run sees its first epoch
CONFIGS = ("torch policy", "torch passive", "torch old", "torch threads 1", "keras")
CONDITIONS = ("quiet", "busy")
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
    import torch

    from torch_impl.data import load_book_data
    from torch_impl.device import numerics, preferred_memory_format, seed_everything
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
        epochs = []
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
    return {"epoch_seconds": epochs, "inference_seconds": inference,
            "threads": torch.get_num_threads(),
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
    timer = EpochTimer()
    model.fit(train_scaled[: args.limit], train_target[: args.limit], epochs=EPOCHS,
              batch_size=BATCH_SIZE, verbose=0, callbacks=[timer])
    test32 = test_scaled.astype(np.float32)
    inference = {str(bs): _time_passes(
        lambda n, bs=bs: model.predict(test32[:n], batch_size=bs, verbose=0),
        args.passes)
        for bs in INFERENCE_BATCH_SIZES}
    return {"epoch_seconds": timer.seconds, "inference_seconds": inference,
            "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}"}


def config_env(name: str) -> tuple[dict[str, str], list[str]]:
    """(environment, extra worker arguments) of one configuration."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS + ("OMP_NUM_THREADS",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if name == "torch policy":
        env.update(openmp_env(env))  # decided now, as the command line decides at its start
    if name == "torch passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if name == "torch threads 1":
        return env, ["--worker", "torch", "--threads", "1"]
    return env, ["--worker", "keras" if name == "keras" else "torch"]


def run_one(name: str, args: argparse.Namespace) -> dict:
    env, extra = config_env(name)
    cmd = [sys.executable, "-m", "bench.speed_busy", *extra, "--limit", str(args.limit),
           "--passes", str(args.passes)]
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
    """{condition: {config: [run, …]}}, every configuration in both conditions in each round."""
    runs = {c: {name: [] for name in CONFIGS} for c in CONDITIONS}
    for r in range(args.runs):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
        for condition in CONDITIONS:
            hog = start_busy_loop() if condition == "busy" else None
            try:
                for name in order:
                    print(f"round {r + 1}/{args.runs}, {condition}: {name} "
                          f"(load {os.getloadavg()[0]:.2f}) …", flush=True)
                    runs[condition][name].append(run_one(name, args))
            finally:
                if hog is not None:
                    stop(hog)
    return runs


def medians(runs: list[dict], test_images: int = TEST_IMAGES) -> dict:
    out = {f"epoch_{i + 1}_seconds": statistics.median(r["epoch_seconds"][i] for r in runs)
           for i in range(EPOCHS)}
    for bs in map(str, INFERENCE_BATCH_SIZES):
        out[f"inference_batch_{bs}_images_per_second"] = test_images / statistics.median(
            statistics.median(r["inference_seconds"][bs]) for r in runs)
    out["load_average_1min"] = [r["load_average_before"][0] for r in runs]
    return out


ROWS = (("epoch_1_seconds", "epoch, cold (s)", "{:.2f}"),
        ("inference_batch_32_images_per_second", "inference, batch 32 (images/s)", "{:,.0f}"),
        ("inference_batch_64_images_per_second", "inference, batch 64 (images/s)", "{:,.0f}"))


def markdown(summary: dict, args: argparse.Namespace) -> str:
    head = "| | " + " | ".join(f"{n}, {c}" for c in CONDITIONS for n in CONFIGS) + " |"
    lines = [head, "|---" + "|---:" * (len(CONFIGS) * len(CONDITIONS)) + "|"]
    for key, label, fmt in ROWS:
        cells = [fmt.format(summary[c][n][key]) for c in CONDITIONS for n in CONFIGS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    p.add_argument("--worker", choices=("torch", "keras"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # inside a subprocess: one JSON line on stdout
        worker = torch_worker if args.worker == "torch" else keras_worker
        print(json.dumps(worker(args)))
        return 0

    started = os.getloadavg()
    runs = run_rounds(args)
    summary = {c: {n: medians(runs[c][n]) for n in CONFIGS} for c in CONDITIONS}
    ratios = {c: {"torch policy / keras, inference batch 32": (
        summary[c]["torch policy"]["inference_batch_32_images_per_second"]
        / summary[c]["keras"]["inference_batch_32_images_per_second"]),
        "torch policy / torch old, epoch 1": (summary[c]["torch policy"]["epoch_1_seconds"]
                                              / summary[c]["torch old"]["epoch_1_seconds"]),
        "torch policy / torch threads 1, epoch 1": (
            summary[c]["torch policy"]["epoch_1_seconds"]
            / summary[c]["torch threads 1"]["epoch_1_seconds"])} for c in CONDITIONS}
    report = {"command": "python -m bench.speed_busy " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                          "affinity": len(os.sched_getaffinity(0))},
              "settings": {"limit": args.limit, "runs": args.runs, "passes": args.passes,
                           "batch_size": BATCH_SIZE, "busy_loop": BUSY_LOOP},
              "load_average_start": started, "load_average_end": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "summary": summary, "ratios": ratios, "runs": runs}
    report["markdown"] = markdown(summary, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(report["markdown"])
    print(json.dumps(ratios, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
