"""Argument checks shared by the models: each error names the argument and what was expected."""
from __future__ import annotations

import contextlib
import numbers

import numpy

from .backend import get_array_module, to_device

__all__ = [
    "resolve_dtype", "check_size", "check_truncate", "check_reduction", "as_inputs",
    "as_targets", "as_mask", "as_state", "as_float_array", "values_checked",
]

_DTYPES = ("float32", "float64")


def resolve_dtype(dtype) -> numpy.dtype:
    """float32 or float64; anything else is refused."""
    try:
        resolved = numpy.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is not None and resolved.kind == "f" and resolved.name not in _DTYPES:
        # a real floating type, just not one the engine computes in (yet): say so plainly
        raise ValueError(f"dtype {resolved.name} is not supported: parameters and arithmetic "
                         f"are {' or '.join(_DTYPES)}; use dtype='float32' for training")
    if resolved is None or resolved.name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    return resolved


def check_size(value, name: str) -> int:
    """A positive int (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_truncate(truncate):
    """None (full BPTT) or an int >= 0 (the seeds' ``bptt_truncate``)."""
    if truncate is None:
        return None
    if isinstance(truncate, bool) or not isinstance(truncate, numbers.Integral):
        raise TypeError(f"truncate must be None or an int >= 0, got {type(truncate).__name__}")
    if truncate < 0:
        raise ValueError(f"truncate must be None or an int >= 0, got {truncate}")
    return int(truncate)


def check_reduction(reduction: str) -> str:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'sum' or 'mean'")
    return reduction


def _asarray(value, name, device):
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        return to_device(value, device)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array-like of numbers ({error})") from None


_SKIP_VALUE_CHECKS = [False]


@contextlib.contextmanager
def values_checked():
    """Within this block the checks that read device values back (ids in range, finite
    floats) are skipped: the caller has made them already. A captured step
    (:mod:`gpurnn.engine.gpu.graphs`) checks each batch before copying it into its buffers,
    and must not synchronise inside the capture."""
    previous, _SKIP_VALUE_CHECKS[0] = _SKIP_VALUE_CHECKS[0], True
    try:
        yield
    finally:
        _SKIP_VALUE_CHECKS[0] = previous


# Elements checked at a time: the check's temporaries stay small next to a long sequence.
_FINITE_CHUNK = 1 << 20


def _check_finite(array, name):
    if _SKIP_VALUE_CHECKS[0]:
        return
    xp = get_array_module(array)
    if array.ndim < 2:
        parts = [array]
    else:
        step = max(1, _FINITE_CHUNK // max(1, array[:, :1].size))
        parts = [array[:, start:start + step] for start in range(0, array.shape[1], step)]
    for part in parts:
        if not bool(xp.isfinite(part).all()):
            raise ValueError(f"{name} contains NaN or Inf")


def _check_ids(ids, name, limit, what):
    # One read-back for both bounds: on a GPU each int() of a device value is a sync.
    if _SKIP_VALUE_CHECKS[0]:
        return
    if ids.size and bool((ids.min() < 0) | (ids.max() >= limit)):
        raise ValueError(f"{name} holds ids from {int(ids.min())} to {int(ids.max())}; "
                         f"expected {what} ids in [0, {limit})")


def as_inputs(inputs, input_size, dtype, device):
    """Token ids (batch, time) of ints, or floats (batch, time, input_size)."""
    x = _asarray(inputs, "inputs", device)
    if x.dtype.kind == "b":
        raise TypeError("inputs must be int token ids (batch, time) or floats "
                        "(batch, time, input_size), got booleans")
    if x.dtype.kind not in "iuf":
        raise TypeError(f"inputs must be int token ids (batch, time) or floats "
                        f"(batch, time, input_size), got dtype {x.dtype}")
    if x.ndim == 2:
        if x.dtype.kind not in "iu":
            raise TypeError(f"inputs of shape (batch, time) are token ids and must be integers, "
                            f"got dtype {x.dtype}")
        _check_ids(x, "inputs", input_size, "token")
        x = x.astype(numpy.int64, copy=False)
    elif x.ndim == 3:
        if x.shape[2] != input_size:
            raise ValueError(f"inputs has {x.shape[2]} features per step; expected "
                             f"input_size={input_size}")
        x = x.astype(dtype, copy=False)
        _check_finite(x, "inputs")
    else:
        raise ValueError(f"inputs must have rank 2 (batch, time) for token ids or 3 "
                         f"(batch, time, input_size), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"inputs needs at least one sequence and one time step, "
                         f"got shape {tuple(x.shape)}")
    return x


def as_targets(targets, output, output_size, batch, steps, dtype, device):
    """Class ids (batch, time) for softmax, floats (batch, time, output_size) otherwise."""
    y = _asarray(targets, "targets", device)
    if output == "softmax":
        if y.shape != (batch, steps):
            raise ValueError(f"targets for a softmax output must have shape (batch, time) = "
                             f"{(batch, steps)}, got {tuple(y.shape)}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"targets for a softmax output must be integer class ids, "
                            f"got dtype {y.dtype}")
        _check_ids(y, "targets", output_size, "class")
        return y.astype(numpy.int64, copy=False)
    if y.shape != (batch, steps, output_size):
        raise ValueError(f"targets for a {output!r} output must have shape (batch, time, "
                         f"output_size) = {(batch, steps, output_size)}, got {tuple(y.shape)}")
    if y.dtype.kind not in "fiu":
        raise TypeError(f"targets must be numbers, got dtype {y.dtype}")
    y = y.astype(dtype, copy=False)
    _check_finite(y, "targets")
    return y


def as_mask(mask, batch, steps, dtype, device):
    """A right-padded 0/1 mask (batch, time): each row is ones, then zeros."""
    if mask is None:
        return None
    m = _asarray(mask, "mask", device)
    if m.shape != (batch, steps):
        raise ValueError(f"mask must have shape (batch, time) = {(batch, steps)}, "
                         f"got {tuple(m.shape)}")
    xp = get_array_module(m)
    not_binary = ~((m == 0) | (m == 1))
    # One read-back for both checks (a sync on a GPU); which one failed is found after.
    if bool(not_binary.any() | (m[:, 1:] > m[:, :-1]).any()):
        if bool(not_binary.any()):
            raise ValueError("mask must hold only 0 and 1")
        raise ValueError("mask must be right-padded: in each row the ones come first, "
                         "then only zeros")
    return xp.ascontiguousarray(m.astype(dtype))


def as_state(state, batch, size, dtype, device, name="h0"):
    """An initial state (batch, size), or zeros when None."""
    if state is None:
        return to_device(numpy.zeros((batch, size), dtype=dtype), device)
    s = as_float_array(state, name, dtype, device)
    if s.shape != (batch, size):
        raise ValueError(f"{name} must have shape (batch, hidden) = {(batch, size)}, "
                         f"got {tuple(s.shape)}")
    return s


def as_float_array(value, name, dtype, device):
    """A finite float array of the model's dtype on the model's device."""
    a = _asarray(value, name, device)
    if a.dtype.kind not in "fiu" or a.dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    a = a.astype(dtype, copy=False)
    _check_finite(a, name)
    return a
