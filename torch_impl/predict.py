"""8-2: what the book's CNN predicts for an image — the book's `model.predict(val_scaled[0:1])`.

    python -m torch_impl.predict CKPT [IMAGE.png …] [--index N …] [--split val|test] [--lang en|ko]
                                      [--top 3] [--json]

With neither an index nor an image it predicts the first validation image, the book's example
(a Bag, 가방, with probability ≈ 1.0 for a trained model). Class names are English by default and
the book's Korean with `--lang ko`.

Image files are read with Pillow, converted to 8-bit grayscale and, when not 28×28, resized to
28×28 (the aspect ratio is not kept), then scaled to [0, 1] exactly as the data set is.
Fashion-MNIST shows a light garment on a dark (black) background; images are used as they are,
never inverted, so a dark garment photographed on white will be misclassified.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fashion_cnn.threads import THREADS_EPILOG, prepare_cli_env

# The thread policy, set before torch loads its OpenMP runtime, which reads it once
# (fashion_cnn/threads.py); only as a command line, never on a library import.
if __name__ == "__main__":
    prepare_cli_env()

import numpy as np
import torch
from torch import nn

from fashion_cnn.cli import add_data_dir, add_device, add_version, int_range, non_negative_int
from fashion_cnn.errors import UserError, cli_entry, first_line
from fashion_cnn.fashion_mnist import CLASS_NAMES, CLASS_NAMES_KO
from torch_impl.checkpoint import load_model
from torch_impl.data import load_book_data
from torch_impl.device import resolve_device
from torch_impl.model import INPUT_SHAPE, NUM_CLASSES, predict_proba

NAMES = {"en": CLASS_NAMES, "ko": CLASS_NAMES_KO}
IMAGE_SIZE = INPUT_SHAPE[1:]  # (28, 28)


@dataclass(frozen=True)
class Prediction:
    source: str  # "val[0]" or the image file
    label: int | None  # the data set's label for an indexed image; None for a file
    predicted: int
    probabilities: list[float]  # (10,) softmax output, class order 0..9


# Raster formats Pillow decodes itself. Others it knows are left out on purpose: EPS is rendered
# by running Ghostscript, and nothing named by a downloaded file should run a program.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def load_image(path: str | Path) -> torch.Tensor:
    """An image file → (1, 28, 28) float32 in [0, 1], as the data set scales its uint8 pixels.

    Converted to 8-bit grayscale; other sizes are resized to 28×28 (Lanczos). Not inverted:
    the model expects a light garment on a dark background, like Fashion-MNIST. Any failure
    of Pillow's on the file (whatever its exception type) and a decompression bomb (an image of
    more than Pillow's MAX_IMAGE_PIXELS) are a UserError naming the file.
    """
    import warnings

    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse there too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                image.load()
                if image.mode.startswith(("I", "F")):
                    # Pillow's conversion to 8-bit clips 16-bit and float pixels instead of
                    # scaling them.
                    raise UserError(
                        f"{path}: {image.mode} pixels (16-bit or float) are not supported; "
                        f"save the image with 8-bit pixels"
                    )
                gray = image.convert("L")
                if gray.size != IMAGE_SIZE[::-1]:
                    gray = gray.resize(IMAGE_SIZE[::-1], Image.Resampling.LANCZOS)
                # uint8 / 255.0 in float64, then float32: the data set's `x / 255.0` values.
                pixels = np.asarray(gray, dtype=np.float64) / 255.0  # (28, 28)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a decoder's failure on a bad file, of any type
        msg = first_line(err)
        raise UserError(f"{path}: not a readable image ({type(err).__name__}: {msg})") from None
    if pixels.shape != IMAGE_SIZE:
        raise UserError(f"{path}: not a readable image (decoded to shape {pixels.shape})")
    return torch.from_numpy(pixels.astype(np.float32)).unsqueeze(0)


def predict(
    model: nn.Module, images: torch.Tensor, sources: list[str], labels: list[int | None]
) -> list[Prediction]:
    """One Prediction per image in `images` (N, 1, 28, 28)."""
    probs = predict_proba(model, images)  # (N, 10)
    return [
        Prediction(source, label, int(p.argmax()), [float(v) for v in p])
        for source, label, p in zip(sources, labels, probs, strict=True)
    ]


def format_prediction(pred: Prediction, names: tuple[str, ...], top: int) -> str:
    """`val[0]: Bag (8), probability 0.9998 · label Bag (8), correct`, then the `top` most likely
    classes with their probabilities, one per line."""
    best = pred.predicted
    head = f"{pred.source}: {names[best]} ({best}), probability {pred.probabilities[best]:.4f}"
    if pred.label is not None:
        mark = "correct" if pred.label == pred.predicted else "wrong"
        head += f" · label {names[pred.label]} ({pred.label}), {mark}"
    order = np.argsort(pred.probabilities, kind="stable")[::-1][:top]
    lines = [head] + [f"  {pred.probabilities[c]:.4f}  {names[c]} ({c})" for c in order]
    return "\n".join(lines)


def prediction_record(pred: Prediction, names: tuple[str, ...], top: int) -> dict:
    order = np.argsort(pred.probabilities, kind="stable")[::-1][:top]
    record = asdict(pred)
    record["name"] = names[pred.predicted]
    record["probability"] = pred.probabilities[pred.predicted]
    record["label_name"] = None if pred.label is None else names[pred.label]
    record["top"] = [
        {"class": int(c), "name": names[c], "probability": pred.probabilities[c]} for c in order
    ]
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torch_impl.predict",
        description="Class and probabilities that a checkpoint of the book's CNN gives for data "
        "set images (by index) or image files. Without --index or IMAGE: the first validation "
        "image, the book's example.",
        epilog="Image files: PNG (recommended), JPEG, BMP, GIF, TIFF, WebP or PPM; converted to "
        "grayscale and resized to 28x28 when needed. Like Fashion-MNIST they should show a light "
        "garment on a dark background; they are never inverted. " + THREADS_EPILOG,
    )
    add_version(parser)
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        help="a .pt/.pth state_dict or a .safetensors file of the book's CNN",
    )
    parser.add_argument(
        "images",
        metavar="IMAGE",
        nargs="*",
        help="image files to classify (give them before --index)",
    )
    parser.add_argument(
        "--index",
        type=non_negative_int,
        nargs="+",
        action="extend",
        default=[],
        metavar="N",
        help="indices into --split to classify (default: 0 when no IMAGE is given)",
    )
    parser.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="the data set images --index refers to: the book's 12,000 validation "
        "or the 10,000 test images (default: val)",
    )
    parser.add_argument(
        "--lang",
        choices=tuple(NAMES),
        default="en",
        help="class names in English or the book's Korean (default: en)",
    )
    parser.add_argument(
        "--top",
        type=int_range(1, NUM_CLASSES),
        default=3,
        metavar="K",
        help="how many of the most likely classes to list (default: 3)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object, with a record per image holding all 10 "
        "probabilities (default: text)",
    )
    add_device(parser)
    add_data_dir(parser)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    indices = args.index or ([] if args.images else [0])
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)

    # Read every input before predicting anything: a bad one fails the whole command cleanly.
    images, sources, labels = [], [], []
    for path in args.images:
        images.append(load_image(path))
        sources.append(str(path))
        labels.append(None)
    if indices:
        x, y = load_book_data(args.data_dir).split(args.split)
        for i in indices:
            if not 0 <= i < len(x):
                raise UserError(f"--index {i} is out of range for {args.split} (0 to {len(x) - 1})")
            images.append(x[i])
            sources.append(f"{args.split}[{i}]")
            labels.append(int(y[i]))

    names = NAMES[args.lang]
    preds = predict(model, torch.stack(images), sources, labels)
    if args.json:
        record = {
            "checkpoint": str(args.checkpoint),
            "device": str(device),
            "predictions": [prediction_record(p, names, args.top) for p in preds],
        }
        print(json.dumps(record, ensure_ascii=False))
    else:
        for pred in preds:
            print(format_prediction(pred, names, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
