"""The CPU training step against its GEMM roofline and against PyTorch, measured interleaved.

For every configuration (``gpurnn.tools.bench.CONFIGS``) and sequence length T, two worker
processes hold one system each, built once: gpurnn (NumPy) and PyTorch (CPU, as many threads
as cores). The coordinator then runs rounds; each round times, in a shuffled order,

* ``step``: one gpurnn training step (forward, BPTT, SGD update);
* ``gemm``: the step's own matrix products alone (``bench.gemm_shapes``: same shapes, same
  counts, float32, NumPy's BLAS with its default threads), as ``gpurnn bench`` times them;
* ``torch``: one PyTorch training step of the same model;
* ``step_cpu`` and ``gemm_cpu``: the step and its products on one core (one BLAS thread, no
  host threads), timed by the thread's CPU clock, which the machine's other tenants barely
  move: ``efficiency_one_core`` = gemm_cpu / step_cpu, the share of the step's work that
  is matrix products, the figure that stays put when the wall-clock ones swing.

The timing is :mod:`gpurnn.tools.harness`'s, as for every CPU figure of ``benchmarks/``
(worker processes, shuffled rounds, medians with quartiles, paired ratios, a warning when
their quartiles straddle 1, the load, BLAS kernel family and ``OPENBLAS_CORETYPE`` recorded).
So every ratio comes from measurements taken seconds apart, under the same load: the
machine this runs on is shared, and its load moves every absolute figure by 1.5-2x. Reported
per cell: medians with the quartiles, ``efficiency`` = median(gemm) / median(step) (the
``gpurnn bench`` definition), ``vs_torch`` = median over rounds of torch / step, and (with
``--host-threads-ab``, language models only) ``host_threads_gain`` = median over rounds of
the plain path's step (``GPURNN_HOST_THREADS=1``, a third worker) / the default step.

``--baseline DIR`` adds a worker running the gpurnn found in DIR (an earlier version's
checkout) for a before/after measured in the same rounds: ``baseline_gain`` (wall clock) and
``baseline_one_core_gain`` (CPU time), each the median over rounds of baseline / current.

``--kernels`` times single kernels instead, many repeats in one process, minimum and median:
np.exp against torch.exp (one thread) over one step's logits (T = 32: 1,024 × 8,000
float32), in L2-sized chunks, on underflowing inputs and in float64; and an elementwise
product on whole contiguous arrays against the same count of elements as column slices of a
wider row (the gated cells' gate blocks).

    python benchmarks/cpu_roofline.py [--configs lm-trunc4 ...] [--lengths 32 128 512]
        [--rounds 5] [--host-threads-ab] [--output benchmarks/results/cpu_roofline]
    python benchmarks/cpu_roofline.py --table gated lm [--baseline DIR] [--rounds 5] ...

``--table gated`` runs the GRU and LSTM at the sizes of issue 23's table (H, B, T: 128, 64,
128; 256, 64, 128; 256, 8, 128; 512, 16, 64; 1024, 8, 32; and 256, 1, 128), ``--table lm``
the tutorial LM (truncate 4) at T = 32 and 128.
    python benchmarks/cpu_roofline.py --kernels [--output benchmarks/results/cpu_kernels]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DEFAULT_CONFIGS = ("lm-trunc4", "lm-full", "dense-256", "dense-512", "dense-1024", "gru-256",
                   "lstm-256")
# Presets of (configuration, T) for --table: the gated cells' table of issue 23 (H, B, T as
# PyTorch was measured against), with the batch-1 case, and the tutorial LM at T = 32, 128.
_GATED = [("{}-128", 128), ("{}-256", 128), ("{}-256-b8", 128), ("{}-512-b16", 64),
          ("{}-1024-b8", 32), ("{}-256-b1", 128)]
TABLES = {"gated": [(name.format(cell), steps) for cell in ("gru", "lstm")
                    for name, steps in _GATED],
          "lm": [("lm-trunc4", 32), ("lm-trunc4", 128)]}


# --- worker side ------------------------------------------------------------------------------
def _gemm_runner(shapes):
    """A function running every product in ``shapes`` (m, k, n, count) ``count`` times."""
    import numpy

    rng = numpy.random.default_rng(0)
    operands = []
    for m, k, n, count in shapes:
        a = rng.standard_normal((m, k), dtype=numpy.float32)
        b = rng.standard_normal((k, n), dtype=numpy.float32)
        operands.append((a, b, numpy.empty((m, n), dtype=numpy.float32), count))

    def run():
        for a, b, out, count in operands:
            for _ in range(count):
                numpy.matmul(a, b, out=out)
    return run


def _single_blas_thread(function):
    from threadpoolctl import threadpool_limits

    def run():
        with threadpool_limits(1, user_api="blas"):
            function()
    return run


def _one_core(function):
    """``function`` on one core: BLAS on one thread and no host threads (timed by the
    calling thread's CPU clock, which other processes on the machine barely move)."""
    try:
        from gpurnn.engine.arrays import host_threads
    except ImportError:                           # a baseline from before host threads
        return _single_blas_thread(function)

    def run():
        saved, host_threads.HOST_THREADS = host_threads.HOST_THREADS, 1
        try:
            function()
        finally:
            host_threads.HOST_THREADS = saved
    return _single_blas_thread(run)


def _setup(system):
    """The worker's ``setup(command)`` for :func:`gpurnn.tools.harness.serve`: the tasks of
    one system at one (configuration, T), the configuration sent whole (a baseline checkout
    may not know its name)."""
    def setup(command):
        from gpurnn.tools import bench
        config, steps = bench.Config(**command["config"]), command["T"]
        if system == "torch":
            import torch
            torch.set_num_threads(os.cpu_count())
            return {"torch": bench.torch_step(config, steps)}
        if system == "gpurnn-1thread":
            return {"step_1thread": bench.gpurnn_step(config, steps)}
        if system == "gpurnn-baseline":
            step = bench.gpurnn_step(config, steps)
            return {"step_baseline": step, "step_baseline_cpu": _one_core(step)}
        gemms = _gemm_runner(bench.gemm_shapes(config, steps))
        step = bench.gpurnn_step(config, steps)
        return {"step": step, "gemm": gemms, "step_cpu": _one_core(step),
                "gemm_cpu": _one_core(gemms)}
    return setup


def worker(system: str) -> None:
    """Answer JSON commands on stdin, one per line: setup, then timings."""
    try:
        from gpurnn.tools import harness
    except ImportError:         # a baseline checkout from before the harness: this one's
        import importlib.util
        spec = importlib.util.spec_from_file_location(
            "_harness", RESULTS.parent.parent / "gpurnn" / "tools" / "harness.py")
        harness = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(harness)
    harness.serve(_setup(system))


# --- single kernels -----------------------------------------------------------------------
def kernels(repeats=41) -> dict:
    """Minimum and median milliseconds of single kernels, interleaved over ``repeats``."""
    import numpy
    import torch

    torch.set_num_threads(1)
    rng = numpy.random.default_rng(0)
    z = rng.standard_normal(1024 * 8000, dtype=numpy.float32) * 3 - 10   # shifted logits
    out = numpy.empty_like(z)
    tiny = z - 100                                                       # exp underflows
    z64, out64 = z.astype(numpy.float64), numpy.empty(z.size)
    zt, outt, tinyt = torch.from_numpy(z), torch.from_numpy(out), torch.from_numpy(tiny)
    chunk = 1 << 16                                                      # 256 KiB of float32
    gates = rng.standard_normal((64, 64, 4 * 256), dtype=numpy.float32)  # (T, B, 4H)
    slice_a, slice_b = gates[..., :256], gates[..., 256:512]             # (T, B, H) blocks
    whole_a, whole_b = slice_a.copy(), slice_b.copy()
    product = numpy.empty_like(whole_a)
    # the gated cells' recurrent product h (B, H) @ (scale ⊙ W_hh)ᵀ, on a transposed view of
    # W_hh (4H, H) or on a contiguous copy, at B = 8 and 64 (H = 256, four gates), 50 in a
    # row on one BLAS thread, by the thread's CPU time
    W_hh = rng.standard_normal((4 * 256, 256), dtype=numpy.float32)
    W_hh_T = numpy.ascontiguousarray(W_hh.T)
    recurrent = {B: (rng.standard_normal((B, 256), dtype=numpy.float32),
                     numpy.empty((B, 4 * 256), dtype=numpy.float32)) for B in (8, 64)}
    cases = {
        "np.exp float32 8.2M": lambda: numpy.exp(z, out=out),
        "torch.exp float32 8.2M (1 thread)": lambda: torch.exp(zt, out=outt),
        "np.exp float32 8.2M in 64Ki chunks": lambda: [
            numpy.exp(z[i:i + chunk], out=out[i:i + chunk]) for i in range(0, z.size, chunk)],
        "np.exp float32 8.2M, results underflow": lambda: numpy.exp(tiny, out=out),
        "torch.exp float32 8.2M, results underflow (1 thread)": lambda: torch.exp(tinyt, out=outt),
        "np.exp float64 8.2M": lambda: numpy.exp(z64, out=out64),
        "np.multiply 1M, whole contiguous arrays": lambda: numpy.multiply(whole_a, whole_b,
                                                                          out=product),
        "np.multiply 1M, column slices (T, B, H) of (T, B, 4H)": lambda: numpy.multiply(
            slice_a, slice_b, out=product),
    }
    for B, (h, out_h) in recurrent.items():
        cases[f"h @ W_hh.T (B={B}, H=256, 4 gates), transposed view, CPU time x50"] = (
            lambda h=h, out_h=out_h: [numpy.matmul(h, W_hh.T, out=out_h) for _ in range(50)])
        cases[f"h @ W_hh.T (B={B}, H=256, 4 gates), contiguous copy, CPU time x50"] = (
            lambda h=h, out_h=out_h: [numpy.matmul(h, W_hh_T, out=out_h) for _ in range(50)])
    times = {name: [] for name in cases}
    from threadpoolctl import threadpool_limits
    for _ in range(repeats):
        for name, case in cases.items():
            if "x50" in name:                   # the recurrent products: CPU time
                with threadpool_limits(1, user_api="blas"):
                    start = time.thread_time()
                    case()
                    times[name].append(time.thread_time() - start)
                continue
            start = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - start)
    return {name: {"min_ms": min(t) * 1e3, "median_ms": statistics.median(t) * 1e3}
            for name, t in times.items()}


# --- coordinator ------------------------------------------------------------------------------
WORKER_ENV = {"gpurnn-1thread": {"GPURNN_HOST_THREADS": "1"}}   # the plain path


def make_worker(system, root=None):
    from gpurnn.tools import harness
    return harness.Worker(__file__, system, root or RESULTS.parent.parent,
                          WORKER_ENV.get(system))


def measure_cell(workers, config, steps, rounds):
    """One row: every worker's tasks at (configuration, T), interleaved over ``rounds``."""
    import dataclasses

    from gpurnn.tools import bench, harness
    spec = bench.CONFIGS[config]
    timer = harness.Rounds()
    for name, w in workers.items():
        if name == "gpurnn-1thread" and spec.kind != "lm":
            continue                             # host threads serve the softmax layer only
        for task in w.ask(cmd="setup", config=dataclasses.asdict(spec), T=steps)["tasks"]:
            timer.add(task, worker=w, clock="cpu" if task.endswith("_cpu") else "wall")
    samples = timer.run(rounds)
    row = {"config": config, "T": steps, "cell": spec.cell, "hidden": spec.hidden,
           "batch": spec.batch, "rounds": rounds,
           **{f"{task}_s": summary for task, summary in timer.summaries().items()}}
    step = row["step_s"]["median"]
    row["efficiency"] = row["gemm_s"]["median"] / step
    row["efficiency_one_core"] = row["gemm_cpu_s"]["median"] / row["step_cpu_s"]["median"]
    row["vs_torch"] = harness.ratio(samples["torch"], samples["step"])
    if "step_baseline" in samples:
        row["baseline_gain"] = harness.ratio(samples["step_baseline"], samples["step"])
        row["baseline_one_core_gain"] = harness.ratio(samples["step_baseline_cpu"],
                                                      samples["step_cpu"])
        row["efficiency_one_core_baseline"] = (row["gemm_cpu_s"]["median"]
                                               / row["step_baseline_cpu_s"]["median"])
        row["vs_torch_baseline"] = harness.ratio(samples["torch"], samples["step_baseline"])
    if "step_1thread" in samples:
        row["host_threads_gain"] = harness.ratio(samples["step_1thread"], samples["step"])
    label = f"{config} T={steps}"
    row["warnings"] = harness.noise_warnings(
        {f"{label} {key}": row[key] for key in ("vs_torch", "baseline_gain",
                                                "baseline_one_core_gain", "host_threads_gain")
         if key in row})
    row["samples"] = samples
    row["order"] = timer.order_log
    return row


def plot(rows, path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (eff, speed) = plt.subplots(1, 2, figsize=(10, 4.2))
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        lengths = [r["T"] for r in mine]
        line, = eff.plot(lengths, [r["efficiency_one_core"] for r in mine], "o-", label=config)
        eff.plot(lengths, [r["efficiency"] for r in mine], "x:", color=line.get_color())
        ratio = [r["vs_torch"]["median"] for r in mine]
        speed.errorbar(lengths, ratio, yerr=[[m - r["vs_torch"]["q1"] for m, r in zip(ratio, mine)],
                                             [r["vs_torch"]["q3"] - m for m, r in zip(ratio, mine)]],
                       fmt="o-", color=line.get_color(), capsize=2, label=config)
    eff.axhline(0.8, color="gray", lw=0.8, ls="--")
    eff.set(xscale="log", xlabel="sequence length T", ylabel="GEMMs alone / step",
            title="roofline efficiency\n(solid: one core, CPU time; dotted: wall clock, 2 cores)")
    speed.axhline(1.0, color="gray", lw=0.8, ls="--")
    speed.set(xscale="log", yscale="log", xlabel="sequence length T",
              ylabel="gpurnn tokens/s ÷ PyTorch tokens/s",
              title="against PyTorch CPU, wall clock\n(median and quartiles over rounds)")
    for ax in (eff, speed):
        ax.set_xticks(sorted({r["T"] for r in rows}), [str(t) for t in sorted({r["T"] for r in rows})])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(args, rows, environment, started):
    """The JSON and the plot of the cells measured so far (rewritten after every cell)."""
    from gpurnn._version import __version__

    payload = {"benchmark": "cpu_roofline", "gpurnn": __version__, **environment,
               "load_average_before": environment["load_average"],
               "load_average_after": os.getloadavg(),
               "wall_seconds": time.time() - started, "rounds": args.rounds,
               "baseline": args.baseline_label,
               "warnings": [w for row in rows for w in row["warnings"]], "rows": rows}
    with open(f"{args.output}.json", "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    plot(rows, f"{args.output}.png")


def _cells(args):
    """(configuration, T) pairs: ``--table`` presets (or the ``--cells`` among them),
    ``--cells``, or every config at every length."""
    chosen = None
    if args.cells:
        chosen = [(name, int(steps)) for name, steps in
                  (cell.rsplit(":", 1) for cell in args.cells)]
    if args.table:
        pairs = [pair for name in args.table for pair in TABLES[name]]
        return pairs if chosen is None else [pair for pair in pairs if pair in chosen]
    if chosen is not None:
        return chosen
    return [(config, steps) for config in args.configs for steps in args.lengths]


def _fmt(r):
    return f"{r['median']:.2f}× ({r['q1']:.2f}–{r['q3']:.2f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--table", nargs="+", choices=sorted(TABLES),
                        help="preset (configuration, T) pairs instead of --configs × --lengths: "
                             "gated (the GRU/LSTM table at their own H, B, T), lm (T = 32, 128)")
    parser.add_argument("--cells", nargs="+", metavar="CONFIG:T",
                        help="(configuration, T) pairs, e.g. lstm-256-b8:128 (with --table: "
                             "only these of its pairs)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--kernels", action="store_true",
                        help="time single kernels (exp, strided products) instead")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time the gpurnn package found in DIR (an earlier version's "
                             "checkout) in a worker of its own, interleaved with the rest")
    parser.add_argument("--baseline-label", default=None,
                        help="what --baseline is (a commit, say), recorded in the JSON")
    parser.add_argument("--host-threads-ab", action="store_true",
                        help="also time gpurnn with GPURNN_HOST_THREADS=1 (the plain path) "
                             "in a third worker")
    parser.add_argument("--output", default=None,
                        help="path prefix for the JSON and PNG (default: print only)")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    sys.path.insert(0, str(RESULTS.parent.parent))
    from gpurnn.tools import harness
    environment = harness.environment()
    if args.kernels:
        result = kernels()
        for name, value in result.items():
            print(f"{name:<56} min {value['min_ms']:8.2f} ms   median {value['median_ms']:8.2f} ms")
        if args.output:
            with open(f"{args.output}.json", "w", encoding="utf-8") as f:
                json.dump({"benchmark": "cpu_kernels", **environment,
                           "load_average_before": environment["load_average"],
                           "load_average_after": os.getloadavg(), "kernels": result}, f, indent=1)
            print(f"wrote {args.output}.json")
        return 0
    started = time.time()
    print(f"load average {environment['load_average'][0]:.2f}; BLAS "
          f"{[p.get('architecture') for p in environment['blas_pools']]}; OPENBLAS_CORETYPE "
          f"{'set' if environment['openblas_coretype_pinned'] else 'not set'}", flush=True)
    workers = {"gpurnn": make_worker("gpurnn"), "torch": make_worker("torch")}
    if args.host_threads_ab:
        workers["gpurnn-1thread"] = make_worker("gpurnn-1thread")
    if args.baseline:
        workers["gpurnn-baseline"] = make_worker("gpurnn-baseline",
                                                 os.path.abspath(args.baseline))
    rows = []
    print("| config | T | step ms (q1–q3) | GEMMs ms | efficiency | one core | "
          "PyTorch ms | gpurnn/PyTorch (q1–q3) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for config, steps in _cells(args):
            row = measure_cell(workers, config, steps, args.rounds)
            rows.append(row)
            if args.output:
                _write(args, rows, environment, started)
            s, t = row["step_s"], row["torch_s"]
            print(f"| {config} | {steps} | {s['median'] * 1e3:.1f} ({s['q1'] * 1e3:.1f}–"
                  f"{s['q3'] * 1e3:.1f}) | {row['gemm_s']['median'] * 1e3:.1f} | "
                  f"{row['efficiency']:.2f} | {row['efficiency_one_core']:.2f} | "
                  f"{t['median'] * 1e3:.1f} | {_fmt(row['vs_torch'])} |"
                  + (f" host threads {_fmt(row['host_threads_gain'])}"
                     if "host_threads_gain" in row else "")
                  + (f" vs baseline {_fmt(row['baseline_gain'])} (one core "
                     f"{_fmt(row['baseline_one_core_gain'])}, baseline GEMM share "
                     f"{row['efficiency_one_core_baseline']:.2f}, baseline/PyTorch "
                     f"{_fmt(row['vs_torch_baseline'])})"
                     if "baseline_gain" in row else "")
                  + f" load {os.getloadavg()[0]:.1f}", flush=True)
            for warning in row["warnings"]:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()
    if args.output:
        print(f"wrote {args.output}.json, {args.output}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
