"""Port scale: the time and peak memory of porting a large Keras Sequential, both directions.

    python -m bench.port_scale --out bench/results/port_scale.json [--params 50]

Keras writes Sequential models of Conv2D/Dense layers (`model.save`, random Glorot weights) of
about a quarter, a half and all of `--params` million parameters. Each port then runs in its
own process — `python -m parity.port SRC DST --samples 100`: read, build the PyTorch
module, run both sides on 100 test images layer by layer, write — Keras → PyTorch (`.pt`) and
PyTorch → Keras (`.keras`); and `parity.load_torch_model` alone (no TensorFlow in the process).
For each: wall time and the process's peak RSS, beside the size of the weights, so that the
copies held and the growth with the parameter count can be read off. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1 << 20


def keras_model_file(params_m: float, path: Path) -> int:
    """Write a Conv/Dense Sequential of about `params_m` million parameters; its count."""
    code = f"""
import keras
L = keras.layers
units = max(16, int({params_m} * 1e6 / (28 * 28 * 32)))
keras.utils.set_random_seed(0)
m = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, 3, padding="same", activation="relu"),
                      L.Conv2D(32, 3, padding="same", activation="relu"), L.Flatten(),
                      L.Dense(units, activation="relu"), L.Dense(10, activation="softmax")])
m.save({str(path)!r})
print(m.count_params())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return int(out.stdout.strip().splitlines()[-1])


def application_file(name: str, size: int, path: Path) -> int:
    """Write keras.applications' `name` (weights=None, 1,000 classes) at size×size; its count."""
    code = f"""
import keras
keras.utils.set_random_seed(0)
m = getattr(keras.applications, {name!r})(weights=None, input_shape=({size}, {size}, 3))
m.save({str(path)!r})
print(m.count_params())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return int(out.stdout.strip().splitlines()[-1])


def measured(argv: list[str]) -> dict:
    """Run a command in a fresh process: wall seconds and its peak RSS (MiB)."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(p.returncode, dt, rss)\n"
        "sys.stderr.write(p.stderr[-2000:])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    rc, seconds, rss = out.stdout.split()
    result = {"seconds": round(float(seconds), 2), "peak_rss_mib": round(float(rss))}
    if int(rc) != 0:  # a refusal is a result: its line is kept
        result["refused"] = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
    return result


def baseline(modules: str) -> int:
    """Peak RSS (MiB) of a process that only imports `modules`."""
    code = f"import {modules}"
    return measured([sys.executable, "-c", code])["peak_rss_mib"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.port_scale", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="bench/results/port_scale.json",
                   help="JSON report (default: bench/results/port_scale.json)")
    p.add_argument("--params", type=float, default=50.0,
                   help="largest model, in millions of parameters (default: 50)")
    p.add_argument("--applications", default="ResNet50,VGG16",
                   help="keras.applications models to port at 224×224 with the check's default "
                        "samples (default: ResNet50,VGG16; '' for none)")
    args = p.parse_args(argv)
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(f"Sequential {args.params * f:g} M", f, None) for f in (0.25, 0.5, 1.0)]
        jobs += [(f"{a} 224×224", 1.0, a) for a in args.applications.split(",") if a]
        for label, fraction, application in jobs:
            src = Path(tmp) / f"{application or fraction}.keras"
            n = (application_file(application, 224, src) if application
                 else keras_model_file(args.params * fraction, src))
            pt, back = src.with_suffix(".pt"), Path(tmp) / f"{application or fraction}-back.keras"
            # the Sequential rows as before (100 images); an application with the check's
            # default count, which adapts to the input size and says so
            port = [py, "-m", "parity.port", *([] if application else ["--samples", "100"])]
            row = {
                "model": label,
                "parameters": n,
                "weights_mib": round(4 * n / MB),
                "keras_file_mib": round(src.stat().st_size / MB),
                "keras_to_torch": measured([*port, str(src), str(pt)]),
            }
            if "refused" not in row["keras_to_torch"]:
                row["torch_to_keras"] = measured([*port, str(pt), str(back)])
                row["load_torch_model"] = measured(
                    [py, "-c", f"import parity; parity.load_torch_model({str(src)!r})"])
            if "refused" in row["keras_to_torch"]:  # nothing to port back
                row["torch_to_keras"] = row["load_torch_model"] = row["keras_to_torch"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "baseline_rss_mib": {
            "import parity.build (torch, h5py)": baseline("parity.build"),
            "import parity.pipeline, keras": baseline("parity.pipeline, keras"),
        },
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| model | parameters | weights | Keras → PyTorch | PyTorch → Keras | "
          "load_torch_model |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"refused: {r[k]['refused']}" if "refused" in r[k] else
                 f"{r[k]['seconds']:.1f} s, {r[k]['peak_rss_mib']:,} MiB"
                 for k in ("keras_to_torch", "torch_to_keras", "load_torch_model")]
        print(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['weights_mib']} MiB | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
