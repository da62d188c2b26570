"""Side by side with the anchors: our port against the pipelines people use today.

    make bench-anchors            # builds .venv-anchors (bench/anchors-requirements.txt) first
    python -m bench.anchors --anchors-python .venv-anchors/bin/python [--models VGG16,UNet]

On each model — `keras.applications` architectures (weights=None, BatchNormalization statistics
randomised, at their smallest input), a small U-Net of our own and the book's CNN — written once
by Keras (`model.save`) with a batch of seeded inputs and Keras's outputs for them:

  ours         `python -m parity.port model.keras ours.pt --module-py ours.py` (check included);
  keras-onnx → onnx2torch, keras-onnx → onnx2pytorch
               Keras 3's `model.export(format="onnx")` of the loaded file, then the converter;
  tf2onnx      `tf2onnx.convert.from_keras` of the loaded model, run by onnxruntime.

Each step is its own process (TensorFlow imported before onnx2torch segfaults with this
torch/triton pair), measured from outside: wall seconds and peak RSS; a pipeline's figures are
its steps' sum and maximum. For what comes out: max |diff| against Keras's outputs on the same
inputs, whether BatchNormalization is kept as modules, how many of Keras's trainable weights are
trainable parameters, the bytes the module stores against Keras's, the input layout, names.
The anchors run in their own virtual env so that the project's dependencies stay clean.
A benchmark, not a test.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("VGG16,ResNet50,ResNet50V2,MobileNet,MobileNetV2,MobileNetV3Small,DenseNet121,"
                  "EfficientNetB0,InceptionV3,Xception,UNet,BookCNN")
SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}  # else 32
SAMPLES = 4


# --- steps, each run in a process of its own ----------------------------------------------------

def _build(name: str, d: Path) -> dict:
    """Keras writes the model, its inputs and outputs; what it holds, for the comparison."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    L = keras.layers
    if name == "BookCNN":
        from keras_ref.model import build_model

        model = build_model()
    elif name == "UNet":  # skip connections, a transposed convolution, concatenation
        inputs = keras.Input((28, 28, 1))
        skip = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inputs)))
        x = L.SeparableConv2D(16, 3, padding="same", activation="relu")(L.MaxPooling2D()(skip))
        x = L.Concatenate()([L.Conv2DTranspose(8, 3, strides=2, padding="same")(x), skip])
        x = L.Add()([L.Conv2D(8, 1)(x), skip])
        x = L.GlobalAveragePooling2D()(L.UpSampling2D(interpolation="bilinear")(x))
        model = keras.Model(inputs, L.Dense(10, activation="softmax")(x))
    else:
        size = SIZES.get(name, 32)
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                                  classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    model.save(d / "model.keras")
    x = rng.uniform(0, 1, (SAMPLES, *model.input_shape[1:])).astype(np.float32)
    y = np.asarray(model.predict(x, verbose=0))
    np.savez(d / "io.npz", x=x, y=y)
    return {
        "input": list(model.input_shape[1:]),
        "keras_layers": len(model.layers),
        "keras_bn": sum(isinstance(lay, L.BatchNormalization) for lay in model.layers),
        "keras_trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "keras_bytes": int(sum(4 * np.prod(w.shape) for w in model.weights)),
        "max_abs_output": float(np.abs(y).max()),
    }


def _keras_onnx(d: Path) -> dict:
    """Keras 3's ONNX export of the file as loaded; called once first where it demands it."""
    import keras
    import numpy as np

    model = keras.models.load_model(d / "model.keras")
    note = ""
    try:
        model.export(str(d / "keras.onnx"), format="onnx")
    except ValueError as e:  # "The model provided has never called."
        note = f"loaded model refused until called once: {str(e).strip()}"
        model(np.load(d / "io.npz")["x"][:1])
        model.export(str(d / "keras.onnx"), format="onnx")
    return {"note": note}


def _tf2onnx(d: Path) -> dict:
    import keras
    import numpy as np
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(d / "model.keras")
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="x"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, output_path=str(d / "tf2onnx.onnx"))
    io = np.load(d / "io.npz")
    session = onnxruntime.InferenceSession(str(d / "tf2onnx.onnx"))
    (y,) = session.run(None, {session.get_inputs()[0].name: io["x"]})
    return {"max_diff": float(np.abs(y - io["y"]).max()), "out": "ONNX (onnxruntime), NHWC"}


def _describe(module, y, io, layout: str, code: str) -> dict:
    """What a converted module is, as a user would meet it."""
    import numpy as np
    import torch

    state = module.state_dict()
    names = [n for n, m in module.named_modules() if n and not list(m.children())]
    return {
        "max_diff": float(np.abs(y - io["y"]).max()),
        "bn_modules": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                          for m in module.modules()),
        "trainable": int(sum(p.numel() for p in module.parameters() if p.requires_grad)),
        "stored_bytes": int(sum(t.numel() * t.element_size() for t in state.values())),
        "input_layout": layout,
        "names": names[:2],
        "code": code,
    }


def _onnx_to_torch(d: Path, tool: str) -> dict:
    import numpy as np
    import onnx
    import torch

    io = np.load(d / "io.npz")
    if tool == "onnx2torch":
        import onnx2torch

        module, code = onnx2torch.convert(str(d / "keras.onnx")), "torch.fx GraphModule (.code)"
    else:
        import onnx2pytorch

        module = onnx2pytorch.ConvertModel(onnx.load(str(d / "keras.onnx")))
        code = "a generic ONNX-graph interpreter"
    with torch.no_grad():
        y = module.eval()(torch.from_numpy(io["x"])).numpy()
    return _describe(module, y, io, "NHWC", code)


def _ours_out(d: Path) -> dict:
    import numpy as np
    import torch

    from parity import load_torch_model

    io = np.load(d / "io.npz")
    module = load_torch_model(d / "ours.pt")
    with torch.no_grad():
        y = module.eval()(torch.from_numpy(io["x"].transpose(0, 3, 1, 2).copy())).numpy()
    return _describe(module, y, io, "NCHW", "a .py module (--module-py)")


STEPS = {"build": _build, "keras-onnx": _keras_onnx, "tf2onnx": _tf2onnx,
         "onnx2torch": lambda d: _onnx_to_torch(d, "onnx2torch"),
         "onnx2pytorch": lambda d: _onnx_to_torch(d, "onnx2pytorch"), "ours-out": _ours_out}


def _step(argv: list[str]) -> int:
    """`--step NAME DIR [MODEL]`: one step; its result as the last line of stdout (JSON)."""
    name, d, *rest = argv
    out = STEPS[name](*rest, Path(d)) if rest else STEPS[name](Path(d))
    print(json.dumps(out))
    return 0


# --- the driver ---------------------------------------------------------------------------------

def measured(argv: list[str], python: str) -> dict:
    """A command in a fresh process, through a wrapper that waits for it alone: wall seconds,
    peak RSS (MiB), its JSON result, or its last line of error where it fails."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "sys.stdout.write(f'{p.returncode} {dt} {rss}\\n' + p.stdout)\n"
        "sys.stderr.write(p.stderr[-3000:])\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    out = subprocess.run([python, "-c", code, *argv], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    head, *lines = out.stdout.splitlines()
    rc, seconds, rss = head.split()
    result = {"ok": int(rc) == 0, "seconds": round(float(seconds), 1),
              "peak_rss_mib": round(float(rss))}
    if result["ok"]:
        last = [s for s in lines if s.startswith("{")]
        result.update(json.loads(last[-1]) if last else {})
    else:
        errors = [s for s in out.stderr.strip().splitlines() if s.strip()]
        result["error"] = (errors or ["(no message)"])[-1][:300]
    return result


def _pipeline(*steps: dict) -> dict:
    """Steps in sequence: their seconds summed, the peak the largest, the last step's outputs."""
    out = {"ok": all(s["ok"] for s in steps),
           "seconds": round(sum(s["seconds"] for s in steps), 1),
           "peak_rss_mib": max(s["peak_rss_mib"] for s in steps)}
    failed = next((s for s in steps if not s["ok"]), None)
    extra = {k: v for s in steps for k, v in s.items() if k not in out}
    if failed:
        extra = {"error": failed["error"]} | {k: v for k, v in extra.items() if k == "note"}
    return out | extra


def run_model(name: str, anchors: str, d: Path) -> dict:
    me = [sys.executable]
    step = ["-m", "bench.anchors", "--step"]
    built = measured([anchors, *step, "build", str(d), name], anchors)
    if not built["ok"]:
        return {"model": name, "build": built}
    export = measured([anchors, *step, "keras-onnx", str(d)], anchors)
    tools = {}
    for tool in ("onnx2torch", "onnx2pytorch"):
        conv = (measured([anchors, *step, tool, str(d)], anchors) if export["ok"]
                else {"ok": False, "seconds": 0.0, "peak_rss_mib": 0, "error": "no ONNX file"})
        tools[f"keras-onnx + {tool}"] = _pipeline(export, conv)
    tools["tf2onnx"] = measured([anchors, *step, "tf2onnx", str(d)], anchors)
    port = measured([*me, "-m", "parity.port", str(d / "model.keras"), str(d / "ours.pt"),
                     "--module-py", str(d / "ours_model.py")], sys.executable)
    out = (measured([*me, *step, "ours-out", str(d)], sys.executable) if port["ok"]
           else {"ok": False, "seconds": 0.0, "peak_rss_mib": 0, "error": "no .pt"})
    tools = {"ours (parity.port, check included)": port | {
        k: v for k, v in out.items() if k not in ("ok", "seconds", "peak_rss_mib")}} | tools
    keep = ("input", "keras_layers", "keras_bn", "keras_trainable", "keras_bytes",
            "max_abs_output")
    return {"model": name, **{k: built[k] for k in keep}, "tools": tools}


def _cell(r: dict) -> str:
    if not r["ok"]:
        return f"fails: {r['error'][:90]}".replace("|", "\\|")
    return f"{r['seconds']:.0f} s, {r['peak_rss_mib']:,} MiB"


def table(report: dict) -> str:
    """The README's two tables: time and peak memory per model and tool, then what comes out."""
    rows = [r for r in report["rows"] if "tools" in r]
    tools = list(rows[0]["tools"])
    lines = ["| model | input | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for r in rows:
        shape = "×".join(map(str, r["input"]))
        lines.append(f"| {r['model']} | {shape} | "
                     + " | ".join(_cell(r["tools"][t]) for t in tools) + " |")
    lines += ["", "| tool | converts | worst max \\|diff\\| | BatchNormalization as modules "
              "| Keras's trainable weights trainable | bytes stored / Keras's | input | names |",
              "|---|---|---|---|---|---|---|---|"]
    for t in tools:
        done = [r for r in rows if r["tools"][t]["ok"]]
        if not done:
            lines.append(f"| {t} | 0/{len(rows)} | — | — | — | — | — | — |")
            continue
        out = [r["tools"][t] for r in done]
        worst = max(o["max_diff"] for o in out)
        if "bn_modules" not in out[0]:  # an ONNX file, run by onnxruntime
            lines.append(f"| {t} | {len(done)}/{len(rows)} | {worst:.1e} | — | — | — "
                         f"| {out[0]['out']} | — |")
            continue
        bn = sum(o["bn_modules"] for o in out), sum(r["keras_bn"] for r in done)
        share = [o["trainable"] / r["keras_trainable"] for o, r in zip(out, done, strict=True)]
        stored = [o["stored_bytes"] / r["keras_bytes"] for o, r in zip(out, done, strict=True)]
        name = out[0]["names"][-1].replace("|", "\\|")
        lines.append(f"| {t} | {len(done)}/{len(rows)} | {worst:.1e} | {bn[0]} of {bn[1]} "
                     f"| {min(share):.1%}–{max(share):.1%} | {min(stored):.2f}–{max(stored):.2f} "
                     f"| {out[0]['input_layout']} | `{name}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--step"]:
        return _step(argv[1:])
    if argv[:1] == ["--table"]:  # `--table REPORT.json`: the README's tables of a report
        print(table(json.loads(Path(argv[1]).read_text())))
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.anchors",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--anchors-python", required=True,
                   help="the anchors' venv python (TensorFlow, Keras, onnx2torch, onnx2pytorch, "
                        "tf2onnx, onnxruntime): make bench-anchors builds .venv-anchors")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"default: {DEFAULT_MODELS}")
    p.add_argument("--out", default="bench/results/anchors.json")
    args = p.parse_args(argv)
    versions = subprocess.run(
        [args.anchors_python, "-c", "import importlib.metadata as m; print({p: m.version(p) "
         "for p in ('onnx', 'onnx2torch', 'onnx2pytorch', 'tf2onnx', 'onnxruntime', 'keras', "
         "'tensorflow-cpu', 'torch')})"], capture_output=True, text=True, check=True).stdout
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            rows.append(run_model(name, args.anchors_python, Path(tmp)))
            print(f"{name}: {time.perf_counter() - t:.0f} s", json.dumps(rows[-1]), flush=True)
    report = {
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "anchors": versions.strip(),
        "command": "python -m bench.anchors " + " ".join(argv),
        "rows": rows,
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(table(report), f"\nwrote {args.out}", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
