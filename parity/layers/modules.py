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
    """Keras Rescaling: x * scale + offset, each a number or one per channel."""

    def __init__(self, scale: float | tuple[float, ...], offset: float | tuple[float, ...]):
        super().__init__()
        self.scale = tuple(map(float, scale)) if isinstance(scale, tuple) else float(scale)
        self.offset = tuple(map(float, offset)) if isinstance(offset, tuple) else float(offset)

    def _value(self, v, x: torch.Tensor):
        if not isinstance(v, tuple):
            return v
        t = torch.tensor(v, dtype=x.dtype, device=x.device)
        return t.reshape(-1, 1, 1) if x.dim() == 4 else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._value(self.scale, x) + self._value(self.offset, x)

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




# --- merges and operations ------------------------------------------------------------------


_TORCH_OPS = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul,
              "maximum": torch.maximum, "minimum": torch.minimum, "divide": torch.div}


class Merge(nn.Module):
    """Keras's merge layers: `op` folded left over the inputs (average: their sum / count)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        fold = _TORCH_OPS["add" if self.op == "average" else self.op]
        out = xs[0]
        for x in xs[1:]:
            out = fold(out, x)
        return out / len(xs) if self.op == "average" else out

    def extra_repr(self) -> str:
        return f"op={self.op!r}"


class Concat(nn.Module):
    """keras.layers.Concatenate on PyTorch's layout: `dim` of the NCHW (or flat) tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Scalar(nn.Module):
    """A Keras operation node on a tensor and a number (`x + 3.0`, `x * (1/6)`, `1 - x`), the
    number a float32 as Keras converts it."""

    def __init__(self, op: str, value: float, first: bool = False) -> None:
        super().__init__()
        self.op, self.value, self.first = op, float(value), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(self.value, dtype=x.dtype, device=x.device)
        return _TORCH_OPS[self.op](c, x) if self.first else _TORCH_OPS[self.op](x, c)

    def extra_repr(self) -> str:
        return f"op={self.op!r}, value={self.value!r}, first={self.first}"


class Crop2d(nn.Module):
    """keras.layers.Cropping2D: (left, right, top, bottom) pixels cut from an NCHW map."""

    def __init__(self, crop: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.crop = tuple(crop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.crop
        return x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right]

    def extra_repr(self) -> str:
        return f"crop={self.crop}"


class ChannelLinear(nn.Linear):
    """keras.layers.Dense on an (H, W, C) map: a Linear on the channel axis of an NCHW map
    (ConvNeXt's pointwise layers); its weight and bias are a Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)


class ChannelLayerNorm(nn.Module):
    """keras.layers.LayerNormalization over the channels of an NCHW map (or the features of a
    flat input): gamma (weight) and beta (bias) where Keras has them (scale, center)."""

    def __init__(self, channels: int, eps: float, scale: bool, center: bool) -> None:
        super().__init__()
        self.channels, self.eps = channels, float(eps)
        self.weight = nn.Parameter(torch.ones(channels)) if scale else None
        self.bias = nn.Parameter(torch.zeros(channels)) if center else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.dim() == 4
        y = F.layer_norm(x.movedim(1, -1) if image else x, (self.channels,), self.weight,
                         self.bias, self.eps)
        return y.movedim(-1, 1) if image else y

    def extra_repr(self) -> str:
        return (f"{self.channels}, eps={self.eps}, scale={self.weight is not None}, "
                f"center={self.bias is not None}")


class Normalize(nn.Module):
    """keras.layers.Normalization with its mean and variance in the config: (x − mean) /
    max(√variance, 1e-7) per channel, or its inverse, in float32 as Keras computes it."""

    def __init__(self, mean: tuple[float, ...], variance: tuple[float, ...],
                 invert: bool = False) -> None:
        super().__init__()
        self.mean, self.variance, self.invert = tuple(mean), tuple(variance), invert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1) if x.dim() == 4 else (-1,)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        var = torch.tensor(self.variance, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.clamp_min(torch.sqrt(var), 1e-7)
        return mean + x * std if self.invert else (x - mean) / std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, variance={self.variance}, invert={self.invert}"


class NormalizeAdapted(nn.Module):
    """keras.layers.Normalization with adapted statistics: buffers mean and variance, and the
    int64 `count` Keras keeps beside them (unused here, carried so the way back is exact)."""

    def __init__(self, channels: int, invert: bool = False) -> None:
        super().__init__()
        self.invert = invert
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, 1, 1) if x.dim() == 4 else (-1,)
        mean, var = self.mean.reshape(shape), self.variance.reshape(shape)
        std = torch.clamp_min(torch.sqrt(var), 1e-7)
        return mean + x * std if self.invert else (x - mean) / std

    def extra_repr(self) -> str:
        return f"{self.mean.shape[0]}, invert={self.invert}"


class Scale(nn.Module):
    """A learned per-channel scale, x · gamma (ConvNeXt's LayerScale), on NCHW or flat input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.gamma.reshape(-1, 1, 1) if x.dim() == 4 else self.gamma)

    def extra_repr(self) -> str:
        return f"{self.gamma.shape[0]}"


class ScaledSum(nn.Module):
    """InceptionResNetV2's CustomScaleLayer: inputs[0] + inputs[1] · scale."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
