"""Comparing the two frameworks' outputs: tolerances, layouts, one record per layer.

Every comparison is made in Keras's layout (NHWC feature maps, H,W,C flatten order), with the
Keras side as the reference, elementwise, scaled to each layer's own magnitude on each image:

    |torch − keras| ≤ ATOL · max(1, s) + RTOL · |keras|,   s = max |keras| of that layer's
                                                            output on that image

— `numpy.isclose`'s rule (and torch's `assert_close`'s) where a layer's values are of order 1,
which every layer of the book's CNN is. Why the scale: a float32 sum errs in proportion to the
size of its terms, and what a layer adds to the error it is handed is in proportion to its
inputs' size, which its output's size follows through a deep network (ResNet, NASNet and
EfficientNet reach values of 10² and more under random weights; a bound fixed at 1e-5 would
then be a bound on 1e-7 of the values, below float32's own reach in a long sum). Per image, so
a verdict never depends on which images share a batch. For a layer with a fused activation
(Conv2D(activation="sigmoid")), s is also at least its largest |value| before the activation
(PyTorch's, which holds it as a module of its own): the error is made there, and a squashing
activation does not shrink it in proportion. `used` is the largest share of that tolerance an
element used (≤ 1 passes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Float32 parity, as the field measures it: torch.testing.assert_close's float32 default is
# atol 1e-5 / rtol 1.3e-6, HF's TF↔PT tests use 1e-5; issue 3 asks atol = rtol = 1e-5. What it
# bounds: one layer's output computed by two frameworks from the same inputs, which differ only
# in the order of their float32 sums (the 3,136-term dot products of dense1, the 288-term
# convolutions). The rtol scales with the value itself (logits of a trained model reach ~20); the
# atol covers values near zero. A float32 sum blocked as BLAS blocks it (SIMD lanes, then a tree)
# errs by about log2(n)·U32·Σ|terms|, ≈1e-6 of the terms' scale for these layers: measured
# ≤ 4.8e-7 on the book's CNN under the AVX-512, AVX2 and COMPATIBLE paths of MKL and oneDNN
# (make test-numerics), 20× inside.
ATOL = 1e-5
RTOL = 1e-5

RULE = (f"|torch − keras| ≤ {ATOL:g}·max(1, s) + {RTOL:g}·|keras|, s = the layer's max |value| "
        f"on each image (before its activation, where it has one)")

# float32's unit roundoff: every float32 operation is exact to within a factor (1 ± U32).
U32 = 2.0**-24


def sum_rtol(n: int) -> float:
    """A bound, relative to the scale of the summed terms, on how far two float32 sums of the
    same `n` terms can lie apart whatever order each adds them in: each is within
    γ_(n−1)·Σ|x_i| ≤ (n−1)·U32·Σ|x_i| of the exact sum (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., §4.2), so the two within twice that."""
    return 2.0 * n * U32


def ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """The largest number of float32 values between a[i] and b[i] (0: bit for bit; +0 and −0
    count as equal; NaN anywhere gives a huge distance)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape} differ")
    if a.size == 0:
        return 0

    def ordered(x: np.ndarray) -> np.ndarray:  # float32 bits → integers in the floats' order
        bits = x.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return int(np.max(np.abs(ordered(a) - ordered(b))))

@dataclass(frozen=True)
class LayerDiff:
    """One layer's comparison (max_rel over the elements with |keras| > atol; `scale` the
    largest s of RULE over the images; `used` the largest share of the tolerance used)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    scale: float = 1.0
    used: float = 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def compare(
    name: str, keras: np.ndarray, torch: np.ndarray, *, atol: float = ATOL, rtol: float = RTOL,
    floor: np.ndarray | None = None,
) -> LayerDiff:
    """Compare one output; NaN/Inf count as equal only where both sides hold the same value."""
    keras = np.asarray(keras, dtype=np.float64)
    torch = np.asarray(torch, dtype=np.float64)
    if keras.shape != torch.shape:
        return LayerDiff(name, tuple(torch.shape), float("inf"), float("inf"), atol, rtol, False)
    both = np.isfinite(keras) & np.isfinite(torch)
    same_nonfinite = ~both & ((keras == torch) | (np.isnan(keras) & np.isnan(torch)))
    diff = np.abs(torch - keras)
    scale = _scale(np.where(both, np.abs(keras), 0.0))  # per image (first axis), ≥ 1
    if floor is not None:  # each image's magnitude before the layer's activation
        scale = np.maximum(scale, np.asarray(floor, np.float64).reshape(scale.shape))
    bound = atol * scale + rtol * np.abs(keras)
    ok = np.where(both, diff <= bound, same_nonfinite)
    finite_diff = diff[both]
    max_abs = float(finite_diff.max()) if finite_diff.size else 0.0
    used = float((finite_diff / bound[both]).max()) if finite_diff.size else 0.0
    if not (both | same_nonfinite).all():
        max_abs = used = float("inf")
    big = both & (np.abs(keras) > atol)
    max_rel = float((diff[big] / np.abs(keras[big])).max()) if big.any() else 0.0
    return LayerDiff(name, tuple(keras.shape), max_abs, max_rel, atol, rtol, bool(ok.all()),
                     float(scale.max()) if scale.size else 1.0, used)


def _scale(magnitude: np.ndarray) -> np.ndarray:
    """RULE's max(1, s) for each image (the first axis), shaped to broadcast over its values."""
    if magnitude.ndim == 0:
        return np.maximum(1.0, magnitude)
    flat = magnitude.reshape(len(magnitude), -1)
    s = flat.max(axis=1) if flat.shape[1] else np.zeros(len(magnitude))
    return np.maximum(1.0, s).reshape(-1, *([1] * (magnitude.ndim - 1)))


class RunningDiff:
    """One layer's comparison over batches of images, keeping only the running maxima: the
    check never holds a layer's outputs for more images than one batch."""

    def __init__(self, name: str, *, atol: float = ATOL, rtol: float = RTOL) -> None:
        self.name, self.atol, self.rtol = name, atol, rtol
        self.count, self.tail = 0, None
        self.max_abs = self.max_rel = self.used = 0.0
        self.scale = 1.0
        self.passed = True

    def update(self, keras: np.ndarray, torch: np.ndarray, *, slice_values: int = 1 << 20,
               floor: np.ndarray | None = None) -> None:
        """Fold in one batch, compared a few rows at a time (`compare` works in float64)."""
        tail = tuple(np.shape(torch)[1:])
        if self.tail is None:
            self.tail = tail
        if np.shape(keras) != np.shape(torch) or tail != self.tail:
            self.passed, self.max_abs, self.used = False, float("inf"), float("inf")
            self.count += len(torch)
            return
        rows = max(1, slice_values // max(1, int(np.prod(tail, dtype=np.int64))))
        for start in range(0, len(torch), rows):
            d = compare(self.name, keras[start : start + rows], torch[start : start + rows],
                        atol=self.atol, rtol=self.rtol,
                        floor=None if floor is None else floor[start : start + rows])
            self.passed = self.passed and d.passed
            self.max_abs = max(self.max_abs, d.max_abs)
            self.max_rel = max(self.max_rel, d.max_rel)
            self.scale, self.used = max(self.scale, d.scale), max(self.used, d.used)
        self.count += len(torch)

    def result(self) -> LayerDiff:
        shape = (self.count, *(self.tail or ()))
        return LayerDiff(self.name, shape, self.max_abs, self.max_rel, self.atol, self.rtol,
                         self.passed, self.scale, self.used)


def real_disagreements(
    keras_proba: np.ndarray, torch_proba: np.ndarray, *, atol: float = ATOL
) -> np.ndarray:
    """Indices where the argmaxes differ and it is not a tie within tolerance: Keras's own top
    class beats the class PyTorch picked by more than `atol` (with NaNs, any differing argmax)."""
    ka, ta = keras_proba.argmax(axis=1), torch_proba.argmax(axis=1)
    rows = np.nonzero(ka != ta)[0]
    margin = keras_proba[rows, ka[rows]] - keras_proba[rows, ta[rows]]
    return rows[~(margin <= atol)]
