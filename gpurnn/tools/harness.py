"""The one timing harness behind every CPU figure of ``benchmarks/`` and ``gpurnn bench``.

What every program that records a figure gets from here, so that the figures are taken and
reported alike:

* :func:`environment`: the machine (:func:`machine_info`), its load
  average, the BLAS library with the kernel family it chose (threadpoolctl's
  ``architecture``) and its threads, and the ``OPENBLAS_*`` variables, with
  ``openblas_coretype_pinned`` saying whether ``OPENBLAS_CORETYPE`` was set (a Haswell pin
  on an AVX-512 machine halves GEMM speed).
* :class:`Rounds`: systems interleaved in each round, in a shuffled order, each sample
  repeating its work until it lasts about ``min_sample_s``; the systems are plain callables
  (in this process) or tasks of :class:`Worker` processes (one system per process, set up
  once), so that a burst of load on a shared machine hits all of them alike.
* :func:`summary` (median, quartiles, min, max) and :func:`ratio` (one system's time over
  another's, round by round, with ``clear`` false when the quartiles of the ratios straddle
  1: the spread exceeds the difference); :func:`noise_warnings` turns those into the
  warnings a program prints and records.

A worker process runs :func:`serve` with a ``setup(command) -> {task: function}``; the
coordinator's :class:`Worker` sends it JSON lines (``setup``, then ``time``) and reads one
JSON line back per command.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time

__all__ = ["environment", "machine_info", "blas_pools", "summary", "ratio", "noise_warnings", "Rounds",
           "Worker", "serve", "MIN_SAMPLE_S"]

MIN_SAMPLE_S = 0.03     # a timed sample repeats its work until it lasts about this long


def blas_pools() -> list:
    """The BLAS libraries loaded in this process: library, version, kernel family, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{key: pool.get(key) for key in ("internal_api", "version", "architecture",
                                            "num_threads", "threading_layer")}
            for pool in threadpool_info() if pool.get("user_api") == "blas"]


def machine_info() -> dict:
    """Machine, CPU, cores, BLAS, library versions, GPU and date."""
    import datetime
    import platform

    import numpy

    from ..engine.arrays import backend
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "cores": os.cpu_count(), "numpy": numpy.__version__,
            "load_average": list(os.getloadavg())}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    blas = numpy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    info["blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    if backend.cupy is not None:
        info["cupy"] = backend.cupy.__version__
    if backend.cuda_available():
        name = backend.cupy.cuda.runtime.getDeviceProperties(0)["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else name
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def environment() -> dict:
    """Everything about the machine a figure depends on, taken now (see the module doc)."""
    info = machine_info()             # (imports NumPy, so that threadpoolctl sees its BLAS)
    openblas = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    info.update(blas_pools=blas_pools(), openblas_env=openblas,
                openblas_coretype_pinned="OPENBLAS_CORETYPE" in openblas,
                gpurnn_env={k: v for k, v in os.environ.items() if k.startswith("GPURNN")})
    return info


def summary(values) -> dict:
    """Median, quartiles (q1, q3), min, max and count of a list of samples."""
    values = sorted(values)
    if len(values) > 1:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": values[0],
            "max": values[-1], "n": len(values)}


def ratio(slower, faster) -> dict:
    """``slower[r] / faster[r]`` round by round (how many times faster the second is): the
    :func:`summary` of the ratios and ``clear``: their quartiles do not straddle 1, i.e. the
    spread is smaller than the difference."""
    if len(slower) != len(faster):
        raise ValueError(f"paired samples differ in length: {len(slower)} and {len(faster)}")
    out = summary([s / f for s, f in zip(slower, faster)])
    out["clear"] = not out["q1"] <= 1.0 <= out["q3"]
    return out


def noise_warnings(comparisons: dict) -> list:
    """One warning per comparison (name -> :func:`ratio`) whose spread exceeds its difference."""
    return [f"{name}: the quartiles of the ratio over {r['n']} rounds ({r['q1']:.2f}-"
            f"{r['q3']:.2f}) straddle 1, the spread exceeds the difference"
            for name, r in comparisons.items() if not r["clear"]]


class Rounds:
    """Interleaved timing of several systems: ``add`` them, then ``run(rounds)``.

    A system is ``function`` (called ``repeats`` times per sample, timed here) or a
    ``(worker, task)`` pair (timed inside the worker); ``clock`` is ``"wall"``
    (``time.perf_counter``) or ``"cpu"`` (the timing thread's CPU time, which other tenants
    of the machine barely move). ``samples[name]`` holds seconds per call, one per round.
    """

    def __init__(self, min_sample_s: float = MIN_SAMPLE_S, seed=None):
        self.systems, self.samples, self.repeats = {}, {}, {}
        self.min_sample_s = min_sample_s
        self.order_log = []
        self._random = random.Random(seed)

    def add(self, name, function=None, *, worker=None, task=None, clock="wall"):
        if (function is None) == (worker is None):
            raise ValueError("give a function or a worker with its task")
        self.systems[name] = (function, worker, task or name, clock)
        self.samples[name] = []

    def _time(self, name, repeats):
        function, worker, task, clock = self.systems[name]
        if worker is not None:
            return worker.ask(cmd="time", task=task, repeats=repeats, clock=clock)["seconds"]
        return time_calls(function, repeats, clock)

    def calibrate(self):
        """Repeats per sample so that each lasts about ``min_sample_s`` (after a warm-up)."""
        for name in self.systems:
            self._time(name, 1)                                  # warm-up
            once = self._time(name, 1)
            self.repeats[name] = max(1, round(self.min_sample_s / max(once, 1e-7)))

    def run(self, rounds: int) -> dict:
        if not self.repeats:
            self.calibrate()
        order = list(self.systems)
        for _ in range(rounds):
            self._random.shuffle(order)
            self.order_log.append(list(order))
            for name in order:
                self.samples[name].append(self._time(name, self.repeats[name]))
        return self.samples

    def summaries(self) -> dict:
        return {name: summary(values) for name, values in self.samples.items()}


def time_calls(function, repeats, clock="wall") -> float:
    """Seconds per call of ``function()`` over ``repeats`` calls, by the wall or CPU clock."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    start = now()
    for _ in range(repeats):
        function()
    return (now() - start) / repeats


# --- worker processes ---------------------------------------------------------------------
class Worker:
    """A worker process: ``python script --worker SYSTEM`` with ``root`` first on the path
    (another checkout for a before/after) and ``env`` added to the environment."""

    def __init__(self, script, system, root=None, env=None):
        paths = [str(root)] if root else []
        environ = dict(os.environ, **(env or {}))
        environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])
        self.system = system
        self.process = subprocess.Popen([sys.executable, str(script), "--worker", system],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=environ)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.system} died on {command}")
        return json.loads(line)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def serve(setup, stdin=None, stdout=None) -> None:
    """The worker's loop: ``setup`` commands get ``setup(command) -> {task: function}``
    (each task warmed up once, the names replied), ``time`` commands the seconds per call
    of ``repeats`` calls by the command's clock."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tasks = {}
    for line in stdin:
        command = json.loads(line)
        if command["cmd"] == "setup":
            tasks = setup(command)
            for task in tasks.values():
                task()
            reply = {"tasks": list(tasks)}
        else:
            reply = {"seconds": time_calls(tasks[command["task"]], command["repeats"],
                                           command.get("clock", "wall"))}
        print(json.dumps(reply), file=stdout, flush=True)
