"""Layer-by-layer parity report of a Keras checkpoint against a PyTorch one, on real test images.

With --generic (implied by a PyTorch file that carries its architecture, as `parity.port
--generic` writes them) any supported Keras chain is compared, every Keras layer's output.

    python -m parity.check KERAS_FILE TORCH_FILE [--device cpu|cuda] [--samples N] [--json PATH]
                                                [--test-images N]

Compares conv1, pool1, conv2, pool2, flatten, dense1, the pre-softmax logits and the probabilities
on the first N test images (every map in Keras's layout: NHWC, H,W,C flatten order), then the
predictions and accuracy of each side over the whole 10,000-image test set. Exit 0 when every
layer is within tolerance and the predictions agree; 1 otherwise, naming the first layer that
differs. The Keras side runs on the CPU; `--device cuda` runs the PyTorch side on a GPU (TF32 off).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fashion_cnn.cli import add_data_dir, add_device, int_range
from fashion_cnn.errors import UserError, cli_entry, one_line
from fashion_cnn.files import atomic_write, check_destination, check_not_input
from parity.keras_files import keras_kind
from parity.runners import (
    KerasSide,
    load_test_images,
    torch_device,
    torch_model,
    torch_outputs,
    torch_probabilities,
)
from parity.verify.compare import ATOL, check_report, compare, format_table, real_disagreements
from parity.weights import read_weights
from torch_impl.checkpoint import checkpoint_kind

DEFAULT_SAMPLES = 1000
TEST_IMAGES = 10_000  # the whole test set, for prediction agreement and accuracy


def run_check(
    keras_file: Path,
    torch_file: Path,
    *,
    device: str = "cpu",
    samples: int | None = None,
    test_images: int | None = None,
    data_dir: str | None = None,
    generic: bool = False,
    config: Path | None = None,
) -> dict:
    """The whole report as a dict (`passed`, `first_failure`, `layers`, `test_set`).

    None for `samples` / `test_images`: DEFAULT_SAMPLES and the whole test set for the book's
    CNN; for other models as many as the check's budget affords, up to those."""
    if keras_kind(keras_file) is None:
        raise UserError(f"{keras_file}: not a Keras checkpoint (.keras, .h5 or .weights.h5)")
    checkpoint_kind(torch_file)  # .pt, .pth or .safetensors, else refused
    from parity.formats.torch_files import carries_architecture

    if generic or config is not None or carries_architecture(torch_file):
        from parity.pipeline import run_generic_check

        return run_generic_check(
            keras_file, torch_file, samples=samples, test_images=test_images,
            data_dir=data_dir, config=config, device=torch_device(device),
        )
    dev = torch_device(device)
    samples = DEFAULT_SAMPLES if samples is None else samples
    test_images = TEST_IMAGES if test_images is None else test_images
    keras_weights = read_weights(keras_file).keras
    torch_weights = read_weights(torch_file).torch
    images, labels = load_test_images(data_dir)
    images, labels = images[:test_images], labels[:test_images]

    keras_side = KerasSide(keras_weights)
    model = torch_model(torch_weights, dev)
    ko = keras_side.outputs(images[:samples])
    to = torch_outputs(model, images[:samples])
    layers = [compare(name, ko[name], to[name]) for name in ko]

    pk = keras_side.probabilities(images)
    pt = torch_probabilities(model, images)
    ka, ta = pk.argmax(1), pt.argmax(1)
    real = real_disagreements(pk, pt)
    test_set = {
        "images": len(images),
        "predictions_agreeing": int((ka == ta).sum()),
        "real_disagreements": int(real.size),
        "keras_accuracy": float((ka == labels).mean()),
        "torch_accuracy": float((ta == labels).mean()),
        "probabilities": compare("probabilities (all)", pk, pt).as_dict(),
    }
    first = next((d.name for d in layers if not d.passed), None)
    if first is None and real.size:
        first = "predictions"
    return check_report(
        (keras_file, torch_file), (keras_side.description, f"torch {torch.__version__} on {dev}"),
        min(samples, len(images)), layers, test_set, first,
    )


def format_report(report: dict) -> str:
    from parity.verify.compare import LayerDiff

    if "keras_accuracy" not in report["test_set"]:  # the generic path's report
        from parity.pipeline import format_generic_report

        return format_generic_report(report)

    diffs = [LayerDiff(**{**d, "shape": tuple(d["shape"])}) for d in report["layers"]]
    t = report["test_set"]
    lines = [
        f"Keras:   {one_line(report['keras_file'])}  [{report['keras_side']}]",
        f"PyTorch: {one_line(report['torch_file'])}  [{report['torch_side']}]",
        f"layer outputs on the first {report['samples']} test images:",
        format_table(diffs),
        f"test set ({t['images']} images): predictions agreeing {t['predictions_agreeing']}"
        f"/{t['images']}; accuracy Keras {t['keras_accuracy']:.4f}, PyTorch "
        f"{t['torch_accuracy']:.4f}; max |diff| of probabilities "
        f"{t['probabilities']['max_abs']:.3e}",
    ]
    if report["passed"]:
        lines.append("PASS: every layer within tolerance, predictions agree")
    elif report["first_failure"] == "predictions":
        lines.append(
            f"FAIL: {t['real_disagreements']} predictions differ beyond a tie within {ATOL:g}"
        )
    else:
        d = next(d for d in diffs if d.name == report["first_failure"])
        lines.append(
            f"FAIL: first differing layer {d.name}: max |diff| {d.max_abs:.3e} "
            f"(atol {d.atol:g}, rtol {d.rtol:g})"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parity.check",
        description="Compare a Keras and a PyTorch checkpoint of the book's CNN layer by layer.",
    )
    p.add_argument("keras_file", type=Path, help=".keras, .h5 or .weights.h5")
    p.add_argument("torch_file", type=Path, help=".pt, .pth or .safetensors")
    add_device(p, "cpu")
    p.add_argument(
        "--samples",
        type=int_range(1, TEST_IMAGES),
        default=None,
        help=f"test images for the layer-by-layer report (default: {DEFAULT_SAMPLES}, fewer for "
        "a model whose layer outputs are large: the report says so)",
    )
    p.add_argument(
        "--test-images",
        type=int_range(1, TEST_IMAGES),
        default=None,
        help=f"test images for prediction agreement and accuracy (default: all {TEST_IMAGES:,}, "
        "fewer with fewer --samples by default)",
    )
    p.add_argument("--json", type=Path, help="also write the report as JSON to this path")
    p.add_argument(
        "--generic",
        action="store_true",
        help="any supported Keras chain, not only the book's CNN (implied by a PyTorch file "
        "that carries its architecture)",
    )
    p.add_argument(
        "--config", type=Path, help="the architecture of a .weights.h5 KERAS_FILE (.keras/.json)"
    )
    add_data_dir(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:  # before the work: the report is written over an existing file
        check_not_input(args.json, args.keras_file, args.torch_file)
        check_destination(args.json, force=True)
    report = run_check(
        args.keras_file,
        args.torch_file,
        device=args.device,
        samples=args.samples,
        test_images=args.test_images,
        data_dir=args.data_dir,
        generic=args.generic,
        config=args.config,
    )
    print(format_report(report))
    if args.json:
        text = json.dumps(report, indent=2)
        atomic_write(args.json, lambda tmp: tmp.write_text(text), force=True)
    if not report["passed"]:
        print(
            "error: " + one_line(f"{args.keras_file} and {args.torch_file} differ, first at "
                                 f"{report['first_failure']}"),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
