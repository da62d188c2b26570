"""Port a checkpoint of any supported Keras model — the book's CNN is one — between Keras and
PyTorch, exactly.

    python -m parity.port SRC DST [--force] [--allow-nonfinite] [--samples N]
                                  [--config model.keras|.json] [--module-py model.py]
                                  [--with-optimizer] [--keras-training] [--json REPORT]

Formats come from the extensions: `.keras`, `.h5`, `.weights.h5` (Keras) ⇄ `.pt`, `.pth`,
`.safetensors` (PyTorch); same-framework conversions work too. The flow is one way: SRC's Keras
config (or the architecture a PyTorch file carries; the book's CNN for a file with none) → one
converter per layer (`parity.pipeline`) → the PyTorch module, weights mapped per tensor → both
sides run on real test images, compared layer by layer, and must agree within tolerance → DST,
written atomically (a temporary file beside it, then a rename). Nothing from SRC is executed.
A layer table is printed. The book's CNN keeps its plain `BookCNN` state_dict on the PyTorch side.
With `--with-optimizer` the optimizer's state crosses too (`parity.training_files`).
With `--json REPORT`, the files on disk are then checked as `parity.check` checks them (SRC
against DST, read back), and its report is written to REPORT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashion_cnn.threads import THREADS_EPILOG, prepare_cli_env

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import numpy as np
import torch

from fashion_cnn.cli import add_data_dir, add_version, int_range
from fashion_cnn.errors import UserError, cli_entry, one_line
from fashion_cnn.files import check_destination, check_not_input
from fashion_cnn.progress import CHECK_STAGES, NO_PROGRESS, PORT_STAGES, PROGRESS_EPILOG, Progress
from parity.check import check_json_destination, report_status, run_check, write_report
from parity.formats import EXTENSIONS, framework_of
from parity.verify.compare import ATOL, RULE

DEFAULT_SAMPLES = 1000  # parity.pipeline's; fewer for a model whose activations are large


def dst_bytes(src: Path, dst: Path) -> int:
    """Room DST needs: about SRC's size (the same float32 weights), twice for a `.keras`, whose
    weights are built in a temporary file beside it and then streamed into the archive."""
    size = src.stat().st_size if src.is_file() else 0
    return size * (2 if dst.name.lower().endswith(".keras") else 1)


def port(
    src: Path,
    dst: Path,
    *,
    force: bool = False,
    allow_nonfinite: bool = False,
    samples: int | None = None,
    data_dir: str | None = None,
    config: Path | None = None,
    module_py: Path | None = None,
    with_optimizer: bool = False,
    keras_training: bool = False,
    progress: Progress = NO_PROGRESS,
) -> tuple:
    """Check DST can be written, read SRC, check both sides agree layer by layer on real test
    images, write DST. Raises UserError. Returns (Source, Agreement). `progress` is told of
    each stage and batch checked (`fashion_cnn.progress`)."""
    framework_of(src)
    framework_of(dst)
    check_not_input(dst, src)
    from parity import pipeline

    # DST (and --module-py) are checked, their folders probed, before SRC is read.
    check_destination(dst, force=force, need_bytes=dst_bytes(src, dst))
    if module_py is not None:
        check_not_input(module_py, src, dst)
        check_destination(module_py, force=force)
    return pipeline.port(
        src, dst, force=force, allow_nonfinite=allow_nonfinite, samples=samples,
        data_dir=data_dir, config=config, module_py=module_py, with_optimizer=with_optimizer,
        keras_training=keras_training, progress=progress,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        epilog=f"{THREADS_EPILOG} {PROGRESS_EPILOG}",
        prog="python -m parity.port",
        description="Port a checkpoint of the book's CNN, or of any supported Keras "
        f"model, between Keras and PyTorch (formats by extension: {EXTENSIONS}).",
    )
    add_version(p)
    p.add_argument("src", type=Path, help="source checkpoint")
    p.add_argument("dst", type=Path, help="destination checkpoint (written atomically)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="port weights holding NaN/Inf instead of refusing them",
    )
    p.add_argument(
        "--samples",
        type=int_range(1, 10_000),
        default=None,
        help="real test images both models must agree on before writing "
        f"(default: {DEFAULT_SAMPLES}, fewer for a model whose layer outputs are large: the "
        "output says so)",
    )
    p.add_argument(
        "--generic",
        action="store_true",
        help="accepted for old scripts: every port is generic now (the PyTorch module built "
        "from SRC's config, the book's CNN one case)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="the architecture of a .weights.h5 SRC: a .keras or .json model config "
        "(default: the book's CNN)",
    )
    p.add_argument(
        "--module-py",
        type=Path,
        help="also write a readable PyTorch source file of the module",
    )
    p.add_argument(
        "--with-optimizer",
        action="store_true",
        help="also port the optimizer's state (iterations, Adam's moments, …): a .keras "
        "saved compiled ⇄ a .pt laid out as torch_impl.train's last.pt (default: weights only)",
    )
    p.add_argument(
        "--keras-training",
        action="store_true",
        help="the --module-py source's BatchNormalizations train as Keras's (its momentum, the "
        "biased variance in the moving update); the weights file is the same either way",
    )
    p.add_argument(
        "--json",
        type=Path,
        metavar="REPORT",
        help="then check SRC against the DST written, as parity.check does, and write its "
        "report as JSON to REPORT (SRC and DST: one Keras and one PyTorch file)",
    )
    add_data_dir(p)
    return p


def report_pair(src: Path, dst: Path) -> tuple[Path, Path]:
    """(the Keras file, the PyTorch file) of a port that --json can check; refused otherwise."""
    kinds = {framework_of(src): src, framework_of(dst): dst}
    if set(kinds) != {"keras", "torch"}:
        raise UserError(f"--json: {src} → {dst} has no PyTorch and Keras file to check "
                        f"against each other (use parity.check on two files)")
    return kinds["keras"], kinds["torch"]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keras_training and args.module_py is None:
        parser.error("--keras-training shapes the --module-py source (a weights file is the same "
                     "either way; in Python: parity.load_torch_model(path, keras_training=True))")
    if args.json:  # before the work, as parity.check refuses it
        pair = report_pair(args.src, args.dst)
        check_json_destination(args.json, args.src, args.dst)
    with Progress.from_env(PORT_STAGES) as progress:  # cleared before anything is printed
        source, result = port(
            args.src,
            args.dst,
            force=args.force,
            allow_nonfinite=args.allow_nonfinite,
            samples=args.samples,
            data_dir=args.data_dir,
            config=args.config,
            module_py=args.module_py,
            with_optimizer=args.with_optimizer,
            keras_training=args.keras_training,
            progress=progress,
        )
    from parity.verify.report import layer_table

    print(one_line(f"{args.src} → {args.dst}"))
    n_params = sum(int(np.prod(r.keras_shape)) for r in source.built.rows)
    print(one_line(f"read: {source.layout} ({len(source.built.rows)} tensors, "
                   f"{n_params:,} parameters)"))
    print(layer_table(source.built))
    print(f"checked against: {result.keras_side} vs torch {torch.__version__} (CPU), "
          f"on {result.images}")
    if result.note:
        print(f"images: {result.note}")
    worst = max(result.layers, key=lambda d: d.used)
    print(f"every layer within tolerance ({RULE}): worst {one_line(worst.name)} used "
          f"{worst.used:.3f} of it (max |diff| {worst.max_abs:.3e}, scale {worst.scale:.3g}); "
          f"output max |diff| {result.max_abs:.3e}")
    if result.agreeing is not None:
        ties = f" (and {result.ties} ties within atol {ATOL:g})" if result.ties else ""
        print(f"predictions agreeing: {result.agreeing}/{result.samples}{ties}")
    if result.nonfinite:
        print(f"not compared: {result.nonfinite} test images with NaN/Inf outputs "
              f"(--allow-nonfinite)")
    if result.optimizer:
        print(f"optimizer state: {result.optimizer}")
    if args.module_py:
        print(one_line(f"module source: {args.module_py}"))
    if not args.json:
        return 0
    # The same report as `parity.check --json`, of the two files now on disk.
    with Progress.from_env(CHECK_STAGES) as progress:
        report = run_check(*pair, samples=args.samples, data_dir=args.data_dir,
                           config=args.config if pair[0] == args.src else None,
                           progress=progress)
    write_report(report, args.json)
    print(one_line(f"check report: {args.json} ({'PASS' if report['passed'] else 'FAIL'})"))
    return report_status(report)


if __name__ == "__main__":
    sys.exit(main())
