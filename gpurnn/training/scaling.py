"""Dynamic loss scaling for float16 training (``--precision fp16-mixed``).

float16 holds magnitudes from about 6e-8 (subnormal) to 65504. The gradients of a language
model's loss are mostly far below 1 and many would round to zero in a float16 backward
sweep; multiplying the loss by a scale S moves them into range, and the gradients are
divided by S in float32 before the update (:meth:`gpurnn.RecurrentModel.loss_and_grads`'s
``loss_scale``). Too large an S makes the sweep overflow to Inf: then the step is skipped
and S halved. After ``growth_interval`` clean steps in a row S is doubled again, so it stays
near the largest scale that does not overflow (the standard scaler: Micikevicius et al.,
"Mixed Precision Training", 2018; PyTorch's ``GradScaler``).

The scaler's state (scale, clean steps, overflows) is part of a checkpoint, so a stopped and
resumed run takes the same steps with the same scales as one never stopped.
"""
from __future__ import annotations

import math

__all__ = ["LossScaler", "DEFAULT_LOSS_SCALE", "MIN_LOSS_SCALE"]

DEFAULT_LOSS_SCALE = 2.0 ** 16
# Below this an overflow is not the scale's doing (the gradients themselves are too large
# or not finite): the step goes to the divergence guard like any non-finite step.
MIN_LOSS_SCALE = 1.0


class LossScaler:
    """The dynamic loss scale: ``scale`` for the next step, :meth:`update` after it.

    Args:
        scale: the first scale (a power of two keeps the scaling exact).
        growth_interval: clean steps in a row after which the scale doubles.
        factor: what the scale is multiplied by on growth and divided by on overflow.
    """

    def __init__(self, scale: float = DEFAULT_LOSS_SCALE, growth_interval: int = 2000,
                 factor: float = 2.0):
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"the loss scale must be a finite number > 0, got {scale}")
        if growth_interval < 1:
            raise ValueError(f"the growth interval must be >= 1 step, got {growth_interval}")
        self.scale, self.growth_interval, self.factor = float(scale), int(growth_interval), factor
        self.clean = 0       # clean steps since the last change of scale
        self.overflows = 0   # steps skipped for an overflow, in all

    def is_overflow(self, loss: float, norm: float) -> bool:
        """Whether a step with this (unscaled) loss and gradient norm overflowed in the
        scaled sweep: a finite loss with a non-finite gradient, at a scale that can still
        back off (otherwise the step is the divergence guard's to judge)."""
        return math.isfinite(loss) and not math.isfinite(norm) and self.scale > MIN_LOSS_SCALE

    def update(self, overflow: bool) -> None:
        """After a step: back off on an overflow, grow after ``growth_interval`` clean ones."""
        if overflow:
            self.scale = max(MIN_LOSS_SCALE, self.scale / self.factor)
            self.clean = 0
            self.overflows += 1
            return
        self.clean += 1
        if self.clean >= self.growth_interval:
            self.scale *= self.factor
            self.clean = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean": self.clean, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean, self.overflows = int(state["clean"]), int(state["overflows"])
