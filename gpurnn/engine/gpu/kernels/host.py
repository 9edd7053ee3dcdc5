"""The kernel sources built for the host, and a launcher that runs them on NumPy arrays.

``host/emulate.cpp`` defines the CUDA built-ins away and launches a kernel as the GPU
would: every (blockIdx, threadIdx) of the grid runs the kernel's own ``__global__`` body,
kernels with ``__syncthreads`` as concurrent threads per block, grid-synchronised ones with
every block at once. So tests run the GPU's maths *and* indexing on the CPU and compare them
with the NumPy path. Builds are cached in the temp directory, keyed by a hash of the
sources and the compiler flags.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy

from ...arrays import strict
from . import KERNELS, function_name, pack_args, source_dir, source_names, sources_hash

__all__ = ["compiler", "build", "HostLauncher"]

_MODES = {"none": 0, "block": 1, "grid": 2}
_FLAGS = ("-std=c++20", "-O1", "-fPIC", "-pthread", "-fno-fast-math")


def compiler() -> str | None:
    """The host C++ compiler (``$CXX``, else g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _key(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]


def _run_all(commands) -> None:
    """Run compiler commands in parallel; RuntimeError with the output of a failure."""
    running = [(c, subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)) for c in commands]
    failures = []
    for command, process in running:
        output = process.communicate()[0]
        if process.returncode != 0:
            failures.append(f"$ {' '.join(command)}\n{output}")
    if failures:
        raise RuntimeError("host build of the kernels failed:\n" + "\n".join(failures))


def build(directory=None, defines=(), cache_dir=None) -> pathlib.Path:
    """Build every ``.cu`` source of ``directory`` (default: the package's) with the host
    emulation into one shared library; returns its path (reused if already built).

    ``defines`` are extra ``-D`` macros (``("GPURNN_FAULT_SIGN=-1",)`` plants a fault).
    The sources compile in parallel; the emulation runtime (the slow part) is built once
    per version of ``host/`` and shared by every build. Raises RuntimeError with the
    compiler's output when the build fails.
    """
    directory = pathlib.Path(directory) if directory is not None else source_dir()
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++ or $CXX) found to build the kernels")
    host = directory / "host"
    cache = pathlib.Path(cache_dir or tempfile.gettempdir()) / "gpurnn-kernels"
    cache.mkdir(parents=True, exist_ok=True)
    flags = _FLAGS + tuple(f"-D{d}" for d in defines)
    library = cache / f"kernels-{_key(sources_hash(directory), flags, cxx)}.so"
    if library.exists():
        return library
    runtime_source = (host / "emulate.cpp").read_bytes() + (host / "emulate.h").read_bytes()
    runtime = cache / f"emulate-{_key(runtime_source, _FLAGS, cxx)}.o"
    with tempfile.TemporaryDirectory(dir=cache) as work:
        work = pathlib.Path(work)
        commands, objects = [], []
        if not runtime.exists():
            commands.append([cxx, *_FLAGS, "-c", str(host / "emulate.cpp"), "-o",
                             str(work / "emulate.o")])
        for name in source_names(directory):
            objects.append(str(work / (name + ".o")))
            commands.append([cxx, *flags, f"-I{directory}", "-c", "-x", "c++", "-include",
                             str(host / "emulate.h"), str(directory / name), "-o", objects[-1]])
        _run_all(commands)
        if not runtime.exists():
            os.replace(work / "emulate.o", runtime)
        _run_all([[cxx, "-shared", "-pthread", str(runtime), *objects, "-o",
                   str(work / "kernels.so")]])
        os.replace(work / "kernels.so", library)  # atomic: no one loads half a file
    return library


class HostLauncher:
    """Runs kernels on NumPy arrays through the emulated launch of a host build.

    Same call as :class:`gpurnn.engine.gpu.kernels.CudaLauncher`:
    ``launch(kernel, dtype, grid, block, args, shared_mem=0)``.
    """

    def __init__(self, library=None, block_size=32, max_blocks=3, multiprocessors=3):
        # Small blocks and grids by default, so the kernels' grid-stride loops and
        # multi-block paths run even on the small arrays of tests.
        self.block_size, self.max_blocks = block_size, max_blocks
        self.multiprocessors = multiprocessors
        self.path = pathlib.Path(library) if library is not None else build()
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.gpurnn_emulate_launch.restype = ctypes.c_int
        self._lib.gpurnn_kernel_arg_sizes.restype = ctypes.c_int

    def max_cooperative_blocks(self, kernel, dtype, block, shared_mem) -> int:
        """Every block of an emulated grid is resident (they are all OS threads)."""
        return self.multiprocessors

    def arg_sizes(self, name: str) -> list | None:
        """The byte sizes of the registered kernel ``name``'s arguments (None if unknown)."""
        sizes = (ctypes.c_size_t * 32)()
        count = self._lib.gpurnn_kernel_arg_sizes(name.encode(), sizes, 32)
        return None if count < 0 else list(sizes[:count])

    def __call__(self, kernel, dtype, grid, block, args, shared_mem=0):
        # cpu-strict arrays are launched on the memory behind them, as a CUDA launch takes
        # a CuPy array's device pointer
        args = [strict.kernel_buffer(a) if type(a) is strict.StrictArray else a for a in args]
        packed = pack_args(kernel, dtype, args, lambda a: isinstance(a, numpy.ndarray))
        guarded = [_Guarded(v) if isinstance(v, numpy.ndarray) else v for v in packed]
        self._launch(kernel, dtype, grid, block, guarded, shared_mem)
        for position, value in enumerate(guarded):
            if isinstance(value, _Guarded):
                value.finish(f"{kernel} argument {position}")

    def _launch(self, kernel, dtype, grid, block, packed, shared_mem):
        keep, pointers, sizes = [], [], []
        for value in packed:
            if value is None or isinstance(value, _Guarded):
                cell = ctypes.c_void_p(None if value is None else value.pointer)
            else:  # an exact NumPy scalar: its bytes, as the GPU would receive them
                cell = ctypes.create_string_buffer(value.tobytes(), value.nbytes)
            keep.append(cell)
            pointers.append(ctypes.cast(ctypes.pointer(cell), ctypes.c_void_p))
            sizes.append(ctypes.sizeof(cell) if value is None or
                         isinstance(value, _Guarded) else value.nbytes)
        grid = (tuple(grid) + (1, 1, 1))[:3]
        block = (tuple(block) + (1, 1, 1))[:3]
        error = ctypes.create_string_buffer(512)
        status = self._lib.gpurnn_emulate_launch(
            function_name(kernel, dtype).encode(), (ctypes.c_uint * 3)(*grid),
            (ctypes.c_uint * 3)(*block), ctypes.c_size_t(int(shared_mem)),
            ctypes.c_int(_MODES[KERNELS[kernel].sync]),
            (ctypes.c_void_p * len(pointers))(*pointers), ctypes.c_int(len(pointers)),
            (ctypes.c_size_t * len(sizes))(*sizes), error, ctypes.c_size_t(len(error)))
        if status != 0:
            raise RuntimeError(f"emulated launch failed: {error.value.decode()}")


class _Guarded:
    """An array argument copied between guard zones. For float arrays the guards hold
    signalling NaNs: a kernel reading past its array computes with NaN, which the
    comparisons catch, and anything it writes there (arithmetic quiets a NaN) changes a
    guard, which :meth:`finish` reports. Other arrays get all-ones bytes (-1). On a GPU
    either fault would be silent corruption or a crash."""

    GUARD = 256  # bytes on each side (a multiple of every element size)
    _SIGNALLING_NAN = {4: numpy.uint32(0x7FA00000), 8: numpy.uint64(0x7FF4000000000000)}

    def __init__(self, array):
        self.array = array
        nbytes = array.nbytes
        self.buffer = numpy.empty(nbytes + 2 * self.GUARD, dtype=numpy.uint8)
        pattern = self._SIGNALLING_NAN.get(array.itemsize) if array.dtype.kind == "f" else None
        if pattern is None:
            self.buffer.fill(0xFF)
        else:
            self.buffer.view(pattern.dtype).fill(pattern)  # GUARD and nbytes are multiples
        self.expected = self.buffer[:self.GUARD].copy()
        self.inside = self.buffer[self.GUARD:self.GUARD + nbytes]
        self.inside[...] = array.reshape(-1).view(numpy.uint8)
        self.pointer = self.inside.ctypes.data

    def finish(self, where: str) -> None:
        for guard in (self.buffer[:self.GUARD], self.buffer[self.GUARD + self.array.nbytes:]):
            if (guard != self.expected).any():
                raise RuntimeError(f"{where} was written outside its {self.array.size} "
                                   f"elements")
        self.array.reshape(-1).view(numpy.uint8)[...] = self.inside
