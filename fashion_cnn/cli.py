"""The command-line options every CLI shares, declared and checked in one place.

Bad usage is argparse's business: each value is checked by an argparse `type`, so a bad value
exits with status 2 and argparse's usage line, in every CLI alike. Failures of the work itself
(a bad file, an absent GPU) are `UserError`s: status 1, one line.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from importlib import metadata

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
PROG_PREFIX = "python -m "
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
SEED_MAX = 2**32 - 1  # numpy's and Keras's seeds are 32-bit


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def positive_int(value: str) -> int:
    """An argparse type: a whole number ≥ 1."""
    n = _int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {value}")
    return n


def non_negative_int(value: str) -> int:
    """An argparse type: a whole number ≥ 0."""
    n = _int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return n


def seed_int(value: str) -> int:
    """An argparse type: a seed numpy and Keras accept, 0 … 2³²−1."""
    n = _int(value)
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, not {value}")
    return n


def positive_float(value: str) -> float:
    """An argparse type: a finite number > 0 (rejects nan and inf)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, not {value}")
    return x


def int_range(low: int, high: int):
    """An argparse type: a whole number in [low, high]."""

    def check(value: str) -> int:
        n = _int(value)
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}")
        return n

    check.__name__ = f"int in [{low}, {high}]"
    return check


def device_spec(value: str) -> str:
    """An argparse type: the form of a device name; whether it is present is checked later."""
    value = value.strip().lower()
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid device {value!r} (choose auto, cpu, cuda, cuda:N or mps)"
        )
    return value


def add_device(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """--device: auto, cpu, cuda, cuda:N or mps (an absent device is an error, never a
    silent fallback)."""
    parser.add_argument(
        "--device",
        type=device_spec,
        default=default,
        metavar=DEVICE_CHOICES,
        help="PyTorch device; auto picks cuda > mps > cpu, an absent device is an error "
        f"(default: {default})",
    )


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """--data-dir: where the four Fashion-MNIST IDX files are."""
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="Fashion-MNIST directory (default: $FASHION_MNIST_DIR, Debian's "
        "dataset-fashion-mnist, then the user cache; see README)",
    )


def add_out(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--out DIR: the folder a command fills (checked before the work)."""
    if default is None:
        parser.add_argument("--out", required=True, metavar="DIR", help=what)
    else:
        parser.add_argument("--out", default=default, metavar="DIR",
                            help=f"{what} (default: {default})")


def add_image_index(parser: argparse.ArgumentParser) -> None:
    """--index N: the training image whose feature maps 8-3 draws (the book's train_input[0])."""
    parser.add_argument("--index", type=non_negative_int, default=0, metavar="N",
                        help="train_input index for the feature maps (default: 0)")


def add_seed(parser: argparse.ArgumentParser, what: str, default: int = 42) -> None:
    """--seed: 0 … 2³²−1."""
    parser.add_argument("--seed", type=seed_int, default=default,
                        help=f"{what}, 0 … 2^32-1 (default: {default})")


# The book's recipe (8-2), as both trainers take it.
EPOCHS, BATCH_SIZE, PATIENCE, SEED = 20, 32, 2, 42


def add_recipe(parser: argparse.ArgumentParser, out: str, seed_help: str = "random seed") -> None:
    """The options both trainers share, with the book's values as defaults: --epochs,
    --batch-size, --patience, --seed, --out, --limit (and --data-dir)."""
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS,
                        help=f"maximum epochs (default: {EPOCHS})")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                        help=f"batch size (default: {BATCH_SIZE})")
    parser.add_argument("--patience", type=non_negative_int, default=PATIENCE,
                        help=f"early-stopping patience (default: {PATIENCE})")
    add_seed(parser, seed_help, SEED)
    add_out(parser, out, "output directory")
    parser.add_argument("--limit", type=non_negative_int, default=0, metavar="N",
                        help="train on the first N training examples only, for smoke runs "
                             "(default: 0 = all 48,000)")
    add_data_dir(parser)


def version_line(command: str) -> str:
    """`parity.port 0.1.0 (torch 2.14.1, keras 3.15.1)`, or `keras absent`: read from the
    installed distributions' metadata, so neither torch nor TensorFlow is imported."""
    from fashion_cnn import __version__

    def installed(name: str) -> str:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return f"{name} absent"

    return f"{command} {__version__} ({installed('torch')}, {installed('keras')})"


class _Version(argparse.Action):
    """--version: the line is made when asked for, not when the parser is built."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line(parser.prog.removeprefix(PROG_PREFIX)), file=sys.stdout)
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> None:
    """--version: the command, the project's version and torch's and Keras's."""
    parser.add_argument("--version", action=_Version,
                        help="print the version (and torch's and Keras's) and exit")
