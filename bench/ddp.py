"""Speed of DistributedDataParallel on this machine: a training epoch at global batch 32 with
2 gloo ranks × 1 thread (torchrun) against 1 process × 2 threads.

    python -m bench.ddp --out bench/results/ddp.json [--epochs 3] [--rounds 1] [--limit 0]

Each side runs in its own subprocess, one after the other (alternating over --rounds), with the
trainer's own epoch and step (`torch_impl.epoch`, given the torchrun world or one process: the
book's recipe, dropout on, no validation, so the epoch is the training pass alone). The first
epoch is a warm-up; the median of the others is reported. A benchmark, not a test: the numbers
depend on what else the machine runs (the load average is recorded).
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

BATCH_SIZE = 32
SIDES = {"1 process × 2 threads": ("single", 2), "2 gloo ranks × 1 thread": ("ddp", 1)}


def worker(args: argparse.Namespace) -> dict | None:
    """One side's epochs (under torchrun for `ddp`); the JSON on rank 0 only."""
    import torch
    import torch.distributed as dist

    from torch_impl import distributed as ddp
    from torch_impl.data import load_book_data
    from torch_impl.device import numerics, preferred_memory_format, seed_everything
    from torch_impl.epoch import make_train_step, train_epoch
    from torch_impl.model import BookCNN, PoolFirst
    from torch_impl.optim import KerasAdam

    torch.set_num_threads(args.threads)
    world = ddp.world_from_env()
    data = load_book_data()
    with ddp.session(world, "cpu") as device, numerics(device):
        seed_everything(42)
        shuffle = torch.Generator().manual_seed(42)
        fmt = preferred_memory_format(device)
        model = BookCNN(init="keras").to(memory_format=fmt)
        x, y = data.train_x, data.train_y
        if args.limit:
            x, y = x[: args.limit], y[: args.limit]
        x = x.contiguous(memory_format=fmt)
        optimizer = KerasAdam(model.parameters())
        step = make_train_step(ddp.wrap(PoolFirst(model), device, world), optimizer, world)
        seconds = []
        for epoch in range(args.epochs):
            start = time.perf_counter()
            ddp.reseed_dropout(world, 42, epoch)
            train_epoch(model, step, x, y, BATCH_SIZE, shuffle, world)
            if world.distributed:
                dist.barrier()
            seconds.append(time.perf_counter() - start)
    if not world.is_main:
        return None
    return {"world_size": world.size, "threads": torch.get_num_threads(), "images": len(x),
            "epoch_seconds_all": seconds}


def run_side(name: str, args: argparse.Namespace) -> dict:
    kind, threads = SIDES[name]
    tail = ["-m", "bench.ddp", "--worker", "--threads", str(threads), "--epochs", str(args.epochs),
            "--limit", str(args.limit)]
    if kind == "ddp":
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", *tail]
    else:
        cmd = [sys.executable, *tail]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"running {name} ({args.epochs} epochs) …", flush=True)
    load_before = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench.ddp: {name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ddp", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/ddp.json",
                   help="JSON report (default: bench/results/ddp.json)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per side; the first is a warm-up (default: 3)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternating runs of each side, samples pooled (default: 1)")
    p.add_argument("--limit", type=int, default=0,
                   help="train on the first N images (default: 0 = all 48,000)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        p.error("--epochs must be >= 2 (one warm-up), --rounds >= 1")
    if args.worker:
        result = worker(args)
        if result is not None:
            print(json.dumps(result))
        return 0

    samples: dict[str, list[float]] = {name: [] for name in SIDES}
    runs: dict[str, list[dict]] = {name: [] for name in SIDES}
    for _ in range(args.rounds):
        for name in SIDES:
            result = run_side(name, args)
            runs[name].append(result)
            samples[name] += result["epoch_seconds_all"][1:]
    medians = {name: statistics.median(s) for name, s in samples.items()}
    single, two = medians["1 process × 2 threads"], medians["2 gloo ranks × 1 thread"]
    report = {
        "machine": {"cores": os.cpu_count(), "load_average_now": os.getloadavg()},
        "settings": {"batch_size": BATCH_SIZE, "epochs": args.epochs, "rounds": args.rounds,
                     "limit": args.limit},
        "runs": runs,
        "median_epoch_seconds": medians,
        "ddp_over_single": two / single,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    images = runs["1 process × 2 threads"][0]["images"]
    print(f"| setup (epoch of {images} images, batch 32) | median epoch (s) |\n|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.1f} |")
    print(f"2 ranks / 1 process: {two / single:.2f}×\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
