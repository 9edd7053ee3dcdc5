"""Data-parallel training across processes, GPUs and hosts, on MPI (mpi4py) and NCCL.

Started as ``mpirun -n N gpurnn train ...`` (or ``mpiexec``), every process (a *rank*) runs
the same trainer on its own rows of each global batch. After the backward pass the
gradients of all parameters, packed into one flat buffer (:class:`FlatGradients`), are summed
across the ranks in one call, and every rank applies the same update, so the parameters
stay identical. The sum is MPI ``Allreduce`` on NumPy buffers and NCCL (through the backend
shim) on CuPy buffers; MPI also carries the start-up checks and the few small messages.

A process started without a launcher gets a :class:`SingleProcess`: mpi4py is not even
imported, and training is exactly what it is without this module.

How no rank is ever left waiting in a collective that the others will not reach:

- Start-up errors are collective. A file that only rank 0 reads (a checkpoint) is read there
  and its content or its error broadcast (:meth:`Communicator.on_root`); work that every
  rank does is followed by one all-gather of how it went (:meth:`Communicator.collectively`).
  Every rank then raises the same error together, and rank 0 prints it.
- Ranks started with other settings or other data are refused (:meth:`Communicator.agree`
  compares a hash of them, then names what differs).
- During training, a stop asked for on any rank (Ctrl-C) travels with the gradients, so all
  ranks stop after the same step; a stop for non-finite steps is decided on the summed
  numbers, so all ranks take it at once.
- Anything else raised on one rank (a bug, a full disk, a second Ctrl-C) ends the whole job
  with ``MPI_Abort`` (:func:`abort_all_on_failure`), as ``python -m mpi4py`` does; a rank
  killed outright is cleaned up by the launcher, which stops the others.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import traceback
import warnings

import numpy

from ..engine.arrays.backend import (NcclSum, cuda_device_count, device_of, get_array_module, is_device_array,
                      nccl_unavailable_reason, nccl_unique_id, synchronize, to_device, to_host)

__all__ = ["MPI_ENV", "GPU_REDUCE_ENV", "DistributedError", "Communicator", "SingleProcess",
           "MPICommunicator", "world", "launcher_size", "launcher_rank", "printing_rank",
           "collective", "is_collective", "abort_all_on_failure", "FlatGradients",
           "device_for_rank", "params_digest"]

# "1": use MPI even where no known launcher variable says so (another launcher); "0": never.
MPI_ENV = "GPURNN_MPI"
# How CuPy buffers are summed: "nccl", "mpi" (a CUDA-aware MPI) or "host" (staged through
# host memory); unset: NCCL where every rank has it, else a CUDA-aware MPI, else the host.
GPU_REDUCE_ENV = "GPURNN_GPU_REDUCE"

# What the common launchers put in each rank's environment: Open MPI, MPICH / Intel MPI
# (Hydra, and Slurm's PMI-2), MVAPICH.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def _first_int(names) -> tuple[str | None, int | None]:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return name, int(value)
    return None, None


def launcher_size() -> int:
    """The number of ranks an MPI launcher started, from its environment (1 without one)."""
    return _first_int(_SIZE_VARIABLES)[1] or 1


def launcher_rank() -> int:
    """This process's rank as the launcher's environment gives it (0 without one)."""
    return _first_int(_RANK_VARIABLES)[1] or 0


def printing_rank() -> bool:
    """True on the process that prints what all ranks raise together: rank 0, or a single
    process (known from the launcher's environment before MPI starts, or fails to)."""
    return (_WORLD.rank if _WORLD is not None else launcher_rank()) == 0


class DistributedError(RuntimeError):
    """The ranks disagree (settings, data, parameters) or one of them failed at start-up."""


def collective(error: BaseException) -> BaseException:
    """Mark ``error`` as raised by every rank together (no rank waits for another)."""
    try:
        error.gpurnn_collective = True
    except AttributeError:  # an exception type without a __dict__
        pass
    return error


def is_collective(error: BaseException) -> bool:
    return getattr(error, "gpurnn_collective", False)


def _portable(error: Exception, prefix: str = "") -> Exception:
    """``error`` as it can travel to other ranks (pickled), its message after ``prefix``."""
    if prefix:
        try:
            renamed = type(error)(f"{prefix}{error}")
        except Exception:  # constructors with other arguments
            renamed = DistributedError(f"{prefix}{type(error).__name__}: {error}")
        error = renamed
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return DistributedError(f"{prefix}{type(error).__name__}: {error}")


class Communicator:
    """The ranks of one training job, and the few collective operations training needs.

    Attributes:
        rank: this process's number, 0 … size - 1; rank 0 writes files and prints.
        size: the number of ranks (processes).
        local_rank: the rank among those on this host (picks the GPU).
    Every method is collective: all ranks call it, in the same order.
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1
    name = "one process"

    # --- what a transport provides --------------------------------------------------------
    def allreduce_(self, buffer):
        """Sum the contiguous 1-D ``buffer`` (NumPy or CuPy) over all ranks, in place."""
        raise NotImplementedError

    def broadcast(self, value, root: int = 0):
        """Rank ``root``'s ``value`` (any picklable object) on every rank."""
        raise NotImplementedError

    def allgather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        raise NotImplementedError

    def gather(self, value, root: int = 0) -> list | None:
        """Every rank's ``value`` in rank order on ``root``; None elsewhere."""
        raise NotImplementedError

    def abort(self, message: str, code: int = 1):
        """Print ``message`` and end every rank of the job now (never returns)."""
        raise NotImplementedError

    # --- built on them --------------------------------------------------------------------
    def on_root(self, read):
        """``read()`` run on rank 0 only; its result, or the error it raised, on every rank.

        For files only rank 0 needs to see (checkpoints): other hosts need no copy.
        """
        if self.size == 1:
            return read()
        outcome = None
        if self.rank == 0:
            try:
                outcome = (True, read())
            except Exception as error:
                outcome = (False, _portable(error))
        ok, value = self.broadcast(outcome)
        if not ok:
            raise collective(value)
        return value

    def collectively(self, work):
        """``work()`` run on every rank; if it raised on any, every rank raises the error of
        the first rank that failed (its message after "rank R: " when R is not 0).

        ``work`` must not itself call collective operations: a rank that fails early would
        skip them while the others wait.
        """
        if self.size == 1:
            return work()
        result, failure = None, None
        try:
            result = work()
        except Exception as error:
            failure = error
        failures = self.allgather(None if failure is None else _portable(failure))
        for rank, error in enumerate(failures):
            if error is not None:
                raise collective(_portable(error, "" if rank == 0 else f"rank {rank}: "))
        return result

    def agree(self, what: str, facts: dict) -> None:
        """Raise :class:`DistributedError` on every rank unless all ranks hold equal
        ``facts`` (a JSON-able dict). A hash of them is compared; the message names each
        key that differs and its value on every rank."""
        if self.size == 1:
            return
        digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
        everyone = self.allgather((digest.hexdigest(), facts))
        if len({hashed for hashed, _ in everyone}) == 1:
            return
        differences = []
        for key in sorted({key for _, theirs in everyone for key in theirs}):
            values = [theirs.get(key) for _, theirs in everyone]
            if any(value != values[0] for value in values):
                shown = ", ".join(f"rank {rank}: {value!r}" for rank, value in enumerate(values))
                differences.append(f"{key} ({shown})")
        raise collective(DistributedError(
            f"the {self.size} ranks disagree on {what}: "
            f"{'; '.join(differences) or 'their hashes differ'}; start "
            f"every rank with the same settings and data"))


class SingleProcess(Communicator):
    """One process, no MPI: every collective is the identity."""

    def allreduce_(self, buffer):
        return buffer

    def broadcast(self, value, root: int = 0):
        return value

    def allgather(self, value) -> list:
        return [value]

    def gather(self, value, root: int = 0) -> list:
        return [value]

    def abort(self, message: str, code: int = 1):
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(code)


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (default ``MPI.COMM_WORLD``), through mpi4py.

    NumPy buffers are summed with ``Allreduce``; CuPy buffers with NCCL (its unique id
    broadcast over MPI), a CUDA-aware MPI, or through host memory, chosen together on the
    first GPU buffer (see ``GPU_REDUCE_ENV``).
    """

    def __init__(self, comm=None):
        from mpi4py import MPI
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # ranks on this host
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        first_line = MPI.Get_library_version().strip().split("\n")[0]
        self.library = " ".join(first_line.split(",")[0].split())  # "MPICH Version: 5.0.2"
        self.name = f"MPI, {self.size} ranks ({self.library})"
        self.gpu_reduction = None  # "nccl", "mpi" or "host", once a CuPy buffer was summed
        self._gpu_sum = None

    def allreduce_(self, buffer):
        if is_device_array(buffer):
            if self._gpu_sum is None:
                self._gpu_sum = self._choose_gpu_sum(buffer)
            return self._gpu_sum(buffer)
        self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)
        return buffer

    def broadcast(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)

    def allgather(self, value) -> list:
        return self.comm.allgather(value)

    def gather(self, value, root: int = 0):
        return self.comm.gather(value, root=root)

    def abort(self, message: str, code: int = 1):
        print(message, file=sys.stderr, flush=True)
        self.comm.Abort(code)

    # --- GPU buffers ----------------------------------------------------------------------
    def _choose_gpu_sum(self, buffer):
        if device_of(buffer).kind == "cpu-strict":  # host memory, reached by explicit copies
            return self._host_sum
        asked = os.environ.get(GPU_REDUCE_ENV, "").strip().lower()
        if asked not in ("", "nccl", "mpi", "host"):
            raise ValueError(f"{GPU_REDUCE_ENV} must be nccl, mpi or host, got {asked!r}")
        info = self.comm.Get_info()
        kinds = info.get("mpi_memory_alloc_kinds") or ""  # MPI 4.1: "cuda:device" if CUDA-aware
        info.Free()
        votes = self.allgather((asked, nccl_unavailable_reason() is None, "cuda" in kinds))
        if len({vote[0] for vote in votes}) > 1:
            raise collective(DistributedError(f"the ranks disagree on {GPU_REDUCE_ENV}: "
                                              f"{[vote[0] for vote in votes]}"))
        choice = asked or ("nccl" if all(vote[1] for vote in votes) else
                           "mpi" if all(vote[2] for vote in votes) else "host")
        self.gpu_reduction = choice
        if choice == "nccl":
            unique_id = self.broadcast(nccl_unique_id() if self.rank == 0 else None)
            return NcclSum(self.size, unique_id, self.rank, device_of(buffer).index)
        if choice == "mpi":
            def cuda_aware_sum(array):
                synchronize(device_of(array))  # MPI reads the memory outside CUDA's streams
                self.comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)
                return array
            return cuda_aware_sum
        if self.rank == 0:
            warnings.warn("GPU gradients are summed through host memory: no NCCL in this CuPy "
                          "and no CUDA-aware MPI; install CuPy with NCCL for GPU-to-GPU sums",
                          RuntimeWarning, stacklevel=4)
        return self._host_sum

    def _host_sum(self, array):
        host = to_host(array)
        self.comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        array[...] = get_array_module(array).asarray(host)
        return array


_WORLD: Communicator | None = None


def find_mpiexec() -> str | None:
    """The ``mpiexec`` that launches this Python's ranks: the one installed beside it (the
    MPICH wheel of the ``mpi`` extra puts it there), else the first on PATH; None if none."""
    import shutil
    import sysconfig
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(folder, "mpiexec")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec")


def world() -> Communicator:
    """The job this process belongs to: an :class:`MPICommunicator` when an MPI launcher
    started several ranks (or ``GPURNN_MPI=1``), else a :class:`SingleProcess`, for which
    mpi4py is never imported. Made once per process.

    Raises:
        RuntimeError: started as several ranks but mpi4py is missing, or mpi4py loaded
            another MPI library than the launcher's (each rank would train alone).
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    wanted = os.environ.get(MPI_ENV, "").strip().lower()
    variable, size = _first_int(_SIZE_VARIABLES)
    size = size or 1
    if wanted in ("0", "no", "off", "false") or (size == 1 and wanted not in
                                                 ("1", "yes", "on", "true")):
        _WORLD = SingleProcess()
        return _WORLD
    started = f"started as one of {size} MPI ranks ({variable}={size})" if variable \
        else f"asked for MPI ({MPI_ENV}={wanted})"
    try:
        comm = MPICommunicator()
    except Exception as error:  # ImportError, or mpi4py failing to load an MPI library
        raise RuntimeError(f"this process was {started} but mpi4py cannot be used "
                           f"({type(error).__name__}: {error}); install it with "
                           f"pip install 'gpurnn[mpi]'") from error
    if variable and comm.size != size:
        raise RuntimeError(f"this process was {started} but MPI counts {comm.size}: mpi4py "
                           f"loaded another MPI ({comm.library}) than the launcher's; run the "
                           f"mpiexec of that MPI, or point MPI4PY_LIBMPI at the launcher's "
                           f"libmpi")
    _WORLD = comm
    return _WORLD


@contextlib.contextmanager
def abort_all_on_failure(comm: Communicator, program: str = "gpurnn"):
    """Around a rank's work: an error raised on this rank alone would leave the others
    waiting forever in their next collective, so it is printed (with its traceback) and
    the whole job is stopped with ``abort``. Errors that every rank raises together
    (:func:`collective`) and clean exits pass through; so does everything in one process."""
    try:
        yield
    except BaseException as error:
        clean = isinstance(error, SystemExit) and error.code in (0, None)
        if comm.size > 1 and not clean and not is_collective(error):
            if not isinstance(error, KeyboardInterrupt):
                traceback.print_exc()
            what = "interrupted" if isinstance(error, KeyboardInterrupt) \
                else f"{type(error).__name__}: {error}"
            comm.abort(f"{program}: rank {comm.rank} of {comm.size} failed ({what}); "
                       f"stopping every rank", 130 if isinstance(error, KeyboardInterrupt) else 1)
        raise


class FlatGradients:
    """The gradients of every parameter in one preallocated flat buffer, so that one
    collective call sums them all, plus ``extra`` scalar slots that ride along.

    Attributes:
        buffer: 1-D, on the parameters' device, of their dtype: what is all-reduced.
        grads: parameter name -> a view of ``buffer`` in that parameter's shape.
        values: the gradient part of ``buffer`` (1-D view); ``extra``: the slots after it.
    """

    def __init__(self, params: dict, extra: int = 0):
        if not params:
            raise ValueError("params must be a non-empty dict of name -> array")
        dtypes = {param.dtype for param in params.values()}
        if len(dtypes) != 1:
            raise TypeError(f"params must share one dtype, got {sorted(map(str, dtypes))}")
        first = next(iter(params.values()))
        self.shapes = {name: tuple(param.shape) for name, param in params.items()}
        self.size = sum(int(numpy.prod(shape)) for shape in self.shapes.values())
        self.buffer = to_device(numpy.zeros(self.size + extra, dtypes.pop()), device_of(first))
        self.values, self.extra = self.buffer[:self.size], self.buffer[self.size:]
        self.grads, offset = {}, 0
        for name, shape in self.shapes.items():
            count = int(numpy.prod(shape))
            self.grads[name] = self.buffer[offset:offset + count].reshape(shape)
            offset += count

    @property
    def nbytes(self) -> int:
        """Bytes summed per reduction (the extra slots included)."""
        return int(self.buffer.nbytes)

    def pack(self, grads: dict) -> dict:
        """Copy ``grads`` (name -> array, the parameters' shapes) into the buffer; returns
        the views, :attr:`grads`."""
        if grads.keys() != self.grads.keys():
            raise KeyError(f"gradients for {sorted(grads)}, expected {sorted(self.grads)}")
        with device_of(self.buffer).use():
            for name, view in self.grads.items():
                if tuple(grads[name].shape) != view.shape:
                    raise ValueError(f"gradient {name} has shape {tuple(grads[name].shape)}, "
                                     f"expected {view.shape}")
                view[...] = grads[name]
        return self.grads

    def zero(self) -> dict:
        """All gradients 0 (a rank with no rows in this batch); returns :attr:`grads`."""
        with device_of(self.buffer).use():
            self.values.fill(0)
        return self.grads

    def set_extra(self, values) -> None:
        with device_of(self.buffer).use():
            self.extra[...] = get_array_module(self.buffer).asarray(values,
                                                                    dtype=self.buffer.dtype)

    def get_extra(self) -> list:
        """The extra slots as Python floats (reading a GPU buffer synchronises)."""
        return to_host(self.extra).tolist()


def device_for_rank(spec: str, comm: Communicator) -> str:
    """The device a rank trains on: with several ranks, ``cuda`` (and ``auto`` where a GPU
    is visible) becomes ``cuda:<local rank mod visible GPUs>``, one GPU per rank when the
    launcher starts as many ranks per host as there are GPUs (or when it gives each rank
    one visible GPU). ``cpu`` and an explicit ``cuda:N`` are kept."""
    if comm.size == 1 or spec not in ("cuda", "auto"):
        return spec
    count = cuda_device_count()
    if count == 0:
        return "cpu" if spec == "auto" else spec  # 'cuda' then fails with the reason
    return f"cuda:{comm.local_rank % count}"


def params_digest(params: dict) -> str:
    """A hash of parameter values (names, shapes, dtypes, bytes): equal on every rank
    while the ranks stay in step."""
    digest = hashlib.sha256()
    for name in sorted(params):
        array = numpy.ascontiguousarray(to_host(params[name]))
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]
