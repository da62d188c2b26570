"""Port a checkpoint of the book's CNN between Keras and PyTorch, exactly.

    python -m parity.port SRC DST [--force] [--allow-nonfinite] [--samples N]

Formats come from the extensions: `.keras`, `.h5`, `.weights.h5` (Keras) ⇄ `.pt`, `.pth`,
`.safetensors` (PyTorch); same-framework conversions work too. The flow is one way: file → arrays
in the source layout → the mapping table (`parity.mapping`) → arrays in the target layout → both
models run on real test images and must agree within tolerance → file, written atomically
(a temporary file beside DST, then a rename). Nothing from SRC is ever executed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from fashion_cnn.cli import add_data_dir, int_range
from fashion_cnn.errors import UserError, cli_entry
from fashion_cnn.files import check_destination
from parity.compare import ATOL
from parity.keras_files import write_keras_file
from parity.mapping import TABLE
from parity.runners import load_test_images
from parity.weights import EXTENSIONS, Agreement, framework_of, read_weights, verify
from torch_impl.checkpoint import save_state_dict

DEFAULT_SAMPLES = 1000
# Room DST needs: the float32 weights plus 64 KiB for the file's own structure (zip, HDF5).
DST_BYTES = 4 * sum(int(np.prod(row.torch_shape)) for row in TABLE) + 2**16


def port(
    src: Path,
    dst: Path,
    *,
    force: bool = False,
    allow_nonfinite: bool = False,
    samples: int = DEFAULT_SAMPLES,
    data_dir: str | None = None,
) -> Agreement:
    """Check DST can be written, read SRC, check both models agree on real test images, write
    DST. Raises UserError."""
    framework_of(src)
    dst_framework = framework_of(dst)
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists() and src.samefile(dst)):
        raise UserError(f"{dst}: the destination is the source file; choose another name")
    # DST is checked (and its folder probed) before SRC is read and the models are run.
    check_destination(dst, force=force, need_bytes=DST_BYTES)
    weights = read_weights(src, allow_nonfinite=allow_nonfinite)
    images, _ = load_test_images(data_dir)
    result = verify(weights, images[:samples], allow_nonfinite=allow_nonfinite)
    if not result.passed:
        raise UserError(
            f"{src}: refused to write {dst}: the two models disagree on {result.samples} test "
            f"images (max |diff| of probabilities {result.max_abs:.3e} > {ATOL:g}, "
            f"{result.samples - result.agreeing} predictions differ)"
        )
    if dst_framework == "keras":
        write_keras_file(weights.keras, dst, force=force)
    else:
        save_state_dict(
            {k: torch.from_numpy(v) for k, v in weights.torch.items()}, dst, force=force
        )
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m parity.port",
        description="Port a checkpoint of the book's CNN between Keras and PyTorch "
        f"(formats by extension: {EXTENSIONS}).",
    )
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
        default=DEFAULT_SAMPLES,
        help="real test images both models must agree on before writing "
        f"(default: {DEFAULT_SAMPLES})",
    )
    add_data_dir(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = port(
        args.src,
        args.dst,
        force=args.force,
        allow_nonfinite=args.allow_nonfinite,
        samples=args.samples,
        data_dir=args.data_dir,
    )
    n_params = sum(int(np.prod(row.torch_shape)) for row in TABLE)
    print(f"{args.src} → {args.dst}")
    print(f"read: {result.source}")
    print(f"tensors mapped: {len(TABLE)} ({n_params:,} parameters)")
    print(f"checked against: {result.keras_side} vs torch {torch.__version__} (CPU)")
    print(
        f"max |diff| of probabilities on {result.samples} test images: {result.max_abs:.3e} "
        f"(tolerance {ATOL:g})"
    )
    print(f"predictions agreeing: {result.agreeing}/{result.samples}")
    if result.nonfinite:
        print(
            f"not compared: {result.nonfinite} test images with NaN/Inf outputs (--allow-nonfinite)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
