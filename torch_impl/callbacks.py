"""Keras's two callbacks of the book's recipe, as plain state: ModelCheckpoint(save_best_only)
and EarlyStopping(restore_best_weights) on val_loss, with Keras 3.15.1's exact rules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelCheckpoint:
    """keras.callbacks.ModelCheckpoint(monitor='val_loss', save_best_only=True): save when the
    val_loss is strictly lower than the best so far (the first epoch always saves)."""

    best: float | None = None

    def update(self, val_loss: float) -> bool:
        """Whether this epoch's weights are to be saved."""
        if self.best is None or val_loss < self.best:
            self.best = val_loss
            return True
        return False


@dataclass
class EarlyStopping:
    """keras.callbacks.EarlyStopping(monitor='val_loss', patience, restore_best_weights=True).

    Keras 3.15.1's rule, step for step: `wait` grows every epoch and is reset by a strict
    improvement (min_delta 0); training stops once wait ≥ patience (never after the first epoch);
    the best weights are remembered from the first epoch on and restored when training ends —
    whether it stopped early or ran all its epochs. Epochs are 0-based, as in Keras.
    """

    patience: int
    wait: int = 0
    best: float | None = None
    best_epoch: int = 0
    stopped_epoch: int = 0

    def update(self, epoch: int, val_loss: float) -> tuple[bool, bool]:
        """(improved, stop) after `epoch`."""
        self.wait += 1
        if self.best is None or val_loss < self.best:
            self.best, self.best_epoch, self.wait = val_loss, epoch, 0
            return True, False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return False, True
        return False, False
