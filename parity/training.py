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
they infer. Dropout's masks are drawn by each framework's own generator.

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
    (`KerasBatchNorm1d/2d`, frozen where its Keras layer is); its state_dict keys, its
    parameters' `requires_grad` and its inference outputs are unchanged."""
    frozen = _frozen(module)
    for name, child in list(module.named_children()):
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
            if not child.track_running_stats or child.momentum is None:
                raise ValueError(f"{name}: a BatchNorm without running statistics or with a "
                                 "cumulative average is not a Keras BatchNormalization")
            setattr(module, name, _swapped(child, name not in frozen))
        else:
            keras_training(child)
    return module
