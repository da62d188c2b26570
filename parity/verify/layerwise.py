"""The check's comparison of two sides, layer by layer, within budgets stated here rather than by
what a file says.

Both sides run on the same images, a batch at a time; each layer's outputs are compared as they
come (`parity.verify.compare.RunningDiff` keeps the running maxima) and dropped, so the check
holds one batch's layer outputs at most, whatever the model's depth or input size. The batch
comes from a byte budget; where the user does not say how many images to compare, their number
comes from a budget of activation values computed, with a floor, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fashion_cnn.errors import UserError
from parity.verify.compare import ATOL, LayerDiff, RunningDiff, real_disagreements

# Bytes of layer outputs in flight at once beyond the model's weights: both sides' float32
# outputs of one batch, the Keras-layout copy of one, and one layer's float64 comparison.
# The budget is CHECK_BYTES and 1/WEIGHT_SHARE of the bytes of weights the file really holds:
# a large model's maps get some more room, but the check never holds as much again as the
# weights (which both sides hold already), and a batch is cut to one image, or a pass to a range
# of layers, before it grows past that.
CHECK_BYTES = 256 << 20
WEIGHT_SHARE = 4
# float32 outputs on each side (4 + 4), the PyTorch side's Keras-layout copy (4), Keras's own
# buffers while it predicts (4); the comparison works on slices of COMPARE_VALUES at a time.
BYTES_PER_VALUE = 16
COMPARE_VALUES = 1 << 20
# Activation values computed per side when the number of images is left to the check: the
# book's CNN (50,000 per image) keeps its 1,000 images; ResNet50 at 224×224 compares 16.
CHECK_VALUES = 1 << 27
MIN_SAMPLES = 16
MAX_BATCH = 250  # images per forward pass when memory allows more


def values_per_image(input_shape: Sequence[int], layer_shapes: Sequence[Sequence[int]]) -> int:
    """Activation values one image makes: its input and every layer's output (Python ints)."""
    return math.prod(input_shape) + sum(math.prod(s) for s in layer_shapes)


class Images:
    """The images a check runs on, made a batch at a time: slices of the real test set, or,
    for a model Fashion-MNIST cannot fill, seeded uniform [0, 1) images — each drawn from its
    own index, so a batch of any size holds the same images and none is held beyond it."""

    def __init__(self, shape: Sequence[int], count: int, test_set: np.ndarray | None = None,
                 description: str = "", labels: np.ndarray | None = None) -> None:
        self.shape, self.test_set, self.labels = tuple(shape), test_set, labels
        self.count = count if test_set is None else min(count, len(test_set))
        self.description = description

    def __len__(self) -> int:
        return self.count

    def batch(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.count)
        if self.test_set is not None:
            return self.test_set[start:stop].reshape(-1, *self.shape)
        out = np.empty((stop - start, *self.shape), np.float32)
        for i in range(start, stop):
            out[i - start] = np.random.default_rng([0, i]).random(self.shape, dtype=np.float32)
        return out

    def first(self, n: int) -> Images:
        return Images(self.shape, min(n, self.count), self.test_set, self.description,
                      self.labels)


@dataclass(frozen=True)
class Plan:
    samples: int  # images to compare
    batch: int  # images per pass through both sides
    note: str  # why fewer images than asked for by default, or ""
    # the layers compared in one pass, as (start, stop) ranges of the probes: one range where
    # every layer's outputs of an image fit the budget, else as few as fit (each pass runs
    # both models on the batch again, keeping only its range's outputs)
    groups: tuple[tuple[int, int], ...] = ()


def _groups(sizes: Sequence[int], fixed: int, budget: int) -> list[tuple[int, int]] | None:
    """Contiguous ranges of `sizes` (bytes per image) each within `budget` with `fixed` (the
    input's) added; None where one alone does not fit."""
    groups, start, used = [], 0, fixed
    for i, size in enumerate(sizes):
        if fixed + size > budget:
            return None
        if used + size > budget:
            groups.append((start, i))
            start, used = i, fixed
        used += size
    groups.append((start, len(sizes)))
    return groups


def plan(
    input_shape: Sequence[int], layer_shapes: Sequence[Sequence[int]], weight_bytes: int,
    requested: int | None, default: int, source: str,
) -> Plan:
    """How many images, in batches of how many, the check can afford.

    The byte budget grows by a quarter of the weights the file really holds (their shapes are
    checked against its bytes before the check), so a large real model gets more room for its
    activations while a small file that declares huge maps is refused: one line, before any
    work."""
    per_image = values_per_image(input_shape, layer_shapes)
    budget = CHECK_BYTES + weight_bytes // WEIGHT_SHARE
    need = per_image * BYTES_PER_VALUE
    sizes = [math.prod(s) * BYTES_PER_VALUE for s in layer_shapes]
    groups = _groups(sizes, math.prod(input_shape) * BYTES_PER_VALUE, budget)
    if groups is None:
        raise UserError(
            f"{source}: one image's output of one layer takes more than the check's budget of "
            f"{budget:,} bytes on the two sides ({need:,} for all of them); refused"
        )
    need = max(math.prod(input_shape) * BYTES_PER_VALUE + sum(sizes[a:b]) for a, b in groups)
    note = ""
    samples = requested
    if samples is None:
        samples = min(default, max(MIN_SAMPLES, CHECK_VALUES // max(per_image, 1)))
        if samples < default:
            note = (f"{default:,} by default, cut to {samples:,} to keep to the check's budget "
                    f"of {CHECK_VALUES:,} activation values (--samples sets it)")
    batch = max(1, min(MAX_BATCH, samples, budget // max(need, 1)))
    return Plan(samples, batch, note, tuple(groups))


@dataclass
class Layerwise:
    """What the layer-by-layer comparison found."""

    layers: list[LayerDiff]
    compared: int  # images compared (those with non-finite outputs left out, if allowed)
    nonfinite: int  # images left out
    agreeing: int | None  # argmax agreements of a 2-D output
    ties: int  # argmaxes that differ by a tie within ATOL
    real: int  # argmaxes that differ beyond a tie

    @property
    def output(self) -> LayerDiff:
        return self.layers[-1]


def _finite_rows(outputs: list[np.ndarray]) -> np.ndarray:
    """Per image: True where every output holds only finite values."""
    rows = np.ones(len(outputs[0]), dtype=bool)
    for out in outputs:
        rows &= np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    return rows


def compare_layerwise(
    names: Sequence[str],
    keras_side: Callable[..., list[np.ndarray]],
    torch_side: Callable[..., list[np.ndarray]],
    images: Images,
    batch: int,
    *,
    allow_nonfinite: bool = False,
    groups: Sequence[tuple[int, int]] = (),
    tick: Callable[[int], None] | None = None,
) -> Layerwise:
    """Each side's outputs of every layer (Keras layout) on `images`, a batch at a time, and
    within a batch a range of layers at a time (`groups`, from the plan; each side is called as
    `side(x, start, stop)` and gives those probes' outputs).

    With `allow_nonfinite`, images with a NaN/Inf output in a range's layers on either side
    are left out of that range (the frameworks propagate NaN differently, e.g. through max
    pooling) and counted once. `tick(n)`, if given, is called as each batch of n is done."""
    running = [RunningDiff(name) for name in names]
    agree = Agreement()
    nonfinite = 0
    groups = tuple(groups) or ((0, len(names)),)
    for start in range(0, len(images), batch):
        x = images.batch(start, start + batch)
        left_out = np.zeros(len(x), dtype=bool)
        for a, b in groups:
            ko, to = keras_side(x, a, b), torch_side(x, a, b)
            if len(ko) != b - a or len(to) != b - a:
                raise AssertionError("a side returned another number of layer outputs")
            scales = getattr(to, "scales", None) or [None] * (b - a)  # before activations
            if allow_nonfinite:
                rows = _finite_rows(ko) & _finite_rows(to)
                left_out |= ~rows
                ko, to = [k[rows] for k in ko], [t[rows] for t in to]
                scales = [s if s is None else s[rows] for s in scales]
            last_k, last_t = ko[-1], to[-1]
            for i, diff in enumerate(running[a:b]):
                diff.update(ko[i], to[i], floor=scales[i])
                ko[i] = to[i] = None  # type: ignore[call-overload]  (freed once compared)
            if b == len(names):
                agree.update(last_k, last_t)
        nonfinite += int(left_out.sum())
        if tick is not None:
            tick(len(x))
    return Layerwise([d.result() for d in running], len(images) - nonfinite, nonfinite,
                     agree.agreeing, agree.ties, agree.real)


class Agreement:
    """Argmax agreement of 2-D outputs, counted over batches (None for other outputs), and each
    side's correct predictions where the images have labels."""

    def __init__(self) -> None:
        self.agreeing: int | None = None
        self.ties = self.real = self.count = 0
        self.correct: list[int] | None = None  # Keras's, PyTorch's

    def update(self, keras: np.ndarray, torch: np.ndarray,
               labels: np.ndarray | None = None) -> None:
        if keras.ndim != 2 or keras.shape != torch.shape or not len(keras):
            return
        same = int((keras.argmax(1) == torch.argmax(1)).sum())
        real = int(real_disagreements(keras, torch, atol=ATOL).size)
        self.agreeing = (self.agreeing or 0) + same
        self.real += real
        self.ties += len(keras) - same - real
        self.count += len(keras)
        if labels is not None and len(labels) == len(keras):
            k, t = int((keras.argmax(1) == labels).sum()), int((torch.argmax(1) == labels).sum())
            self.correct = [(self.correct or [0, 0])[0] + k, (self.correct or [0, 0])[1] + t]


def compare_outputs(
    keras_final: Callable[[np.ndarray], np.ndarray],
    torch_final: Callable[[np.ndarray], np.ndarray],
    images: Images,
    batch: int,
    tick: Callable[[int], None] | None = None,
) -> tuple[LayerDiff, Agreement]:
    """The two sides' final outputs on `images`, a batch at a time: one comparison and the
    argmax agreement; `tick(n)`, if given, is called as each batch of n is done."""
    diff, agree = RunningDiff("outputs (all)"), Agreement()
    for start in range(0, len(images), batch):
        x = images.batch(start, start + batch)
        k, t = keras_final(x), torch_final(x)
        diff.update(k, t)
        labels = None if images.labels is None else images.labels[start : start + len(x)]
        agree.update(k, t, labels)
        if tick is not None:
            tick(len(x))
    return diff.result(), agree
