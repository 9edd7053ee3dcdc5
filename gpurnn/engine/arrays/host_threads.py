"""Large NumPy work split over the host's cores: Python threads, BLAS on one thread each.

NumPy's elementwise functions (``exp`` over a block of logits) run on one core, while
OpenBLAS spreads each product over all of them and, between products, keeps its worker
threads spinning for a while. So a loop of "product, elementwise pass, product" leaves
cores idle during every pass, and on a shared machine every multi-threaded product also
waits for a worker that another process has descheduled. Giving each core a share of
*independent* rows instead — its own products on one BLAS thread and its own elementwise
passes, with nothing to synchronise until the shares are summed — keeps every core busy
(measured in ``benchmarks/cpu_roofline.py``; see the README's "How it is fast").

``threadpoolctl`` holds BLAS at one thread while the shares run. On CuPy arrays, with one
core, or with ``GPURNN_HOST_THREADS=1`` in the environment, :func:`host_workers` is 1 and
callers run their plain single-thread loop, which every threaded path is tested against.

The BLAS limit is process-wide while it holds: products that other threads of the program
run in that window also run on one BLAS thread (the results are the same).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading

import numpy

__all__ = ["host_workers", "run_shares", "small_products", "HOST_THREADS",
           "SMALL_PRODUCT_FLOPS"]

# Below this many flops a product gains at most tens of microseconds from a second BLAS
# thread on a quiet machine (a (32 × 100) @ (100 × 100) product: none), while every
# multi-threaded product wakes OpenBLAS's workers, which then spin beside the next
# elementwise work, and on a loaded machine waits for one of them per product.
SMALL_PRODUCT_FLOPS = 1 << 22


def _configured_threads() -> int:
    value = os.environ.get("GPURNN_HOST_THREADS", "")
    if value.strip():
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"GPURNN_HOST_THREADS must be a positive integer, got {value!r}")
        if threads < 1:
            raise ValueError(f"GPURNN_HOST_THREADS must be a positive integer, got {value!r}")
        return threads
    return os.cpu_count() or 1


# Threads for host work; 1 runs everything in the calling thread (the plain path).
HOST_THREADS = _configured_threads()

_lock = threading.Lock()
_pool = None
_controller = None


def _blas_controller():
    """threadpoolctl's controller, made on first use (it inspects the loaded libraries)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()
    return _controller


def host_workers(xp, parts: int) -> int:
    """How many threads should share ``parts`` independent pieces of ``xp`` work."""
    if xp is not numpy or parts < 2 or HOST_THREADS < 2:
        return 1
    return min(HOST_THREADS, parts)


def small_products(xp, flops):
    """A context in which BLAS runs on one thread when each product has fewer than
    SMALL_PRODUCT_FLOPS flops (NumPy only; otherwise it changes nothing)."""
    if xp is not numpy or flops >= SMALL_PRODUCT_FLOPS:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")


def run_shares(function, shares):
    """``[function(share) for share in shares]``, the shares on separate threads (the first
    in the calling thread) with BLAS on one thread; returns the results in order."""
    global _pool
    if len(shares) == 1:
        return [function(shares[0])]
    with _lock:
        if _pool is None or _pool._max_workers < len(shares) - 1:
            _pool = concurrent.futures.ThreadPoolExecutor(len(shares) - 1,
                                                          thread_name_prefix="gpurnn-host")
        pool = _pool
    with _blas_controller().limit(limits=1, user_api="blas"):
        futures = [pool.submit(function, share) for share in shares[1:]]
        first = function(shares[0])
        return [first] + [future.result() for future in futures]
