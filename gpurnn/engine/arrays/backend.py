"""The array-module shim: the one module that knows whether arrays live in NumPy or CuPy.

Every other module takes ``xp`` from its arrays (``get_array_module``) or from a
:class:`Device`, so the CPU and the GPU run one code path. CuPy is optional: when it
cannot be imported, or imports but finds no GPU, ``"auto"`` falls back to the CPU and
``"cuda"`` raises an error that carries the original cause.

A third device, ``"cpu-strict"``, computes with NumPy but holds its arrays as
:class:`gpurnn.engine.arrays.strict.StrictArray`, which refuse what CuPy refuses (implicit
conversion to NumPy, host arrays mixed into device work) and can count or refuse implicit
synchronisations (:func:`gpurnn.engine.arrays.strict.transfer_guard`). Its arrays are "device
arrays" here: they move only through :func:`to_device` and :func:`to_host`.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy

from . import precision, strict

try:  # CuPy is an optional extra (gpurnn[cuda12] / gpurnn[cuda13]).
    import cupy
    import cupyx
    _cupy_import_error: Exception | None = None
except Exception as error:  # ImportError, or a broken CUDA install raising at import
    cupy = None
    cupyx = None
    _cupy_import_error = error

__all__ = [
    "Device", "get_device", "cuda_available", "cuda_unavailable_reason", "check_cuda_available",
    "get_array_module",
    "is_device_array", "device_of", "to_host", "to_device", "scatter_add", "host_rng",
    "keyed_uniform",
    "synchronize", "cuda_device_count", "nccl_unavailable_reason", "nccl_unique_id", "NcclSum",
]

_DEVICE_PATTERN = re.compile(r"^(cpu-strict|cpu|auto|cuda)(?::(\d+))?$")


def cuda_unavailable_reason() -> str | None:
    """Why the GPU cannot be used, or None when it can."""
    if cupy is None:
        return f"CuPy is not importable ({_cupy_import_error!r})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError when the driver is missing
        return f"CUDA reports no usable device ({error})"
    if count == 0:
        return "no CUDA device is visible"
    return None


def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    return cuda_unavailable_reason() is None


def check_cuda_available() -> None:
    """Raise RuntimeError, chained to the original cause, when the GPU cannot be used."""
    problem = cuda_unavailable_reason()
    if problem is not None:
        raise RuntimeError(f"device 'cuda' cannot be used: {problem}; use device 'cpu' "
                           f"(--device cpu), or install the CuPy wheel that matches the CUDA "
                           f"driver (pip install 'gpurnn[cuda12]' or 'gpurnn[cuda13]')") \
            from _cupy_import_error


@dataclass(frozen=True)
class Device:
    """Where arrays live: ``kind`` is "cpu", "cpu-strict" or "cuda", ``index`` the GPU
    number."""

    kind: str
    index: int = 0

    @property
    def xp(self):
        """The array module for this device: numpy, cupy, or cpu-strict's ``strict.xp``."""
        if self.kind == "cuda":
            return cupy
        return numpy if self.kind == "cpu" else strict.xp

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    def use(self):
        """A context manager making this device current (a no-op on the CPU)."""
        if self.kind != "cuda":
            return contextlib.nullcontext()
        return cupy.cuda.Device(self.index)


def get_device(spec: "str | Device" = "cpu") -> Device:
    """Parse a device string: "cpu", "cuda", "cuda:N", "auto" (the GPU when usable) or
    "cpu-strict" (NumPy with CuPy's rules, see :mod:`gpurnn.engine.arrays.strict`)."""
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string like 'cpu', 'cuda', 'cuda:0' or 'auto', "
                        f"got {type(spec).__name__}")
    match = _DEVICE_PATTERN.match(spec.strip().lower())
    if match is None:
        raise ValueError(f"unknown device {spec!r}; expected 'cpu', 'cuda', 'cuda:N', 'auto' "
                         f"or 'cpu-strict'")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind in ("cpu", "cpu-strict"):
        if match.group(2) is not None:
            raise ValueError(f"unknown device {spec!r}; the CPU takes no index")
        return Device(kind)
    if kind == "auto":
        if match.group(2) is not None:
            raise ValueError(f"unknown device {spec!r}; 'auto' takes no index")
        return Device("cuda", 0) if cuda_available() else Device("cpu")
    check_cuda_available()
    count = cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise ValueError(f"device {spec!r} requested but only {count} CUDA device(s) are visible")
    return Device("cuda", index)


def is_device_array(array) -> bool:
    """True for a CuPy array or a cpu-strict one (arrays that need explicit transfers)."""
    return type(array) is strict.StrictArray or (cupy is not None
                                                 and isinstance(array, cupy.ndarray))


def get_array_module(*arrays):
    """numpy, cupy if any argument is a CuPy array, ``strict.xp`` if any is a cpu-strict
    array, ``precision.xp`` if any is a 16-bit :class:`gpurnn.engine.arrays.precision.MixedArray`
    (scalars and None are ignored)."""
    for array in arrays:
        if type(array) is strict.StrictArray:
            return strict.xp
        if type(array) is precision.MixedArray:          # a 16-bit step on NumPy
            return precision.xp
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return numpy


def device_of(array) -> Device:
    """The device an array lives on."""
    if type(array) is strict.StrictArray:
        return Device("cpu-strict")
    if is_device_array(array):
        return Device("cuda", array.device.id)
    return Device("cpu")


def to_host(array):
    """A NumPy array (a device array is copied to the host; a NumPy array is returned as
    is)."""
    if type(array) is strict.StrictArray:
        return array.get()
    if is_device_array(array):
        return cupy.asnumpy(array)
    return numpy.asarray(array)


def to_device(array, device: "str | Device", dtype=None):
    """Move ``array`` to ``device`` (optionally casting), copying only when needed."""
    device = get_device(device)
    if device.kind == "cpu":
        return numpy.asarray(to_host(array), dtype=dtype)
    if device.kind == "cpu-strict":
        return strict.from_host(array if type(array) is strict.StrictArray else to_host(array),
                                dtype)
    if type(array) is strict.StrictArray:
        array = array.get()
    with device.use():
        return cupy.asarray(array, dtype=dtype)


def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` in place, with repeated indices accumulated.

    Used for the gradient of a row gather (token ids selecting rows of Uᵀ or V). On CuPy
    ``cupyx.scatter_add`` does it with atomics. On NumPy, rows are sorted by index and each
    run of equal indices summed with one ``add.reduceat``: several times faster than the
    unbuffered ``add.at`` on (rows, features) values.
    """
    if type(target) is strict.StrictArray:
        strict.scatter_add(target, indices, values, _host_scatter_add)
        return
    if is_device_array(target):
        cupyx.scatter_add(target, indices, values)
        return
    _host_scatter_add(target, indices, values)


def _host_scatter_add(target, indices, values) -> None:
    indices = numpy.asarray(indices).reshape(-1)
    if indices.size == 0:
        return
    order = numpy.argsort(indices, kind="stable")
    ordered = indices[order]
    starts = numpy.flatnonzero(numpy.r_[True, ordered[1:] != ordered[:-1]])
    target[ordered[starts]] += numpy.add.reduceat(values[order], starts, axis=0)


def host_rng(seed) -> numpy.random.Generator:
    """A seeded NumPy generator. Random numbers are drawn on the host and then moved,
    so the CPU and the GPU see identical initial parameters and samples."""
    return numpy.random.default_rng(seed)


def keyed_uniform(key, device: "str | Device"):
    """``draw(shape)`` -> uniform numbers in [0, 1) on ``device``, from a generator seeded by
    ``key`` (a tuple of non-negative ints): NumPy's on the host (cpu, cpu-strict, moved
    there), CuPy's on a GPU, so that the numbers are made where they are used."""
    device = get_device(device)
    seed = numpy.random.SeedSequence(list(key))
    if device.kind == "cuda":
        with device.use():
            generator = cupy.random.default_rng(int(seed.generate_state(1, numpy.uint64)[0]))
        return lambda shape: generator.random(shape)
    generator = numpy.random.default_rng(seed)
    return lambda shape: to_device(generator.random(shape), device)


def synchronize(device: "str | Device | None" = None) -> None:
    """Wait for queued GPU work (a no-op on the CPU); call it around timings."""
    if device is None:
        if cuda_available():
            cupy.cuda.get_current_stream().synchronize()
        return
    device = get_device(device)
    if device.kind == "cuda":
        with device.use():
            cupy.cuda.get_current_stream().synchronize()


# ------------------------------------------------------------------------------------------
# Communication helpers for data-parallel training (gpurnn.distributed). cupy.cuda.nccl is
# imported on first use only: it loads libnccl, which single-GPU work never needs.

def cuda_device_count() -> int:
    """How many CUDA devices this process sees (0 without CuPy or a driver)."""
    if cuda_unavailable_reason() is not None:
        return 0
    return cupy.cuda.runtime.getDeviceCount()


def _nccl():
    from cupy.cuda import nccl
    if not getattr(nccl, "available", True):
        raise ImportError("this CuPy was built without NCCL")
    return nccl


def nccl_unavailable_reason() -> str | None:
    """Why NCCL cannot reduce CuPy buffers here, or None when it can."""
    problem = cuda_unavailable_reason()
    if problem is not None:
        return problem
    try:
        _nccl()
    except Exception as error:  # ImportError, or libnccl failing to load
        return f"cupy.cuda.nccl is not usable ({error})"
    return None


def nccl_unique_id():
    """A new NCCL unique id (a picklable tuple): made on one rank and sent to the others."""
    return _nccl().get_unique_id()


class NcclSum:
    """Sum a CuPy buffer in place over ``size`` processes, one GPU each, with NCCL.

    Every process builds one with the same ``unique_id`` (from :func:`nccl_unique_id` on one
    of them) and its own ``rank``; ``device`` is the GPU this process reduces on. The
    reduction is queued on the current stream, in order with the kernels that filled the
    buffer and those that read it; reading the result on the host synchronises as usual.
    """

    def __init__(self, size: int, unique_id, rank: int, device: int):
        nccl = _nccl()
        self._device = device
        self._types = {numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32,
                       numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64}
        self._sum = nccl.NCCL_SUM
        with cupy.cuda.Device(device):
            self._comm = nccl.NcclCommunicator(size, unique_id, rank)

    def __call__(self, buffer):
        if buffer.dtype not in self._types or not buffer.flags.c_contiguous:
            raise TypeError(f"NCCL sums contiguous float32/float64 buffers, got "
                            f"{buffer.dtype} (contiguous: {buffer.flags.c_contiguous})")
        with cupy.cuda.Device(self._device):
            stream = cupy.cuda.get_current_stream()
            self._comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                                 self._types[buffer.dtype], self._sum, stream.ptr)
        return buffer
