"""What every benchmark records beside its numbers: the machine, the versions, the date."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import time

import numpy

from gpurnn import backend

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_name() -> str:
    config = numpy.show_config(mode="dicts") if numpy.__version__ >= "1.25" else {}
    blas = config.get("Build Dependencies", {}).get("blas", {})
    return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()


def machine_info() -> dict:
    """Machine, library versions and date, for the JSON beside the figures."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "blas": blas_name(),
    }
    if backend.cupy is not None:
        info["cupy"] = backend.cupy.__version__
    if backend.cuda_available():
        props = backend.cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def time_call(fn, *, repeats=5, warmup=1, device=None) -> float:
    """Median wall time of ``fn()`` in seconds, after warm-up, device synchronised."""
    for _ in range(warmup):
        fn()
    backend.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        backend.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_json(name: str, payload: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
