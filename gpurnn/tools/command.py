"""How every ``gpurnn`` command and script runs: one BLAS thread unless the environment
says otherwise, and the errors a user can fix told in one line with exit code 2."""
from __future__ import annotations

import sys

from .arguments import UsageError

__all__ = ["run_reporting_errors", "with_blas_threads", "blas_threads"]


def with_blas_threads(handler):
    """``handler`` run inside :func:`blas_threads` (for the scripts' entry points too)."""
    def run(args):
        with blas_threads():
            return handler(args)
    return run


# Thread settings a user may have given; any of them turns the default below off.
_THREAD_VARIABLES = ("GPURNN_BLAS_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                     "MKL_NUM_THREADS")


def blas_threads():
    """One BLAS thread for the command, unless the environment sets a number
    (GPURNN_BLAS_THREADS, or the BLAS's own OPENBLAS/OMP/MKL_NUM_THREADS).

    The time loop's products are small: a second BLAS thread gains little on an idle
    machine and, spinning against the elementwise work and against other processes, made
    steps 1.7-4x slower on a loaded one (benchmarks/threads.py, results/threads.json).
    """
    import contextlib
    import os

    from threadpoolctl import threadpool_limits
    if any(name in os.environ for name in _THREAD_VARIABLES[1:]) \
            and "GPURNN_BLAS_THREADS" not in os.environ:
        return contextlib.nullcontext()
    text = os.environ.get("GPURNN_BLAS_THREADS", "1")
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"GPURNN_BLAS_THREADS must be a positive integer, got {text!r}")
    return threadpool_limits(limits=int(text), user_api="blas")


def run_reporting_errors(name: str, handler, args) -> int:
    """``handler(args)``, with the errors a user can fix told in one line, ``NAME: error:
    ...``, exit code 2 (the scripts under scripts/ report theirs the same way)."""
    try:
        return handler(args)
    except (UsageError, ValueError, TypeError, RuntimeError, OSError) as error:
        from ..training.distributed import printing_rank
        if printing_rank():  # under mpirun every rank raises it; rank 0 tells
            print(f"{name}: error: {error}", file=sys.stderr)
        return 2
