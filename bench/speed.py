"""Speed, Keras against PyTorch, on this machine: training epochs and test-set inference.

    python -m bench.speed --out bench/results/speed.json [--epochs 4] [--repeats 5]

Each framework runs in its own subprocess, one after the other, so they never compete for the
cores (and TensorFlow and PyTorch never share a process). Both train the book's CNN with the
book's recipe at batch 32 on the 48,000 training images (no validation, so the epoch is the
training pass alone); the first epoch is a warm-up (Keras traces its graph there) and the median
of the others is reported. Inference is a pass over the 10,000 test images — Keras's `predict`
at its default batch size 32 against the PyTorch model in `torch.inference_mode()` at batch 32
and at the trainer's evaluation batch size — repeated, median reported.

The PyTorch worker runs with the command lines' thread policy (`fashion_cnn.threads.openmp_env`,
decided as each worker starts); `--threads N` sets both frameworks' thread counts instead.
bench/speed_busy.py compares the policies, quiet and beside a competing process.

Writes the JSON (hardware, threads, versions, every sample, medians, ratios) and prints a
markdown table for the README. A benchmark, not a test: the numbers depend on the machine and
on what else it is running (the load average is recorded before and after each framework).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fashion_cnn.threads import openmp_env

# The targets on the 2-core CPU at batch 32.
EPOCH_RATIO_TARGET = 0.8  # torch epoch time ≤ 0.8 × Keras's
INFERENCE_RATIO_TARGET = 1.5  # torch throughput ≥ 1.5 × Keras's
BATCH_SIZE = 32
# Keras's predict default (32) and the PyTorch trainer's evaluation batch
# (torch_impl.evaluate.EVAL_BATCH_SIZE, checked in the worker).
INFERENCE_BATCH_SIZES = (32, 64)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "samples": samples}


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own process)


def keras_worker(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ref.data import load_book_data
    from keras_ref.model import build_model
    from keras_ref.train import EpochTimer

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(42)
    train_scaled, _, train_target, _, test_scaled, _ = load_book_data()

    # The book's model and recipe, trained as the book trains it (fit on the float64 arrays).
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(train_scaled, train_target, epochs=args.epochs, batch_size=BATCH_SIZE, verbose=0,
              callbacks=[timer])

    inference = {}
    test32 = test_scaled.astype(np.float32)
    for batch_size in INFERENCE_BATCH_SIZES:
        seconds = []
        model.predict(test32, batch_size=batch_size, verbose=0)  # warm-up: traces predict
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.predict(test32, batch_size=batch_size, verbose=0)
            seconds.append(time.perf_counter() - start)
        inference[str(batch_size)] = summarise(seconds)
    return {
        "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads() or "default",
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "default",
        },
        "epoch_seconds_all": timer.seconds,
        "epoch_seconds": summarise(timer.seconds[1:]),
        "inference_seconds": inference,
        "images": {"train": len(train_scaled), "test": len(test_scaled)},
    }


def torch_worker(args: argparse.Namespace) -> dict:
    import torch

    from torch_impl.data import load_book_data
    from torch_impl.device import numerics, preferred_memory_format, seed_everything
    from torch_impl.epoch import make_train_step, train_epoch
    from torch_impl.model import EVAL_BATCH_SIZE, BookCNN, PoolFirst
    from torch_impl.optim import KerasAdam

    if EVAL_BATCH_SIZE not in INFERENCE_BATCH_SIZES:
        raise SystemExit(f"bench.speed: add the trainer's EVAL_BATCH_SIZE {EVAL_BATCH_SIZE}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_book_data()
    out = {
        "framework": f"torch {torch.__version__}",
        "threads": {"intra_op": torch.get_num_threads(),
                    "inter_op": torch.get_num_interop_threads()},
        "images": {"train": len(data.train_x), "test": len(data.test_x)},
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in devices:
        device = torch.device(name)
        fmt = preferred_memory_format(device)
        with numerics(device):
            seed_everything(42)
            shuffle = torch.Generator().manual_seed(42)
            model = BookCNN(init="keras").to(device=device, memory_format=fmt)
            train_x = data.train_x.to(device).contiguous(memory_format=fmt)
            train_y = data.train_y.to(device)
            step = make_train_step(PoolFirst(model), KerasAdam(model.parameters()))
            epoch_seconds = []
            for _ in range(args.epochs):
                start = time.perf_counter()
                train_epoch(model, step, train_x, train_y, BATCH_SIZE, shuffle)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                epoch_seconds.append(time.perf_counter() - start)

            model.eval()
            test_x = data.test_x.to(device).contiguous(memory_format=fmt)
            # The forward that evaluate and the trainer use (PoolFirst) and the plain module
            # (`model(x)`, as predict calls it): the same numbers.
            inference, inference_plain = {}, {}
            for forward, results in ((PoolFirst(model), inference), (model, inference_plain)):
                for batch_size in INFERENCE_BATCH_SIZES:
                    seconds = []
                    for repeat in range(args.repeats + 1):  # the first pass is a warm-up
                        start = time.perf_counter()
                        with torch.inference_mode():
                            for i in range(0, len(test_x), batch_size):
                                forward(test_x[i : i + batch_size])
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        if repeat:
                            seconds.append(time.perf_counter() - start)
                    results[str(batch_size)] = summarise(seconds)
        key = "" if name == "cpu" else f"_{name}"
        out[f"epoch_seconds_all{key}"] = epoch_seconds
        out[f"epoch_seconds{key}"] = summarise(epoch_seconds[1:])
        out[f"inference_seconds{key}"] = inference
        out[f"inference_seconds_plain_module{key}"] = inference_plain
        if device.type == "cuda":
            out["cuda_device"] = torch.cuda.get_device_name(device)
    return out


WORKERS = {"keras": keras_worker, "torch": torch_worker}


def worker_result(cmd: list[str], env: dict, who: str) -> dict:
    """Run a worker command; the JSON object on its last line of output (its stderr's tail and
    SystemExit naming `who` if it fails)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{who} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(name: str, args: argparse.Namespace) -> dict:
    """Run one framework's worker in a fresh interpreter; returns its JSON result."""
    cmd = [sys.executable, "-m", "bench.speed", "--worker", name, "--epochs", str(args.epochs),
           "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--rounds", "1"]
    load_before = os.getloadavg()
    print(f"running {name} ({args.epochs} epochs, {args.repeats} inference repeats) …", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if name == "torch":  # PyTorch as its command lines run it (fashion_cnn/threads.py)
        env.update(openmp_env(env))
    result = worker_result(cmd, env, f"bench.speed: the {name} worker")
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    return result


def pool_rounds(results: list[dict]) -> dict:
    """One framework's rounds → one result: every timed sample pooled, medians over them all."""
    pooled = dict(results[-1])
    pooled["rounds"] = results
    for key in [k for k, v in pooled.items() if k.startswith("epoch_seconds") and "samples" in v]:
        pooled[key] = summarise([x for r in results for x in r[key]["samples"]])
    for key in [k for k in pooled if k.startswith("inference_seconds")]:
        pooled[key] = {bs: summarise([x for r in results for x in r[key][bs]["samples"]])
                       for bs in pooled[key]}
    pooled["load_average_before"] = [r["load_average_before"] for r in results]
    pooled["load_average_after"] = [r["load_average_after"] for r in results]
    return pooled


# ---------------------------------------------------------------------------------------------
# Report


def compare(keras: dict, torch: dict) -> dict:
    test_images = torch["images"]["test"]
    k_epoch = keras["epoch_seconds"]["median"]
    t_epoch = torch["epoch_seconds"]["median"]
    inference = {}
    for bs in map(str, INFERENCE_BATCH_SIZES):
        k = test_images / keras["inference_seconds"][bs]["median"]
        t = test_images / torch["inference_seconds"][bs]["median"]
        plain = test_images / torch["inference_seconds_plain_module"][bs]["median"]
        inference[f"batch_{bs}"] = {"keras_predict": k, "torch": t, "ratio_torch_over_keras": t / k,
                                    "torch_plain_module": plain,
                                    "ratio_torch_plain_module_over_keras": plain / k}
    # The target: Keras's predict as the book calls it (default batch 32) against the PyTorch
    # evaluation as the trainer runs it (EVAL_BATCH_SIZE).
    headline = inference["batch_32"]["keras_predict"], inference["batch_64"]["torch"]
    return {
        "epoch_seconds": {"keras": k_epoch, "torch": t_epoch,
                          "ratio_torch_over_keras": t_epoch / k_epoch,
                          "target_at_most": EPOCH_RATIO_TARGET,
                          "met": t_epoch / k_epoch <= EPOCH_RATIO_TARGET},
        "inference_images_per_second": {
            **inference,
            "keras_predict_default_batch_32": headline[0],
            "torch_eval_batch_64": headline[1],
            "ratio_torch_over_keras": headline[1] / headline[0],
            "target_at_least": INFERENCE_RATIO_TARGET,
            "met": headline[1] / headline[0] >= INFERENCE_RATIO_TARGET,
        },
    }


def markdown(report: dict) -> str:
    c = report["comparison"]
    e, i = c["epoch_seconds"], c["inference_images_per_second"]
    mark = {True: "✓", False: "✗"}
    rounds = report["settings"]["rounds"]
    loads = [x[0] for f in ("keras", "torch")
             for key in ("load_average_before", "load_average_after")
             for x in report[f][key]]
    load = (min(loads), max(loads))
    lines = [
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"{report['keras']['framework']} vs {report['torch']['framework']}; training batch "
        f"{BATCH_SIZE}; medians of {(report['settings']['epochs'] - 1) * rounds} epochs and "
        f"{report['settings']['repeats'] * rounds} inference passes ({rounds} alternating runs "
        f"each); load average {load[0]:.1f}–{load[1]:.1f}; {report['date']}.",
        "",
        "| | Keras | PyTorch | PyTorch / Keras | target |",
        "|---|---:|---:|---:|---:|",
        f"| training epoch, 48,000 images (s) | {e['keras']:.2f} | {e['torch']:.2f} | "
        f"{e['ratio_torch_over_keras']:.2f}× | ≤ {EPOCH_RATIO_TARGET}× {mark[e['met']]} |",
        f"| inference, 10,000 test images (images/s): Keras `predict` (batch 32) vs PyTorch "
        f"evaluation (batch 64) | {i['keras_predict_default_batch_32']:,.0f} | "
        f"{i['torch_eval_batch_64']:,.0f} | {i['ratio_torch_over_keras']:.2f}× | "
        f"≥ {INFERENCE_RATIO_TARGET}× {mark[i['met']]} |",
    ]
    for bs in INFERENCE_BATCH_SIZES:
        row = i[f"batch_{bs}"]
        lines.append(f"| inference at the same batch {bs} (images/s) | "
                     f"{row['keras_predict']:,.0f} | {row['torch']:,.0f} | "
                     f"{row['ratio_torch_over_keras']:.2f}× | |")
        lines.append(f"| … plain `model(x)` at batch {bs} (images/s) | | "
                     f"{row['torch_plain_module']:,.0f} | "
                     f"{row['ratio_torch_plain_module_over_keras']:.2f}× | |")
    if "epoch_seconds_cuda" in report["torch"]:
        lines.append(f"| training epoch on {report['torch']['cuda_device']} (s) | | "
                     f"{report['torch']['epoch_seconds_cuda']['median']:.2f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/speed.json",
                   help="JSON report (default: bench/results/speed.json)")
    p.add_argument("--epochs", type=int, default=4,
                   help="training epochs per framework; the first is a warm-up (default: 4)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed inference passes over the test set (default: 5)")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternating runs of each framework, samples pooled (default: 2)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for both frameworks (default: 0 = each one's default)")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 2 or args.repeats < 1 or args.rounds < 1:
        p.error("--epochs must be >= 2 (one warm-up), --repeats and --rounds >= 1")

    if args.worker:  # inside a subprocess: one JSON line on stdout
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    # Alternate the frameworks (Keras, PyTorch, Keras, PyTorch, …) so that a change in the
    # machine's load during the run falls on both, then pool each one's samples.
    rounds = {"keras": [], "torch": []}
    for _ in range(args.rounds):
        for name in rounds:
            rounds[name].append(run_worker(name, args))
    keras, torch = (pool_rounds(rounds[name]) for name in ("keras", "torch"))
    report = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {"epochs": args.epochs, "repeats": args.repeats, "rounds": args.rounds,
                     "batch_size": BATCH_SIZE,
                     "threads": args.threads or "default"},
        "keras": keras,
        "torch": torch,
        "comparison": compare(keras, torch),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    report["markdown"] = markdown(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(report["markdown"])
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
