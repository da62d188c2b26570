"""Layer-by-layer parity report of a Keras checkpoint against a PyTorch one, on real test images.

    python -m parity.check KERAS_FILE TORCH_FILE [--device cpu|cuda] [--samples N] [--json PATH]
                                                [--test-images N] [--config model.keras]

Every Keras layer's output is compared on the first N test images (every map in Keras's layout:
NHWC, H,W,C flatten order) — the book's CNN with the book's names (conv1, pool1, conv2, pool2,
flatten, dense1, the pre-softmax logits, the probabilities) — then the predictions (and, on
Fashion-MNIST, each side's accuracy) over the test set. Exit 0 when every layer is within
tolerance and the predictions agree; 1 otherwise, naming the first layer that differs. The Keras
side runs on the CPU; `--device cuda` runs the PyTorch side on a GPU (TF32 off).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashion_cnn.threads import THREADS_EPILOG, prepare_cli_env

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import torch

from fashion_cnn.cli import add_data_dir, add_device, add_version, int_range
from fashion_cnn.errors import UserError, cli_entry, one_line
from fashion_cnn.files import atomic_write, check_destination, check_not_input
from fashion_cnn.progress import CHECK_STAGES, NO_PROGRESS, PROGRESS_EPILOG, Progress
from parity.formats import keras_kind
from parity.verify.report import format_report
from torch_impl.checkpoint import checkpoint_kind
from torch_impl.device import resolve_device

DEFAULT_SAMPLES = 1000  # parity.pipeline's; fewer for a model whose layer outputs are large
TEST_IMAGES = 10_000  # the whole test set, for prediction agreement and accuracy


def torch_device(name: str) -> torch.device:
    """A torch device for --device (cpu or cuda[:N]); on CUDA TF32 is off, as parity needs."""
    device = resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected cpu or cuda")
    return device


def run_check(
    keras_file: Path,
    torch_file: Path,
    *,
    device: str = "cpu",
    samples: int | None = None,
    test_images: int | None = None,
    data_dir: str | None = None,
    config: Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> dict:
    """The whole report as a dict (`passed`, `first_failure`, `layers`, `test_set`).

    None for `samples` / `test_images`: DEFAULT_SAMPLES and the whole test set, fewer for a
    model whose layer outputs are large (the report says so). `progress` is told of each
    stage and batch checked (`fashion_cnn.progress`)."""
    if keras_kind(keras_file) is None:
        raise UserError(f"{keras_file}: not a Keras checkpoint (.keras, .h5 or .weights.h5)")
    checkpoint_kind(torch_file)  # .pt, .pth or .safetensors, else refused
    from parity import pipeline

    return pipeline.check(keras_file, torch_file, samples=samples, test_images=test_images,
                          data_dir=data_dir, config=config, device=torch_device(device),
                          progress=progress)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        epilog=f"{THREADS_EPILOG} {PROGRESS_EPILOG}",
        prog="python -m parity.check",
        description="Compare a Keras and a PyTorch checkpoint of the same model layer by layer.",
    )
    add_version(p)
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
        help="accepted for old scripts: every check compares every Keras layer now",
    )
    p.add_argument(
        "--config", type=Path, help="the architecture of a .weights.h5 KERAS_FILE (.keras/.json)"
    )
    add_data_dir(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:  # before the work
        check_json_destination(args.json, args.keras_file, args.torch_file)
    with Progress.from_env(CHECK_STAGES) as progress:  # cleared before anything is printed
        report = run_check(
            args.keras_file,
            args.torch_file,
            device=args.device,
            samples=args.samples,
            test_images=args.test_images,
            data_dir=args.data_dir,
            config=args.config,
            progress=progress,
        )
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
    return report_status(report)


def check_json_destination(path: Path, *inputs: Path) -> None:
    """--json PATH, refused before the work: one of the inputs, a folder, under a file…"""
    check_not_input(path, *inputs)
    check_destination(path, force=True)  # the report is written over an existing file


def write_report(report: dict, path: Path) -> None:
    """The report as JSON, written atomically (`parity.check --json`, `parity.port --json`)."""
    text = json.dumps(report, indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text), force=True)


def report_status(report: dict) -> int:
    """0 when the report passed; else 1, with one line naming the first layer that differs."""
    if report["passed"]:
        return 0
    print("error: " + one_line(f"{report['keras_file']} and {report['torch_file']} differ, "
                               f"first at {report['first_failure']}"), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
