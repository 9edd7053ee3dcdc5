"""The fused path's CUDA kernels: their sources, the table of what each takes, and launchers.

The sources are ``.cu``/``.cuh`` files in this package (package data, so an installed wheel
has them). Headers (``.cuh``) hold the maths as ``__host__ __device__`` functions; each
``.cu`` file holds thin ``extern "C" __global__`` wrappers, one per dtype (``_f32``,
``_f64``; the cell steps and the softmax also ``_f16`` and ``_bf16``, 16-bit storage with
float32 maths, ``storage16.cuh``), that only map threads to elements. The same files are built three ways:

* on a GPU, by :class:`CudaLauncher` through ``cupy.RawModule`` (NVRTC);
* in CI, to PTX for every architecture in :data:`ARCHS` by :func:`compile_ptx` (NVRTC from
  the ``nvidia-cuda-nvrtc-cu12`` wheel, which needs no driver);
* for the host, by :mod:`gpurnn.engine.gpu.kernels.host`, which runs the kernel bodies over an
  emulated grid so tests compare them with the NumPy path.

A launcher is called as ``launch(kernel, dtype, grid, block, args, shared_mem=0)``; the
arguments are converted and checked against :data:`KERNELS` first, so a wrong dtype, a
non-contiguous array or a missing argument is an error here, not memory corruption there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import pathlib
import re

import numpy

__all__ = ["ARCHS", "KERNELS", "ALL_DTYPES", "Kernel", "suffix", "functions", "KernelCompileError", "source_dir", "source_names",
           "expand", "compile_ptx", "pack_args", "CudaLauncher", "sources_hash"]

# Virtual architectures CI compiles for: Ampere (A100) and Hopper (H100/H200).
ARCHS = ("compute_80", "compute_90")
NVRTC_OPTIONS = ("-std=c++17",)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel of the sources: the file it is in, its arguments and how it synchronises.

    ``args`` are kinds: ``T*`` an array of the kernel's dtype, ``T*?`` the same or None,
    ``i64*`` an int64 array, ``u32*`` a uint32 array, ``T`` a scalar of the dtype, ``i32`` /
    ``i64`` integers. ``sync`` is "none" (no barrier), "block" (``__syncthreads``) or "grid"
    (grid barriers: needs a cooperative launch). ``dtypes`` are the storage types it is
    instantiated for: float32 and float64 always; the cell step kernels and the softmax
    also float16 and bfloat16 (16-bit loads and stores, float32 maths: see
    ``storage16.cuh``).
    """

    source: str
    args: tuple
    sync: str = "none"
    dtypes: tuple = ("float32", "float64")


KERNELS = {
    "elman_step": Kernel("elman.cu", ("T*", "T*", "T*?", "i64", "i32", "i32")),
    "elman_backward_delta": Kernel("elman.cu", ("T*", "T*", "T*", "i64", "i64", "i32")),
    "gru_step": Kernel("gated.cu", ("T*", "T*", "T*", "T*", "T*", "T*?", "i64", "i32")),
    "gru_factors": Kernel("gated.cu", ("T*", "T*", "T*", "T*", "T*", "T*", "i64", "i64", "i32")),
    "gru_backward_step": Kernel("gated.cu", ("T*", "T*", "T*", "T*", "T*", "i64", "i64", "i32")),
    "lstm_step": Kernel("gated.cu", ("T*", "T*", "T*", "T*", "i64", "i32")),
    "lstm_factors": Kernel("gated.cu", ("T*", "T*", "T*", "T*", "T*", "i64", "i64", "i32")),
    "lstm_backward_step": Kernel("gated.cu", ("T*", "T*", "T*", "T*", "T*", "T*", "i64", "i64",
                                              "i32")),
    "softmax_xent": Kernel("softmax.cu", ("T*", "T*", "T*?", "i64*", "T*?", "T", "i32", "i32"),
                           "block"),
    "sgd": Kernel("optim.cu", ("T*", "T*", "i64", "T")),
    "momentum": Kernel("optim.cu", ("T*", "T*", "T*", "i64", "T", "T", "i32")),
    "adagrad": Kernel("optim.cu", ("T*", "T*", "T*", "i64", "T", "T")),
    "rmsprop": Kernel("optim.cu", ("T*", "T*", "T*", "i64", "T", "T", "T", "T")),
    "adam": Kernel("optim.cu", ("T*", "T*", "T*", "T*", "i64", "T", "T", "T", "T", "T", "T",
                                "T")),
    "elman_persistent_forward": Kernel("persistent.cu", ("T*", "T*", "T*", "T*", "u32*", "i32",
                                                         "i32", "i32", "i32", "i32", "i32"),
                                       "grid"),
    "elman_persistent_backward": Kernel("persistent.cu", ("T*", "T*", "T*", "T*", "T*", "u32*",
                                                          "i32", "i32", "i32", "i32", "i32",
                                                          "i32"), "grid"),
    "gru_persistent_forward": Kernel("persistent.cu", ("T*", "T*", "T*", "T*", "T*", "T*?",
                                                       "u32*", "i32", "i32", "i32", "i32",
                                                       "i32"), "grid"),
    "gru_persistent_backward": Kernel("persistent.cu", ("T*", "T*", "T*", "T*", "T*", "T*",
                                                        "T*", "u32*", "i32", "i32", "i32",
                                                        "i32", "i32"), "grid"),
    "lstm_persistent_forward": Kernel("persistent.cu", ("T*", "T*", "T*", "T*", "u32*", "i32",
                                                        "i32", "i32", "i32", "i32"), "grid"),
    "lstm_persistent_backward": Kernel("persistent.cu", ("T*", "T*", "T*", "T*", "T*", "T*",
                                                         "T*", "T*", "u32*", "i32", "i32",
                                                         "i32", "i32", "i32"), "grid"),
    # the chunked scan of the diagonal cells (gpurnn.engine.gpu.scan), in launch order
    "scan_chunk_totals": Kernel("scan.cu", ("T*", "T*", "T*", "T*", "i64", "i32", "i32", "i32",
                                            "i32", "i32")),
    "scan_carries": Kernel("scan.cu", ("T*", "T*", "T*?", "i64", "i32")),
    "scan_chunk_states": Kernel("scan.cu", ("T*", "T*", "T*", "T*?", "T*?", "T*?", "i64", "i32",
                                            "i32", "i32", "i32", "i32")),
}

# Kernels instantiated for the 16-bit storage types too (the mixed precisions' cell steps
# and output layer); the persistent kernels and the optimizer updates (which update the
# float32 master weights and state, so their float32 kernels serve every precision) are
# float32/float64 only.
ALL_DTYPES = ("float32", "float64", "float16", "bfloat16")
for _name in ("elman_step", "elman_backward_delta", "gru_step", "gru_factors",
              "gru_backward_step", "lstm_step", "lstm_factors", "lstm_backward_step",
              "softmax_xent"):
    KERNELS[_name] = dataclasses.replace(KERNELS[_name], dtypes=ALL_DTYPES)
del _name

_SUFFIX = {numpy.dtype(numpy.float32): "f32", numpy.dtype(numpy.float64): "f64",
           numpy.dtype(numpy.float16): "f16"}
try:  # bfloat16 arrays come from ml_dtypes (gpurnn.engine.arrays.precision)
    import ml_dtypes as _ml_dtypes
    _SUFFIX[numpy.dtype(_ml_dtypes.bfloat16)] = "bf16"
except ImportError:
    _ml_dtypes = None
_NAMES = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16"}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


class KernelCompileError(RuntimeError):
    """A kernel source failed to compile; the message carries the compiler's log."""


def source_dir() -> pathlib.Path:
    """The directory holding the kernel sources (inside the installed package)."""
    return pathlib.Path(str(importlib.resources.files(__name__)))


def source_names(directory=None) -> list:
    """The ``.cu`` files (each one compiles on its own), sorted."""
    directory = pathlib.Path(directory) if directory is not None else source_dir()
    return sorted(p.name for p in directory.glob("*.cu"))


def sources_hash(directory=None) -> str:
    """A hash of every source and header (host/ included): what a build depends on."""
    directory = pathlib.Path(directory) if directory is not None else source_dir()
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.suffix in (".cu", ".cuh", ".cpp", ".h"):
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def expand(name: str, directory=None, _seen=None) -> str:
    """The source ``name`` with its local ``#include "x.cuh"`` headers inlined (each once,
    as ``#pragma once`` would), with ``#line`` marks so compiler messages name the
    original file and line. One self-contained string: CuPy's kernel cache keys on the
    source text, so a change in a header recompiles."""
    directory = pathlib.Path(directory) if directory is not None else source_dir()
    seen = set() if _seen is None else _seen
    if name in seen:
        return ""
    seen.add(name)
    out = [f'#line 1 "{name}"']
    for number, line in enumerate((directory / name).read_text().splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match:
            out.append(expand(match.group(1), directory, seen))
            out.append(f'#line {number + 1} "{name}"')
        elif line.strip() != "#pragma once":
            out.append(line)
    return "\n".join(out) + "\n"


def compile_ptx(name: str, arch: str = "compute_90", directory=None, options=()) -> str:
    """Compile the source ``name`` to PTX with NVRTC, no GPU or driver needed.

    Raises :class:`KernelCompileError` with the compiler log when the source does not
    compile. (``cupy.cuda.compiler.compile_using_nvrtc`` cannot be used without a driver:
    it asks the driver for its version.)
    """
    from cupy_backends.cuda.libs import nvrtc

    source = expand(name, directory)
    program = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, [f"-arch={arch}", *NVRTC_OPTIONS, *options])
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise KernelCompileError(f"{name} ({arch}) does not compile: {error}\n{log}") from None
        ptx = nvrtc.getPTX(program)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(program)


def pack_args(kernel: str, dtype, args, is_array=None) -> list:
    """``args`` converted to what the kernel takes: arrays checked (dtype, C-contiguity),
    scalars made exact NumPy scalars (int32/int64/the dtype), None kept for null pointers.

    ``is_array`` tells arrays of the launcher's kind (NumPy or CuPy) from the rest.
    """
    spec = KERNELS[kernel]
    dtype = numpy.dtype(dtype)
    if dtype not in _SUFFIX or _NAMES[_SUFFIX[dtype]] not in spec.dtypes:
        raise TypeError(f"{kernel}: the kernel takes {' or '.join(spec.dtypes)} arrays, "
                        f"got {dtype}")
    if len(args) != len(spec.args):
        raise TypeError(f"{kernel} takes {len(spec.args)} arguments, got {len(args)}")
    packed = []
    for position, (kind, value) in enumerate(zip(spec.args, args)):
        where = f"{kernel} argument {position} ({kind})"
        if kind.endswith("*") or kind.endswith("*?"):
            if value is None:
                if not kind.endswith("?"):
                    raise TypeError(f"{where} must be an array, got None")
                packed.append(None)
                continue
            expected = {"T": dtype, "i64": numpy.dtype(numpy.int64),
                        "u32": numpy.dtype(numpy.uint32)}[kind.rstrip("*?")]
            if is_array is not None and not is_array(value):
                raise TypeError(f"{where} must be a {expected} array, got {type(value).__name__}")
            if value.dtype != expected:
                raise TypeError(f"{where} must have dtype {expected}, got {value.dtype}")
            if not value.flags.c_contiguous:
                raise ValueError(f"{where} must be C-contiguous")
            packed.append(value)
        else:
            scalar_type = {"T": dtype.type, "i32": numpy.int32, "i64": numpy.int64}[kind]
            packed.append(scalar_type(value))
    return packed


def suffix(dtype) -> str:
    """The instantiation suffix of ``dtype``: f32, f64, f16 or bf16 (a name like
    "bfloat16" is taken too, without ml_dtypes)."""
    if isinstance(dtype, str) and dtype in _NAMES.values():
        return {v: k for k, v in _NAMES.items()}[dtype]
    return _SUFFIX[numpy.dtype(dtype)]


def function_name(kernel: str, dtype) -> str:
    """The ``extern "C"`` name of ``kernel`` for ``dtype``, e.g. ``elman_step_f32``."""
    return f"{kernel}_{suffix(dtype)}"


def functions() -> list:
    """Every ``extern "C"`` kernel name of the sources: each kernel for each of its dtypes."""
    return sorted(f"{name}_{suffix(d)}" for name, spec in KERNELS.items() for d in spec.dtypes)


class CudaLauncher:
    """Launches kernels on the current CUDA device through ``cupy.RawModule``.

    Each source file is one module, compiled once per process (and cached on disk by CuPy);
    the module of grid-synchronised kernels is launched cooperatively, the guarantee that
    every block is resident at once, which a grid barrier needs.
    """

    block_size = 256  # threads per block of the elementwise and row kernels

    def __init__(self):
        import cupy

        self._cupy = cupy
        self._modules = {}
        self._functions = {}
        device = cupy.cuda.Device()
        self.multiprocessors = device.attributes["MultiProcessorCount"]
        self.max_blocks = 32 * self.multiprocessors  # grid-stride loops cover the rest
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        # what the plan checks launches against (gpurnn.engine.gpu.launches.device_spec)
        self.device_attributes = dict(device.attributes)
        self.device_name = name.decode() if isinstance(name, bytes) else name

    def function(self, kernel: str, dtype):
        key = (kernel, numpy.dtype(dtype))
        if key not in self._functions:
            spec = KERNELS[kernel]
            if spec.source not in self._modules:
                self._modules[spec.source] = self._cupy.RawModule(
                    code=expand(spec.source), options=NVRTC_OPTIONS,
                    enable_cooperative_groups=spec.sync == "grid")
            self._functions[key] = self._modules[spec.source].get_function(
                function_name(kernel, dtype))
        return self._functions[key]

    def __call__(self, kernel, dtype, grid, block, args, shared_mem=0):
        cupy = self._cupy
        packed = pack_args(kernel, dtype, args, lambda a: isinstance(a, cupy.ndarray))
        function = self.function(kernel, dtype)
        if shared_mem > 48 * 1024:  # above the default dynamic shared memory: opt in
            function.max_dynamic_shared_size_bytes = int(shared_mem)
        null = numpy.uint64(0)  # a null pointer for optional arrays
        function(tuple(grid), tuple(block), tuple(null if a is None else a for a in packed),
                 shared_mem=int(shared_mem))

    def max_cooperative_blocks(self, kernel, dtype, block, shared_mem) -> int:
        """How many blocks of this kernel fit on the device at once (a cooperative grid's
        upper bound)."""
        from cupy_backends.cuda.api import driver

        function = self.function(kernel, dtype)
        if shared_mem > 48 * 1024:
            function.max_dynamic_shared_size_bytes = int(shared_mem)
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(
            function.kernel.ptr, int(block), int(shared_mem))
        return per_sm * self.multiprocessors
