"""Mixed precision: 16-bit storage and GEMM inputs, float32 accumulation, master weights and loss.

One switch, ``Plan(precision=...)`` (``--precision`` on the command line):

* ``"float32"``: the model's dtype throughout (today's path, unchanged to the last bit;
  float64 models stay float64 for checks).
* ``"tf32"``: float32 storage; on CuPy the step's float32 GEMMs run on TF32 tensor cores
  (``cupy._core.set_compute_type(float32, COMPUTE_TYPE_TF32)`` for the step, the previous
  compute type restored after it). NumPy has no TF32 GEMM: on the CPU it is float32 (a no-op).
* ``"bf16-mixed"`` / ``"fp16-mixed"``: each step runs on a 16-bit copy of the weights
  (bfloat16 or float16), with the engine's inputs, states, gate caches, backward deltas and
  scratch in that storage type; the output layer (logits, softmax, the loss and its
  gradients) runs in float32 on the 16-bit states and weights upcast, the weight gradients
  come back in float32 for the float32 master weights and optimizer state.

Where the arithmetic happens. CuPy computes 16-bit arrays the way the GPU does: cuBLAS
GEMMs of 16-bit inputs accumulate in float32 (tensor cores: exact products, float32 sums,
one rounding of the result), elementwise kernels compute each operation in float32 and
round it to the storage type. NumPy does neither reliably for 16-bit types: its float16
matmul takes a slow non-BLAS loop, and its float16 and ml_dtypes' bfloat16 sums accumulate
in the storage type (``numpy.ones(4096, bfloat16).sum()`` is 256). So on NumPy a 16-bit run's
arrays are :class:`MixedArray` views, an ndarray subclass whose every ufunc call (the
elementwise maths, ``@`` and ``matmul``, the reductions ``sum``/``mean``, ``add.at`` and
``add.reduceat``) upcasts its 16-bit operands to float32 exactly, computes in float32 and
rounds the result once to the storage type. For +, −, ×, ÷ and √ that is exactly IEEE
16-bit arithmetic (float32's 24 bits are at least 2p + 2 for p = 11 and p = 8, so the
double rounding is innocuous); for tanh/exp it is float32's function rounded once; for a
GEMM or a sum it is what tensor cores and CuPy's reductions do. ``get_array_module``
returns :data:`xp` for them, NumPy with array constructors that keep 16-bit results
:class:`MixedArray`, so the engine's buffers are real 16-bit arrays (half the bytes).

bfloat16 on NumPy comes from ``ml_dtypes``; CuPy 14 supports ``ml_dtypes.bfloat16`` arrays
(GEMMs included; not yet in most of cupyx), so it needs ml_dtypes too. A missing ml_dtypes
is an error naming the fix.
"""
from __future__ import annotations

import contextlib
import types

import numpy

__all__ = ["PRECISIONS", "MIXED_PRECISIONS", "check_precision", "storage_dtype",
           "unit_roundoff", "MixedArray", "xp", "MixedPolicy", "policy", "mixed_policy", "accumulator", "tf32_mode"]

PRECISIONS = ("float32", "tf32", "bf16-mixed", "fp16-mixed")
MIXED_PRECISIONS = ("bf16-mixed", "fp16-mixed")

_FLOAT32 = numpy.dtype(numpy.float32)


def check_precision(precision) -> str:
    """One of :data:`PRECISIONS`; anything else is refused, naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of "
                         f"{', '.join(map(repr, PRECISIONS))}")
    return precision


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError as error:
        raise ImportError("precision 'bf16-mixed' needs the ml_dtypes package for bfloat16 "
                          "arrays (NumPy has no bfloat16 of its own): pip install ml_dtypes, "
                          "or install gpurnn with its test extra (pip install "
                          "'gpurnn[test]')") from error
    return numpy.dtype(ml_dtypes.bfloat16)


def storage_dtype(precision) -> numpy.dtype:
    """The dtype a step stores its activations in: float16, bfloat16 or float32."""
    precision = check_precision(precision)
    if precision == "fp16-mixed":
        return numpy.dtype(numpy.float16)
    if precision == "bf16-mixed":
        return _bfloat16()
    return _FLOAT32


def unit_roundoff(precision) -> float:
    """u = 2^-p of the storage type (p: significand bits with the implicit one): 2^-11 for
    float16, 2^-8 for bfloat16, 2^-24 for float32 (tf32's GEMM inputs: 2^-11)."""
    return {"float32": 2.0 ** -24, "tf32": 2.0 ** -11, "bf16-mixed": 2.0 ** -8,
            "fp16-mixed": 2.0 ** -11}[check_precision(precision)]


_STORAGE = {numpy.dtype(numpy.float16)}
try:  # registered here so the checks below know bfloat16 when ml_dtypes is installed
    import ml_dtypes as _ml_dtypes
    _STORAGE.add(numpy.dtype(_ml_dtypes.bfloat16))
except ImportError:  # bf16-mixed then raises with the fix (storage_dtype)
    _ml_dtypes = None


def _is_storage(dtype) -> bool:
    return dtype in _STORAGE


# ------------------------------------------------------------------ the NumPy emulation
def _raw(value):
    return value.view(numpy.ndarray) if isinstance(value, MixedArray) else value


def _wide(value):
    """A 16-bit array or scalar as float32 (exact); anything else unchanged."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and _is_storage(dtype):
        return value.astype(numpy.float32)
    return value


def _mixed(value, dtype=None):
    """``value`` rounded to ``dtype`` (a storage type) and viewed as a MixedArray."""
    if dtype is not None:
        value = numpy.asarray(value).astype(dtype)
    if isinstance(value, numpy.ndarray) and _is_storage(value.dtype):
        return value.view(MixedArray)
    return value


class MixedArray(numpy.ndarray):
    """A NumPy array of a 16-bit storage type whose ufuncs compute in float32 and round
    each result once to the storage type (see the module docstring). Views, slices and
    reshapes stay MixedArray; ``numpy.asarray(a)`` is the plain array."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        raw = [_raw(value) for value in inputs]
        wide = [_wide(value) for value in raw]
        call = getattr(ufunc, method)
        if method == "at":                               # target[indices] op= values
            target = raw[0]
            if _is_storage(target.dtype):
                acc = target.astype(numpy.float32)       # accumulate in float32
                call(acc, *wide[1:], **kwargs)
                numpy.copyto(target, acc, casting="unsafe")
            else:
                call(target, *wide[1:], **kwargs)
            return None
        if method == "reduceat" or method == "reduce" or method == "accumulate":
            storage = raw[0].dtype if _is_storage(raw[0].dtype) else None
        else:
            floats = [value for value in raw if not isinstance(value, (int, float, bool))]
            storage = numpy.result_type(*floats) if floats else None
            if storage is not None and not _is_storage(storage):
                storage = None
        if kwargs.get("dtype") is not None:
            storage = None                               # an explicit result dtype wins
        if out is None:
            result = call(*wide, **kwargs)
            if isinstance(result, tuple):
                return tuple(_round(part, storage) for part in result)
            return _round(result, storage)
        # (from a list: a tuple grown from a generator is allocated afresh on each call and
        # parked in the interpreter's free list when freed, which a step fills to ~100 KiB)
        outs = tuple([_raw(value) for value in out])
        if not any(_is_storage(value.dtype) for value in outs):
            call(*wide, out=outs if len(outs) > 1 else outs[0], **kwargs)
        else:                                            # compute wide, round into out
            result = call(*wide, **kwargs)
            parts = result if isinstance(result, tuple) else (result,)
            for target, part in zip(outs, parts):
                numpy.copyto(target, part, casting="unsafe")
        return out[0] if len(out) == 1 else out

    def __array_function__(self, func, types_, args, kwargs):
        if func in _WIDE_FUNCTIONS:                      # products outside the ufuncs
            storage = _first_storage(args)
            result = func(*[_wide(_raw(a)) for a in args],
                          **{k: _wide(_raw(v)) for k, v in kwargs.items()})
            return _round(result, storage)
        return super().__array_function__(func, types_, args, kwargs)


def _first_storage(args):
    for value in args:
        dtype = getattr(value, "dtype", None)
        if dtype is not None and _is_storage(dtype):
            return dtype
    return None


def _round(result, storage):
    if storage is None or getattr(result, "dtype", None) != _FLOAT32:
        return result
    if isinstance(result, numpy.ndarray):
        return result.astype(storage).view(MixedArray)
    return storage.type(result)                          # a reduction to one value


_WIDE_FUNCTIONS = {numpy.dot, numpy.vdot, numpy.inner, numpy.tensordot, numpy.einsum}


class _MixedModule(types.ModuleType):
    """NumPy, with every function's 16-bit array results viewed as :class:`MixedArray`
    (``xp.empty(shape, dtype=bfloat16)`` included), and ``ndarray`` the subclass."""

    ndarray = MixedArray

    def __init__(self):
        super().__init__("gpurnn.engine.arrays.precision.xp")
        self._wrapped = {}

    def __getattr__(self, name):
        wrapped = self.__dict__["_wrapped"]
        if name in wrapped:
            return wrapped[name]
        value = getattr(numpy, name)
        if isinstance(value, numpy.ufunc) or isinstance(value, type) or \
                isinstance(value, types.ModuleType) or not callable(value):
            wrapped[name] = value                        # ufuncs dispatch on their own
            return value

        def function(*args, **kwargs):
            return _mixed(value(*args, **kwargs))
        function.__name__ = name
        wrapped[name] = function
        return function


xp = _MixedModule()


# ------------------------------------------------------------------ the step's policy
class MixedPolicy:
    """What a 16-bit step does with its arrays: ``store`` casts to the storage type (on
    NumPy as :class:`MixedArray`), ``wide`` to float32 (plain arrays), ``weights`` makes the
    step's 16-bit copy of a parameter dict."""

    def __init__(self, precision):
        self.precision = precision
        self.dtype = storage_dtype(precision)

    def store(self, array):
        if isinstance(array, tuple):
            return tuple(self.store(part) for part in array)
        if array.dtype.kind in "iub":
            return array
        if isinstance(array, numpy.ndarray):             # NumPy (cpu-strict is refused)
            return numpy.asarray(array).astype(self.dtype).view(MixedArray)
        return array.astype(self.dtype)                  # CuPy: its own 16-bit arrays

    def wide(self, array, dtype=_FLOAT32):
        if isinstance(array, tuple):
            return tuple(self.wide(part, dtype) for part in array)
        if array is None:
            return None
        if isinstance(array, numpy.ndarray):
            return numpy.asarray(array).astype(dtype)
        return array.astype(dtype)

    def weights(self, params):
        return {name: self.store(value) for name, value in params.items()}


def policy(precision):
    """A :class:`MixedPolicy` for bf16-mixed / fp16-mixed, None for float32 and tf32."""
    return MixedPolicy(precision) if precision in MIXED_PRECISIONS else None


def mixed_policy(plan, model):
    """The :class:`MixedPolicy` of a step of ``model`` under ``plan``, or None; refuses
    what a 16-bit step cannot run on (a float64 model, the cpu-strict device)."""
    if plan.precision not in MIXED_PRECISIONS:
        return None
    if model.dtype != _FLOAT32:
        raise ValueError(f"precision {plan.precision!r} keeps float32 master weights; this "
                         f"model is {model.dtype.name}: build it with dtype='float32' "
                         f"(float64 models run precision='float32', the reference for checks)")
    if str(model.device) == "cpu-strict":
        raise ValueError(f"precision {plan.precision!r} runs on 'cpu' (NumPy, emulated) or "
                         f"'cuda' (CuPy); the cpu-strict device has no 16-bit emulation")
    return MixedPolicy(plan.precision)


def accumulator(value):
    """A copy of ``value`` to sum per-block gradients into: float32 for a 16-bit one (the
    sum of the blocks accumulates in float32), an exact copy otherwise."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and _is_storage(dtype):
        return (numpy.asarray(value) if isinstance(value, numpy.ndarray) else
                value).astype(numpy.float32)
    return value.copy()


@contextlib.contextmanager
def tf32_mode(precision, array):
    """Around one step: with ``"tf32"`` and a CuPy ``array``, CuPy's float32 GEMMs use
    TF32 tensor cores (the previous compute type restored after); otherwise nothing."""
    if precision != "tf32" or isinstance(array, numpy.ndarray) or \
            type(array).__module__.startswith("gpurnn"):
        yield
        return
    import cupy._core as core
    from cupy._core import _routines_linalg as linalg
    before = core.get_compute_type(numpy.float32)
    core.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        core.set_compute_type(numpy.float32, before)
