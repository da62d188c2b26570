"""Keras's training semantics in a ported module, on request: `keras_training(module)`.

A port gives PyTorch's own modules, which compute Keras's inference exactly and load anywhere.
In training, PyTorch's BatchNorm differs from Keras's BatchNormalization in its moving
statistics (keras/src/layers/normalization/batch_normalization.py, `call` with training=True):

    Keras    moving_mean ← moving_mean·momentum + mean·(1 − momentum)
             moving_var  ← moving_var·momentum + var·(1 − momentum)      var: biased (÷ n)
    PyTorch  running_var ← (1 − m)·running_var + m·var·n/(n − 1)           m = 1 − momentum

so a PyTorch run drifts from Keras's by n/(n − 1) in every variance update (1/127 per step at
a batch of 128 images of 1×1, far less on feature maps), and by the order of its float32
operations. `keras_training` swaps each BatchNorm1d/2d for `KerasBatchNorm1d/2d`: the same
class underneath (same state_dict keys, same inference), with Keras's update in Keras's order
in training. The batch is normalised as both frameworks do it (biased variance, epsilon inside
the root). LayerNormalization's epsilon and Dense/Conv's arithmetic need nothing: they train as
they infer.

Dropout: `keras_training` swaps each nn.Dropout for `KerasDropout`, which drops as Keras does
on TensorFlow (`tf.nn.experimental.stateless_dropout`: kept where a uniform draw ≥ rate, x times
the float32 scale 1/(1 − rate), 0 elsewhere) and with the layer's `noise_shape` (axes of size 1
share a mask, as in Keras; the port records it on the module). Its masks come from torch's
generator; `masks`, a callable (the mask's shape, PyTorch layout) → a bool keep mask, replays
given ones instead (Keras's own, for a step-by-step comparison: the parity suite reads them off
Keras's layer). Without a mask the two frameworks draw different masks, of the same law.

A frozen layer (Keras's `trainable: false`) keeps Keras's meaning: a frozen BatchNormalization
normalises with its moving statistics and leaves them as they are, in `train()` mode too (its
`call`: `if training and self.trainable`), so `KerasBatchNorm*.trainable` is False for the
modules of a frozen layer (`module.layers` says which) — set it True to unfreeze, as in Keras.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _KerasBatchNorm:
    """Keras's BatchNormalization in training: biased batch variance in the moving update,
    Keras's momentum (`keras_momentum` = 1 − PyTorch's momentum), Keras's order of operations."""

    keras_momentum: float
    trainable: bool  # Keras's: False normalises with the moving statistics even in training

    def __init__(self, *args, trainable: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keras_momentum = round(1.0 - self.momentum, 12)  # the port set momentum = 1 - Keras's
        self.trainable = trainable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if not self.trainable:  # frozen: inference, exactly as in eval(); nothing updated
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        dims = [d for d in range(x.dim()) if d != 1]
        out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            # Keras's Python floats m and 1.0 - m each rounded to float32 in its op, as here
            m = self.keras_momentum
            self.running_mean.copy_(self.running_mean * m + mean * (1.0 - m))
            self.running_var.copy_(self.running_var * m + var * (1.0 - m))
            self.num_batches_tracked += 1
        return out


class KerasBatchNorm2d(_KerasBatchNorm, nn.BatchNorm2d):
    pass


class KerasBatchNorm1d(_KerasBatchNorm, nn.BatchNorm1d):
    pass


class KerasDropout(nn.Dropout):
    """Keras's Dropout in training (see module): `noise_shape` in PyTorch layout (None: the
    input's size), `masks` an optional callable shape → bool keep mask; the identity in eval()."""

    def __init__(self, p: float = 0.5, noise_shape: tuple[int | None, ...] | None = None,
                 masks=None) -> None:
        super().__init__(p)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = tuple(x.shape)
        if self.noise_shape is not None:
            if len(self.noise_shape) != x.dim():
                raise ValueError(f"noise_shape {self.noise_shape} does not fit an input of "
                                 f"shape {shape}")
            shape = tuple(d if n is None else n
                          for d, n in zip(shape, self.noise_shape, strict=True))
        if self.masks is None:
            keep = torch.rand(shape, device=x.device) >= self.p
        else:
            keep = torch.as_tensor(self.masks(shape), dtype=torch.bool, device=x.device)
            if keep.shape != torch.Size(shape):
                raise ValueError(f"a dropout mask of shape {tuple(keep.shape)}, not {shape}")
        # TF's order: x times the scale (a float32 constant), then 0 where dropped
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p}, noise_shape={self.noise_shape}"


def keras_noise_shape(noise_shape: list | None, rank: int) -> tuple[int | None, ...] | None:
    """A Keras Dropout's `noise_shape` (channels last, checked by the port) in PyTorch's
    layout for an input of `rank` dimensions; None where it shares no axis (all None)."""
    if noise_shape is None or all(n is None for n in noise_shape):
        return None
    dims = tuple(noise_shape)
    if rank == 4 and len(dims) == 4:  # (N, H, W, C) → (N, C, H, W)
        dims = (dims[0], dims[3], dims[1], dims[2])
    return dims


def _swapped(bn: nn.modules.batchnorm._BatchNorm, trainable: bool) -> nn.Module:
    cls = KerasBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else KerasBatchNorm1d
    new = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
              track_running_stats=True, device=bn.running_mean.device, trainable=trainable)
    new.load_state_dict(bn.state_dict())
    for name, p in bn.named_parameters():  # a frozen layer's, a fixed half's: kept off
        getattr(new, name).requires_grad_(p.requires_grad)
    new.train(bn.training)
    return new


def _frozen(module: nn.Module) -> set[str]:
    """The children of a ported module that come from a frozen Keras layer."""
    return {name for info in getattr(module, "layers", None) or ()
            if not getattr(info, "trainable", True) for name in info.modules}


def keras_training(module: nn.Module) -> nn.Module:
    """`module` with each BatchNorm1d/2d replaced, in place, by Keras's training semantics
    (`KerasBatchNorm1d/2d`, frozen where its Keras layer is), and each nn.Dropout by
    `KerasDropout`; its state_dict keys, its parameters' `requires_grad` and its inference
    outputs are unchanged."""
    frozen = _frozen(module)
    for name, child in list(module.named_children()):
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if not child.track_running_stats or child.momentum is None:
                raise ValueError(f"{name}: a BatchNorm without running statistics or with a "
                                 "cumulative average is not a Keras BatchNormalization")
            setattr(module, name, _swapped(child, name not in frozen))
        elif type(child) is nn.Dropout:
            new = KerasDropout(child.p, getattr(child, "keras_noise_shape", None))
            setattr(module, name, new.train(child.training))
        else:
            keras_training(child)
    return module
