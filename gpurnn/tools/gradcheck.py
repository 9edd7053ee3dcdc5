"""Gradient checking by central differences in float64."""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, field

import numpy

from ..engine.arrays.backend import host_rng, to_host

__all__ = ["gradcheck", "GradcheckResult"]


@dataclass
class GradcheckResult:
    """Per parameter: entries checked and relative error ‖analytic − numeric‖ / (‖a‖ + ‖n‖)."""

    errors: dict = field(default_factory=dict)     # name -> relative error
    checked: dict = field(default_factory=dict)    # name -> number of entries checked
    shapes: dict = field(default_factory=dict)
    tolerance: float = 1e-6

    @property
    def ok(self) -> bool:
        return all(error <= self.tolerance for error in self.errors.values())

    def table(self) -> str:
        """One row per parameter, the name and shape columns as wide as their longest
        entry (weight_hh_l1, ...)."""
        names = max([len("param"), *map(len, self.errors)])
        shapes = max([len("shape"), *(len(str(self.shapes[n])) for n in self.errors)])
        header = f"{'param':<{names}}  {'shape':<{shapes}}  {'checked':>7}  {'rel. error':>10}  ok"
        lines = [header, "-" * len(header)]
        for name, error in self.errors.items():
            mark = "yes" if error <= self.tolerance else "NO"
            lines.append(f"{name:<{names}}  {str(self.shapes[name]):<{shapes}}  "
                         f"{self.checked[name]:>7}  {error:>10.3e}  {mark}")
        return "\n".join(lines)


def gradcheck(model, inputs, targets, *, eps=1e-6, tolerance=1e-6, max_checks=50, seed=0,
              **loss_kwargs) -> GradcheckResult:
    """Compare ``model.loss_and_grads`` with central differences of its loss.

    The check runs on a float64 copy of the model (the model itself is left untouched).
    With dropout in training mode, every call of the check uses the masks of one draw.
    Truncated BPTT does not compute the gradient of the loss, so ``truncate`` is refused.

    Args:
        max_checks: entries checked per parameter, drawn at random (seeded) when a
            parameter has more; None checks every entry.
        loss_kwargs: passed to ``loss_and_grads`` (``mask``, ``h0``, ``reduction``).
    """
    if loss_kwargs.get("truncate") is not None:
        raise ValueError("gradcheck compares with the gradient of the loss, which truncated "
                         "BPTT does not compute; leave truncate=None")
    if model.dtype != numpy.float64:
        model = model.copy(dtype="float64")
    rng = host_rng(seed)
    # A model with dropout in training mode: every call below draws the same masks, so
    # the check is of the gradient for those masks.
    fixed = getattr(model, "fixed_dropout", contextlib.nullcontext)
    with fixed():
        return _check(model, inputs, targets, eps, tolerance, max_checks, rng, loss_kwargs)


def _check(model, inputs, targets, eps, tolerance, max_checks, rng, loss_kwargs):
    analytic = model.loss_and_grads(inputs, targets, **loss_kwargs).grads
    loss = _loss_alone(model, inputs, targets, loss_kwargs)
    result = GradcheckResult(tolerance=tolerance)
    for name, param in model.params.items():
        flat = param.reshape(-1)  # a view: perturbing it perturbs the parameter
        if max_checks is None or flat.size <= max_checks:
            indices = numpy.arange(flat.size)
        else:
            indices = rng.choice(flat.size, size=max_checks, replace=False)
        numeric = numpy.empty(len(indices))
        for k, i in enumerate(indices):
            original = float(flat[i])
            flat[i] = original + eps
            plus = loss()
            flat[i] = original - eps
            minus = loss()
            flat[i] = original
            numeric[k] = (plus - minus) / (2 * eps)
        exact = to_host(analytic[name]).reshape(-1)[indices]
        denominator = numpy.linalg.norm(exact) + numpy.linalg.norm(numeric)
        difference = numpy.linalg.norm(exact - numeric)
        result.errors[name] = float(difference / denominator) if difference else 0.0
        result.checked[name] = len(indices)
        result.shapes[name] = tuple(param.shape)
    return result


def _loss_alone(model, inputs, targets, loss_kwargs):
    """The loss of ``loss_and_grads`` as a function of the parameters, computed without the
    backward sweep (``model.loss``; the central differences need only the value)."""
    if not hasattr(model, "loss"):                       # LinearRNN: loss_and_grads only
        return lambda: model.loss_and_grads(inputs, targets, **loss_kwargs).loss
    return lambda: model.loss(inputs, targets, weights=loss_kwargs.get("mask"),
                              h0=loss_kwargs.get("h0"),
                              reduction=loss_kwargs.get("reduction", "mean"))
