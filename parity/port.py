"""Port a checkpoint of the book's CNN — or, with --generic, of any supported Keras chain —
between Keras and PyTorch, exactly.

    python -m parity.port SRC DST [--force] [--allow-nonfinite] [--samples N]
    python -m parity.port SRC DST --generic [--config model.keras|.json] [--module-py model.py]

Formats come from the extensions: `.keras`, `.h5`, `.weights.h5` (Keras) ⇄ `.pt`, `.pth`,
`.safetensors` (PyTorch); same-framework conversions work too. The flow is one way: file → arrays
in the source layout → the mapping table (`parity.mapping`) → arrays in the target layout → both
models run on real test images and must agree within tolerance → file, written atomically
(a temporary file beside DST, then a rename). Nothing from SRC is ever executed.

With --generic (implied by --config and --module-py, and by a PyTorch SRC that carries its
architecture), the PyTorch module is built from SRC's Keras config by one converter per layer
(`parity.generic`); both sides are compared layer by layer and a layer table is printed. Without
it the book's CNN is the only architecture accepted, exactly as before.
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
    generic: bool = False,
    config: Path | None = None,
    module_py: Path | None = None,
) -> Agreement | tuple:
    """Check DST can be written, read SRC, check both models agree on real test images, write
    DST. Raises UserError.

    Returns the book's Agreement, or (Source, GenericAgreement) on the generic path."""
    framework_of(src)
    dst_framework = framework_of(dst)
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists() and src.samefile(dst)):
        raise UserError(f"{dst}: the destination is the source file; choose another name")
    from parity.generic_files import carries_architecture

    if generic or config is not None or module_py is not None or carries_architecture(src):
        from parity.generic_port import port_generic

        # DST (and --module-py) checked before SRC is read; room for about SRC's size.
        need = src.stat().st_size if src.is_file() else 0
        check_destination(dst, force=force, need_bytes=need)
        if module_py is not None:
            check_destination(module_py, force=force)
        return port_generic(
            src, dst, force=force, allow_nonfinite=allow_nonfinite, samples=samples,
            data_dir=data_dir, config=config, module_py=module_py,
        )
    # DST is checked (and its folder probed) before SRC is read and the models are run.
    check_destination(dst, force=force, need_bytes=DST_BYTES)
    try:
        weights = read_weights(src, allow_nonfinite=allow_nonfinite)
    except UserError as err:
        if "the book's CNN has" in str(err):  # another architecture: say how to port it
            raise UserError(f"{err} (another supported Keras chain ports with --generic)") from None
        raise
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
    p.add_argument(
        "--generic",
        action="store_true",
        help="port any supported Keras Sequential/single-chain model, the PyTorch module built "
        "from its config (default: only the book's CNN)",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="the architecture of a .weights.h5 SRC: a .keras or .json model config "
        "(implies --generic)",
    )
    p.add_argument(
        "--module-py",
        type=Path,
        help="also write a readable PyTorch source file of the module (implies --generic)",
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
        generic=args.generic,
        config=args.config,
        module_py=args.module_py,
    )
    if isinstance(result, tuple):
        _print_generic(args, *result)
        return 0
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


def _print_generic(args: argparse.Namespace, source, result) -> None:
    from parity.generic_port import layer_table

    print(f"{args.src} → {args.dst}")
    n_params = sum(int(np.prod(r.keras_shape)) for r in source.built.rows)
    print(f"read: {source.layout} ({len(source.built.rows)} tensors, {n_params:,} parameters)")
    print(layer_table(source.built))
    print(f"checked against: {result.keras_side} vs torch {torch.__version__} (CPU), "
          f"on {result.images}")
    worst = max(result.layers, key=lambda d: d.max_abs)
    print(f"every layer within atol {ATOL:g}: worst {worst.name} max |diff| {worst.max_abs:.3e}; "
          f"output max |diff| {result.max_abs:.3e}")
    if result.agreeing is not None:
        print(f"predictions agreeing: {result.agreeing}/{result.samples}")
    if args.module_py:
        print(f"module source: {args.module_py}")


if __name__ == "__main__":
    sys.exit(main())
