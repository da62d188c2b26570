"""The book's Fashion-MNIST CNN (혼자 공부하는 머신러닝+딥러닝, 8-2) as a PyTorch module.

Layer for layer the Keras Sequential of `keras_ref/model.py`:
Conv2D(32, 3, relu, same) → MaxPooling2D(2) → Conv2D(64, 3, relu, same) → MaxPooling2D(2) →
Flatten → Dense(100, relu) → Dropout(0.4) → Dense(10, softmax).

Differences that are layout, not maths (see parity/mapping.py for the weight transforms):
- images are NCHW (N, 1, 28, 28) here, NHWC (N, 28, 28, 1) in Keras;
- `forward` returns logits; the softmax lives in the loss (cross-entropy on logits equals Keras's
  sparse categorical cross-entropy on softmax outputs) and in `predict_proba`, the one
  function that turns logits into probabilities;
- Keras 'same' padding for a 3×3 kernel at stride 1 is exactly symmetric padding 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fashion_cnn import extras
from fashion_cnn.book import DENSE_UNITS, DROPOUT, FILTERS, FLATTEN_WIDTH, NUM_CLASSES
from fashion_cnn.book import FLATTEN_CHW as FLATTEN_SHAPE
from fashion_cnn.book import INPUT_CHW as INPUT_SHAPE

__all__ = ["BookCNN", "PoolFirst", "keras_init_", "predict_proba", "summary", "EVAL_BATCH_SIZE",
           "FLATTEN_SHAPE", "INPUT_SHAPE"]

# Images per forward pass wherever the model only infers (evaluate, predict_proba): batches of 64
# measured fastest on a 2-core CPU (batch 32 pays more per-call overhead, batches of 128+ fall out
# of cache). Losses are summed per example and each image's outputs are its own, so the batch size
# changes only float rounding, not the definition.
EVAL_BATCH_SIZE = 64


class BookCNN(nn.Module):
    """The 8-2 CNN. `init='keras'` gives Keras's Glorot-uniform kernels and zero biases;
    `init='torch'` keeps PyTorch's defaults (kaiming_uniform(a=√5) kernels, uniform biases)."""

    def __init__(self, init: str = "torch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(INPUT_SHAPE[0], FILTERS[0], kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(FILTERS[0], FILTERS[1], kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.dense1 = nn.Linear(FLATTEN_WIDTH, DENSE_UNITS)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(DROPOUT)
        self.dense2 = nn.Linear(DENSE_UNITS, NUM_CLASSES)
        if init == "keras":
            keras_init_(self)
        elif init != "torch":
            raise ValueError(f"init must be 'keras' or 'torch', not {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))  # (N, 32, 14, 14)
        x = self.pool2(self.relu2(self.conv2(x)))  # (N, 64, 7, 7)
        x = self.flatten(x)  # (N, 3136), in C,H,W order
        x = self.dropout(self.relu3(self.dense1(x)))  # (N, 100)
        return self.dense2(x)  # (N, 10) logits

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 10) on the CPU, as Keras's softmax output layer gives them
        (`predict_proba`: in eval mode, on the model's device)."""
        return predict_proba(self, x)


class PoolFirst(nn.Module):
    """BookCNN's forward with each 2×2 max-pool moved before its ReLU: the same numbers, faster.

    ReLU is monotone, so pooling commutes with it exactly: max(relu(a)) = relu(max(a)) for every
    window, and the gradients agree too — where the window's maximum is positive both orders route
    the gradient to the same element (ReLU does not change positive values, and ties break to the
    first maximum either way); where it is ≤ 0 both give zero. Only the ReLU now runs on the
    pooled (4× smaller) maps, which saves a full pass over the largest activation in the forward
    and in the backward (~8% of a CPU training step). tests/test_train.py checks the logits and
    every gradient bitwise against `BookCNN.forward`. The module holds no weights of its own.
    """

    def __init__(self, model: BookCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = F.relu(m.pool1(m.conv1(x)))  # (N, 32, 14, 14)
        x = F.relu(m.pool2(m.conv2(x)))  # (N, 64, 7, 7)
        x = m.flatten(x)  # (N, 3136), C,H,W order
        x = m.dropout(m.relu3(m.dense1(x)))  # (N, 100)
        return m.dense2(x)  # (N, 10) logits


@torch.no_grad()
def predict_proba(
    model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE
) -> torch.Tensor:
    """Softmax probabilities (N, 10) on the CPU of `model` (logits out) for images x
    (N, 1, 28, 28): Keras's `model.predict` on the book's softmax output layer.

    The one place the logits become probabilities (the trainer's summary, predict, visualize and
    `BookCNN.predict_proba` all call it). Runs in eval mode (dropout off; the model's mode is
    restored), in batches of `batch_size` moved to the model's device, so x may live anywhere.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        parts = [torch.softmax(model(x[start : start + batch_size].to(device)), dim=1).cpu()
                 for start in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, NUM_CLASSES)


def keras_init_(model: nn.Module) -> nn.Module:
    """Keras's default initialisation in place: Glorot-uniform kernels, zero biases.

    Glorot uniform draws from U(-l, l), l = √(6 / (fan_in + fan_out)), with fans that include the
    receptive field — the same fans `nn.init.xavier_uniform_` computes for conv and linear weights.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def summary(model: nn.Module | None = None, batch_size: int = 1) -> str:
    """A Keras-like summary table of the model (torchinfo, of the 'notebooks' extra), with
    per-layer parameter counts."""
    extras.check("notebooks", "torch_impl.model.summary", modules=("torchinfo",))
    from torchinfo import summary as torchinfo_summary

    model = model or BookCNN()
    stats = torchinfo_summary(
        model,
        input_size=(batch_size, *INPUT_SHAPE),
        col_names=("output_size", "num_params"),
        depth=1,
        verbose=0,
        device="cpu",
    )
    return str(stats)
