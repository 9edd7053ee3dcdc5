"""Elementwise activations, each with its derivative written in terms of its *output*.

Storing only h = f(a) and taking f'(a) from h (tanh: 1 − h², sigmoid: h(1 − h), relu: h > 0,
identity: 1) saves keeping the pre-activations for the backward sweep.
"""
from __future__ import annotations

from ..arrays.backend import get_array_module

__all__ = ["ACTIVATIONS", "OUTPUTS", "apply", "derivative_from_output", "check_activation"]

ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
OUTPUTS = ("softmax", "identity", "sigmoid", "tanh")


def check_activation(name, *, argument="activation", choices=ACTIVATIONS) -> str:
    """Validate an activation name, naming the argument and the choices on error."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a string, one of {', '.join(choices)}; "
                        f"got {type(name).__name__}")
    if name not in choices:
        raise ValueError(f"unknown {argument} {name!r}; expected one of {', '.join(choices)}")
    return name


def _sigmoid(a, out):
    xp = get_array_module(a)
    # 1 / (1 + exp(-a)) overflows exp for very negative a in float32; tanh form is stable.
    xp.multiply(a, 0.5, out=out)
    xp.tanh(out, out=out)
    out += 1
    out *= 0.5
    return out


def apply(name: str, a, out=None):
    """f(a) elementwise; ``out`` may be ``a`` itself for an in-place update."""
    xp = get_array_module(a)
    if out is None:
        out = xp.empty_like(a)
    if name == "tanh":
        return xp.tanh(a, out=out)
    if name == "relu":
        return xp.maximum(a, 0, out=out)
    if name == "sigmoid":
        return _sigmoid(a, out)
    if name == "identity":
        if out is not a:
            out[...] = a
        return out
    raise ValueError(f"unknown activation {name!r}")


def derivative_from_output(name: str, h, out=None):
    """f'(a) computed from h = f(a), into ``out`` if given (``out`` may not be ``h``)."""
    xp = get_array_module(h)
    if out is None:
        out = xp.empty_like(h)
    if name == "tanh":
        xp.multiply(h, h, out=out)
        return xp.subtract(1, out, out=out)
    if name == "sigmoid":
        xp.subtract(1, h, out=out)
        return xp.multiply(out, h, out=out)
    if name == "relu":
        out[...] = h > 0
        return out
    if name == "identity":
        out.fill(1)
        return out
    raise ValueError(f"unknown activation {name!r}")

