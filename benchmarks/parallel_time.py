"""Parallel in time: the same diagonal cell by scan and step by step, on this CPU.

    python benchmarks/parallel_time.py                  # T = 10^2 … 10^5, H = 64 and 256
    python benchmarks/parallel_time.py --quick          # T ≤ 10^4, fewer rounds
    python benchmarks/parallel_time.py --plot           # the PNG from the JSON

Two levels, each scan and loop side by side, interleaved round by round (so both see the
same load of a shared machine); figures are medians with quartiles over the rounds, and
speed-ups medians of the per-round ratios:

* ``recurrence``: the linear recurrence alone, h_t = a_t h_{t−1} + b_t on (T, 8, H), by
  :func:`gpurnn.engine.sweeps.scan.linear_scan` (``scan``: the host's chunked scan;
  ``scan-blelloch``: Blelloch's) against :func:`gpurnn.engine.sweeps.scan.linear_loop`; forward, and forward + the adjoint
  (:func:`reverse_scan` / :func:`reverse_loop`), on the whole sequence at once;
* ``model``: a one-layer minGRU (dense inputs of 16 features, identity output of 16,
  squared error, float32) through ``loss_and_grads`` (forward + backward) and ``forward``,
  with ``Plan(time="scan")`` against ``Plan(time="loop")``, on the engine's default grid
  (blocks of 1024 batch·time rows, 128 steps at batch 8) and, for the scan, blocks of 1024
  steps (``block_steps=1024``).

Sequential depth: dependent rounds of array operations per the whole sequence, loop T,
Blelloch's scan 2⌈log₂ T_block⌉ per block (up- and down-sweeps), the chunked scan
2C + 2⌈log₂ n⌉ + 2 + its tail per block (:func:`gpurnn.engine.sweeps.scan.scan_depth`). The JSON also records the machine,
the load average before and after, the threads (one BLAS thread).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import gpurnn  # noqa: E402
from gpurnn.engine.sweeps import scan  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
JSON = RESULTS / "parallel_time.json"
PNG = RESULTS / "parallel_time.png"
BATCH, FEATURES = 8, 16


def rounds_for(T, quick):
    if T >= 10**5:
        return 3
    return 3 if quick else (5 if T >= 10**4 else 9)


def quartiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "runs": values}


def machine(load_before):
    """The machine, versions, BLAS threads and load averages (before the run and now)."""
    return {"processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "gpurnn": getattr(gpurnn, "__version__", None),
            "blas_threads": 1, "load_before": load_before, "load_after": os.getloadavg()}


def interleaved(cases, rounds, results=None):
    """Seconds of each of ``cases`` {key: callable}, one call each per round, the cases
    interleaved within a round (after one untimed warm-up call each: buffers, pages);
    ``results``, if given, receives each case's latest return value."""
    results = {} if results is None else results
    for key, f in cases.items():
        results[key] = f()
    times = {key: [] for key in cases}
    for _ in range(rounds):
        for key, f in cases.items():
            start = time.perf_counter()
            results[key] = f()
            times[key].append(time.perf_counter() - start)
    return times


def speedup(loop, values):
    """The median of the per-round ratios loop / this."""
    return statistics.median(l / v for l, v in zip(loop, values))


def recurrence_cases(T, H, rng):
    a = rng.uniform(0.5, 1.0, (T, BATCH, H)).astype(np.float32)
    b = rng.normal(size=(T, BATCH, H)).astype(np.float32)
    h0 = np.zeros((BATCH, H), np.float32)
    d = rng.normal(size=(T, BATCH, H)).astype(np.float32)
    out, g = np.empty_like(b), np.empty_like(b)
    scratch = np.empty(scan.scratch_shape(b.shape), np.float32)
    return {
        ("scan", "forward"): lambda: scan.linear_scan(a, b, h0, out=out, scratch=scratch),
        ("loop", "forward"): lambda: scan.linear_loop(a, b, h0, out=out),
        ("scan-blelloch", "forward"): lambda: scan.linear_scan(a, b, h0, "blelloch", out=out,
                                                               scratch=scratch),
        ("scan-blelloch", "forward+backward"): lambda: (
            scan.linear_scan(a, b, h0, "blelloch", out=out, scratch=scratch),
            scan.reverse_scan(a, d, None, "blelloch", out=g, scratch=scratch)),
        ("scan", "forward+backward"): lambda: (
            scan.linear_scan(a, b, h0, out=out, scratch=scratch),
            scan.reverse_scan(a, d, None, out=g, scratch=scratch)),
        ("loop", "forward+backward"): lambda: (scan.linear_loop(a, b, h0, out=out),
                                               scan.reverse_loop(a, d, None, out=g)),
    }


def model_cases(T, H, rng, cell="mingru"):
    model = gpurnn.make_model(cell, FEATURES, H, FEATURES, output="identity", seed=0)
    x = rng.normal(size=(BATCH, T, FEATURES)).astype(np.float32)
    y = rng.normal(size=(BATCH, T, FEATURES)).astype(np.float32)
    plans = {"scan": gpurnn.Plan(time="scan"), "loop": gpurnn.Plan(time="loop"),
             "scan-block1024": gpurnn.Plan(time="scan", block_steps=1024)}

    def run(plan, what):
        def go():
            model.plan = plan
            if what == "forward":
                model.forward(x)
            else:
                model.loss_and_grads(x, y)
        return go
    cases = {}
    for name, plan in plans.items():
        for what in ("forward", "forward+backward"):
            cases[(name, what)] = run(plan, what)
    return cases


def depth(T, block, variant):
    if variant == "loop":
        return T
    method = "blelloch" if variant == "scan-blelloch" else "chunked"
    blocks = -(-T // block)
    return sum(scan.scan_depth(min(block, T - k * block), method) for k in range(blocks))


def measure(level, T, H, quick, rng):
    cases = recurrence_cases(T, H, rng) if level == "recurrence" else model_cases(T, H, rng)
    times = interleaved(cases, rounds_for(T, quick))
    rows = []
    for (variant, what), values in times.items():
        loop = times[("loop", what)]
        block = T if level == "recurrence" else (1024 if "block" in variant else
                                                 max(1, -(-1024 // BATCH)))
        row = {"level": level, "T": T, "hidden": H, "batch": BATCH, "variant": variant,
               "what": what, "seconds": quartiles(values),
               "depth": depth(T, min(block, T), variant),
               "speedup_over_loop": speedup(loop, values)}
        rows.append(row)
        print(f"{level:10s} T={T:6d} H={H:3d} {variant:15s} {what:17s} "
              f"{row['seconds']['median'] * 1e3:9.2f} ms  ×{row['speedup_over_loop']:.2f}  "
              f"depth {row['depth']}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="T values (default 10^2 … 10^5; --quick: to 10^4)")
    parser.add_argument("--model-max", type=int, default=None,
                        help="the model level only up to this T (the recurrence level at every T)")
    args = parser.parse_args(argv)
    if args.plot:
        plot()
        return
    rng = np.random.default_rng(0)
    lengths = args.lengths or ([100, 1000, 10000] + ([] if args.quick else [100000]))
    load_before = os.getloadavg()
    rows = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for H in args.hidden:
        for T in lengths:
            for level in ("recurrence", "model"):
                if level == "model" and args.model_max is not None and T > args.model_max:
                    continue
                rows += measure(level, T, H, args.quick, rng)
                result = {"machine": machine(load_before),
                          "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "dtype": "float32", "cell": "mingru",
                          "command": " ".join(sys.argv), "rows": rows}
                JSON.write_text(json.dumps(result, indent=1))          # after every case
    print(f"wrote {JSON}; load {load_before} -> {result['machine']['load_after']}")
    plot()


def plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = json.loads(JSON.read_text())
    rows = data["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    styles = {"scan": ("C0", "-"), "scan-blelloch": ("C1", "-."), "loop": ("C3", "--"),
              "scan-block1024": ("C2", ":")}
    for i, level in enumerate(("recurrence", "model")):
        for j, what in enumerate(("forward", "forward+backward")):
            ax = axes[i][j]
            for H, marker in ((64, "o"), (256, "s")):
                for variant, (color, line) in styles.items():
                    sel = sorted((r for r in rows if r["level"] == level and r["what"] == what
                                  and r["hidden"] == H and r["variant"] == variant),
                                 key=lambda r: r["T"])
                    if not sel:
                        continue
                    T = [r["T"] for r in sel]
                    med = [r["seconds"]["median"] for r in sel]
                    lo = [r["seconds"]["median"] - r["seconds"]["q1"] for r in sel]
                    hi = [r["seconds"]["q3"] - r["seconds"]["median"] for r in sel]
                    ax.errorbar(T, med, yerr=[lo, hi], color=color, linestyle=line,
                                marker=marker, label=f"{variant}, H={H}", capsize=2)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{level}: {what}")
            ax.set_ylabel("seconds (median, quartiles)")
            ax.grid(True, which="both", alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("T (steps), batch 8")
    axes[0][0].legend(fontsize=7)
    m = data["machine"]
    fig.suptitle(f"minGRU float32, scan vs loop on {m['cpu_count']} CPU cores "
                 f"(load {m['load_before'][0]:.1f} → {m['load_after'][0]:.1f})")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"wrote {PNG}")


if __name__ == "__main__":
    main()
