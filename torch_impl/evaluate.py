"""8-2: evaluate a checkpoint of the book's CNN — Keras's `model.evaluate(val_scaled, val_target)`.

    python -m torch_impl.evaluate CKPT [--split val|test] [--device auto] [--batch-size 64]
                                       [--limit N] [--json] [--data-dir DIR]

Prints accuracy, loss (mean sparse categorical cross-entropy over the split, the number Keras's
evaluate reports) and the count of correct predictions. CKPT is a `.pt`/`.pth` state_dict or a
`.safetensors` file; anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from fashion_cnn.threads import THREADS_EPILOG, prepare_cli_env

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import torch
import torch.nn.functional as F
from torch import nn

from fashion_cnn.cli import add_data_dir, add_device, add_version, positive_int
from fashion_cnn.errors import cli_entry
from torch_impl.checkpoint import load_model
from torch_impl.data import load_book_data
from torch_impl.device import preferred_memory_format, resolve_device
from torch_impl.model import EVAL_BATCH_SIZE, PoolFirst

SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float  # mean cross-entropy per example
    correct: int
    total: int


@torch.inference_mode()
def evaluate_sums(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed cross-entropy (float32) and the count of correct predictions (int64) of
    `model` (logits out) on images x (N, 1, 28, 28) with labels y (N,), as 0-d tensors on the
    model's device; (0, 0) for no images. What `evaluate` divides, and what a distributed run
    all-reduces (`torch_impl.distributed.evaluate`).

    Runs in eval mode (dropout off). Sums stay on the device in float32, as Keras's metrics keep
    them (and MPS has no float64), and are read by the caller: no host synchronisation per batch.
    """
    if len(x) != len(y):
        raise ValueError(f"need as many labels as images: {len(x)} vs {len(y)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            logits = model(xb)  # (B, 10)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    return loss_sum, correct


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> EvalResult:
    """Accuracy and mean cross-entropy of `model` (logits out) on images x (N, 1, 28, 28) with
    labels y (N,) — what Keras's `model.evaluate` reports. The trainer's validation uses it too.

    Runs in eval mode (dropout off) on the model's device; the sums are `evaluate_sums`'s, read
    once at the end.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images, and at least one: {len(x)} vs {len(y)}")
    loss_sum, correct = evaluate_sums(model, x, y, batch_size)
    return result_from_sums(loss_sum.item(), int(correct.item()), len(y))


def result_from_sums(loss_sum: float, correct: int, total: int) -> EvalResult:
    """Keras's two numbers from the sums: accuracy over examples, mean loss per example."""
    return EvalResult(accuracy=correct / total, loss=loss_sum / total, correct=correct, total=total)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        epilog=THREADS_EPILOG,
        prog="python -m torch_impl.evaluate",
        description="Accuracy and loss of a checkpoint of the book's CNN on the validation or "
        "test images (Keras's model.evaluate).",
    )
    add_version(parser)
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a .pt/.pth state_dict or a .safetensors file of the book's CNN",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="val",
        help="the book's 12,000 validation images or the 10,000 test images (default: val)",
    )
    add_device(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=EVAL_BATCH_SIZE,
        metavar="N",
        help="images per forward pass; does not change the result beyond float "
        "rounding (default: 64)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="evaluate only the first N images of the split, for smoke runs (default: all)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text (default: text)"
    )
    add_data_dir(parser)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    fmt = preferred_memory_format(device)
    model = load_model(args.checkpoint, device).to(memory_format=fmt)
    x, y = load_book_data(args.data_dir).split(args.split)
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    x = x.to(device).contiguous(memory_format=fmt)
    result = evaluate(PoolFirst(model), x, y, args.batch_size)
    if args.json:
        record = {"checkpoint": str(args.checkpoint), "split": args.split, "device": str(device)}
        print(json.dumps(record | asdict(result)))
    else:
        print(
            f"{args.split}: accuracy {result.accuracy:.4f} ({result.correct}/{result.total} "
            f"correct), loss {result.loss:.4f}  [{args.checkpoint}, {device}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
