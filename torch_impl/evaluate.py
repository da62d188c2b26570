"""8-2: evaluate a checkpoint of the book's CNN — Keras's `model.evaluate(val_scaled, val_target)`.

    python -m torch_impl.evaluate CKPT [--split val|test] [--device auto] [--batch-size 256]
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

import torch
import torch.nn.functional as F
from torch import nn

from torch_impl.checkpoint import load_model
from torch_impl.data import load_book_data
from torch_impl.device import DEVICE_CHOICES, resolve_device
from torch_impl.errors import cli_entry

SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float  # mean cross-entropy per example
    correct: int
    total: int


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> EvalResult:
    """Accuracy and mean cross-entropy of `model` (logits out) on images x (N, 1, 28, 28) with
    labels y (N,).

    Runs in eval mode (dropout off) on the model's device; the loss is summed per batch in float64
    and divided by N, so the batch size changes the result only by float32 rounding inside a batch.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images, and at least one: {len(x)} vs {len(y)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Per-batch sums stay on the device (no host sync per batch; MPS has no float64).
    loss_sums, corrects = [], []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            logits = model(xb)  # (B, 10)
            loss_sums.append(F.cross_entropy(logits, yb, reduction="sum"))
            corrects.append((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    total = len(y)
    loss = torch.stack(loss_sums).cpu().double().sum().item() / total
    correct = int(torch.stack(corrects).sum().item())
    return EvalResult(accuracy=correct / total, loss=loss, correct=correct, total=total)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torch_impl.evaluate",
        description="Accuracy and loss of a checkpoint of the book's CNN on the validation or "
        "test images (Keras's model.evaluate).",
    )
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
    parser.add_argument(
        "--device",
        default="auto",
        metavar=DEVICE_CHOICES,
        help="where to run; auto picks cuda, then mps, then cpu; a device that is "
        "not present is an error, never a silent fallback (default: auto)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        metavar="N",
        help="images per forward pass; does not change the result beyond float "
        "rounding (default: 256)",
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
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of the four Fashion-MNIST IDX files (default: "
        "$FASHION_MNIST_DIR, Debian's dataset-fashion-mnist, then the user cache)",
    )
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)
    x, y = load_book_data(args.data_dir).split(args.split)
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    result = evaluate(model, x, y, args.batch_size)
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
