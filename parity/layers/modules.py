"""Small PyTorch modules for what torch.nn has no exact counterpart of (Keras's 'same' average
pooling, global pooling with keepdims, Rescaling, Reshape in Keras's order, …)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Shape = tuple[int, ...]  # Keras order, batch-free: (H, W, C), (H, W) or (F,)


# --- small modules for what torch.nn has no exact counterpart of ---------------------------


class AvgPool2dSame(nn.Module):
    """Keras AveragePooling2D(padding='same') where TF pads asymmetrically: the mean over the
    window's pixels inside the image only (the padding is left out of the count)."""

    def __init__(
        self, kernel_size: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.pad = kernel_size, stride, pad  # pad: l, r, t, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = F.avg_pool2d(F.pad(x, self.pad), self.kernel_size, self.stride, divisor_override=1)
        ones = torch.ones_like(x[:1, :1])
        count = F.avg_pool2d(
            F.pad(ones, self.pad), self.kernel_size, self.stride, divisor_override=1
        )
        return total / count

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}"


class GlobalPool2d(nn.Module):
    """GlobalAverage/MaxPooling2D: (N, C, H, W) → (N, C), or (N, C, 1, 1) with keepdims."""

    def __init__(self, mode: str, keepdims: bool = False) -> None:
        super().__init__()
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3), keepdim=self.keepdims)
        return x.amax(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, keepdims={self.keepdims}"


class Exponential(nn.Module):
    """Keras's 'exponential' activation: exp(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class Rescale(nn.Module):
    """Keras Rescaling: x * scale + offset."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class KerasReshape(nn.Module):
    """Keras Reshape, done in Keras's layout: an NCHW map goes to NHWC first, and a (H, W, C)
    target comes back to NCHW."""

    def __init__(self, target: tuple[int, ...], image_in: bool) -> None:
        super().__init__()
        self.target, self.image_in = tuple(target), image_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_in:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if len(self.target) == 3 else x

    def extra_repr(self) -> str:
        return f"target={self.target} (Keras order), image_in={self.image_in}"


class FlattenHWC(nn.Module):
    """Flatten in Keras's H,W,C order, for a Flatten that no Dense follows (the model's output,
    or a Reshape): (N, C, H, W) → (N, H·W·C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


