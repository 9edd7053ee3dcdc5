"""Full BPTT over long sequences in a memory budget: peak step memory and tokens/s against T.

    python benchmarks/memory_budget.py --part elman      # Elman H=256, B=16, T = 10^3, 10^4
    python benchmarks/memory_budget.py --part elman-long # the same at T = 10^5
    python benchmarks/memory_budget.py --part lstm       # LSTM H=256, B=16, T = 10^3, 10^4
    python benchmarks/memory_budget.py --part lstm-long  # LSTM at T = 10^5, budget only
    python benchmarks/memory_budget.py --part million    # Elman H=128, B=8, T = 10^6, budget
    python benchmarks/memory_budget.py --plot            # the PNG from the JSON

Each part adds its rows to benchmarks/results/memory_budget.json (a part run again replaces
its own rows). Models: dense inputs and targets of size 16, squared error, float32, one
training step = ``loss_and_grads`` (full BPTT) + an SGD update. Variants, run side by side:

* ``keep``: gpurnn keeping everything (no budget);
* ``budget``: gpurnn with ``memory_budget`` (64 MiB for Elman, 128 MiB for LSTM; at
  T = 1000 also a tight budget of about a tenth of what keeping everything takes, on
  16-step blocks);
* ``torch``: PyTorch on the CPU (nn.RNN / nn.LSTM + nn.Linear + MSE, autograd), where it
  fits in memory (not at T = 10^5: it keeps every state, several GB on a shared machine).

Each measurement runs in a fresh process: the peak resident memory of the first training
step, less the resident size once the model and the caller's data exist (so the step's own
allocations: the engine's buffers, caches, checkpoints and temporaries), then timed steps.
The variants of one T are interleaved repeat by repeat, so they share the machine's load;
figures are medians with the min–max spread, and time ratios are medians of per-repeat
ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
JSON = RESULTS / "memory_budget.json"
PNG = RESULTS / "memory_budget.png"

FEATURES = 16
# One BLAS / PyTorch thread for every system: on a machine shared with other jobs, threads
# that wait on each other turn a busy core into a stall and the timings into noise.
THREADS = 1
PARTS = {
    # name: (cell, hidden, batch, budget, [(T, repeats, variants)]); each under ~10 minutes
    "elman": ("elman", 256, 16, "64MiB",
              [(1000, 5, ["keep", "budget", "tight", "torch"]),
               (10000, 3, ["keep", "budget", "torch"])]),
    "elman-long": ("elman", 256, 16, "64MiB", [(100000, 1, ["keep", "budget"])]),
    "lstm": ("lstm", 256, 16, "128MiB",
             [(1000, 3, ["keep", "budget", "tight", "torch"]),
              (10000, 3, ["keep", "budget", "torch"])]),
    "lstm-long": ("lstm", 256, 16, "128MiB", [(100000, 1, ["budget"])]),
    "million": ("elman", 128, 8, "64MiB", [(1000000, 1, ["budget"])]),
}
# About a tenth of what keeping everything takes at T = 1000, with a grid of 16-step blocks
# (the default, 1024 batch·time rows = 64 steps here, needs more than that for one block).
TIGHT = {"elman": "4MiB", "lstm": "14MiB"}
TIGHT_BLOCK = 16


# --------------------------------------------------------------------------- one process

def _rss(field):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


def worker(spec: dict) -> dict:
    """One variant at one T in this (fresh) process: memory of the first step, then times."""
    import numpy
    cell, hidden, batch, steps = spec["cell"], spec["hidden"], spec["batch"], spec["T"]
    rng = numpy.random.default_rng(0)
    x = rng.normal(size=(batch, steps, FEATURES)).astype(numpy.float32)
    y = rng.normal(size=(batch, steps, FEATURES)).astype(numpy.float32)
    if spec["variant"] == "torch":
        import torch
        torch.set_num_threads(THREADS)
        torch.manual_seed(0)
        layer = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM}[cell]
        rnn, head = layer(FEATURES, hidden, batch_first=True), torch.nn.Linear(hidden, FEATURES)
        params = list(rnn.parameters()) + list(head.parameters())
        optimizer = torch.optim.SGD(params, lr=1e-6)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = 0.5 * torch.nn.functional.mse_loss(head(rnn(xt)[0]), yt, reduction="sum")
            loss.backward()
            optimizer.step()
        estimate = None
    else:
        from gpurnn.engine.models.factory import make_model
        from gpurnn.training.optim import SGD
        from gpurnn.engine.plan import Plan
        model = make_model(cell, FEATURES, hidden, FEATURES, output="identity", seed=0)
        model.plan = Plan(block_steps=spec.get("block"))
        budget = spec["budget"]
        optimizer = SGD(lr=1e-6)
        estimate = model.schedule(x, y, memory_budget=budget)

        def step():
            result = model.loss_and_grads(x, y, memory_budget=budget)
            optimizer.step(model.params, result.grads)
    baseline = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")                        # the peak mark starts again from here
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = _rss("VmHWM") - baseline
    times = []
    for _ in range(spec["timed"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out = {"step_bytes": peak, "seconds": times or [first]}
    if estimate is not None:
        out.update(policy=estimate.policy, block=estimate.block, kept=estimate.kept,
                   slots=estimate.slots, forwards=estimate.forwards,
                   estimated_bytes=estimate.bytes)
    return out


def run_worker(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS),
               MKL_NUM_THREADS=str(THREADS))
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- a part

def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def run_part(name: str) -> list:
    cell, hidden, batch, budget, plan = PARTS[name]
    rows = []
    for steps, repeats, variants in plan:
        samples = {v: [] for v in variants}
        for repeat in range(repeats):                 # interleaved: v1 v2 v3, v1 v2 v3, ...
            for variant in variants:
                spec = {"cell": cell, "hidden": hidden, "batch": batch, "T": steps,
                        "variant": variant, "timed": 1 if steps <= 10000 else 0,
                        "block": TIGHT_BLOCK if variant == "tight" else None,
                        "budget": {"keep": None, "torch": None, "budget": budget,
                                   "tight": TIGHT.get(name)}[variant]}
                result = run_worker(spec)
                samples[variant].append(result)
                print(f"{name} T={steps} {variant:6s} repeat {repeat}: "
                      f"{result['step_bytes'] / 2**20:8.1f} MiB  "
                      f"{batch * steps / min(result['seconds']):9.0f} tok/s", flush=True)
        for variant, results in samples.items():
            seconds = [min(r["seconds"]) for r in results]
            row = {"part": name, "cell": cell, "hidden": hidden, "batch": batch, "T": steps,
                   "variant": variant, "budget": results[0].get("budget") or
                   {"budget": budget, "tight": TIGHT.get(name)}.get(variant),
                   "step_MiB": spread([r["step_bytes"] / 2**20 for r in results]),
                   "tokens_per_s": spread([batch * steps / s for s in seconds]),
                   "seconds": spread(seconds)}
            for key in ("policy", "block", "kept", "slots", "forwards", "estimated_bytes"):
                if key in results[0]:
                    row[key] = results[0][key]
            if variant != "keep" and "keep" in samples:
                pairs = [min(a["seconds"]) / min(b["seconds"])
                         for a, b in zip(results, samples["keep"])]
                row["time_vs_keep"] = spread(pairs)
                row["memory_saved_vs_keep"] = 1 - (statistics.median(r["step_bytes"] for r in results)
                                                   / statistics.median(r["step_bytes"] for r in samples["keep"]))
            rows.append(row)
    return rows


def machine() -> dict:
    from gpurnn.tools.bench import machine_info
    from importlib.metadata import PackageNotFoundError, version
    info = machine_info()
    for package in ("numpy", "torch"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            pass
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    info["load_average"] = os.getloadavg()
    info["threads"] = THREADS
    info["note"] = ("machine shared with other jobs while measuring: timings are noisy; "
                    "variants interleaved")
    return info


# --------------------------------------------------------------------------- plot

def plot(result, path=PNG):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    styles = {"keep": ("-", "o"), "budget": ("-", "s"), "torch": (":", "^"), "tight": ("", "*")}
    for series in sorted({(r["cell"], r["hidden"], r["batch"]) for r in result["rows"]}):
        rows = [r for r in result["rows"] if (r["cell"], r["hidden"], r["batch"]) == series]
        for variant in ("keep", "budget", "tight", "torch"):
            pts = sorted((r["T"], r) for r in rows if r["variant"] == variant)
            if not pts:
                continue
            cell = rows[0]["cell"].upper() if rows[0]["cell"] == "lstm" else "Elman"
            label = {"keep": f"{cell} H={rows[0]['hidden']} keep everything",
                     "budget": f"{cell} H={rows[0]['hidden']} B={rows[0]['batch']} budget "
                               f"{pts[0][1]['budget']}",
                     "tight": f"{cell} budget {pts[0][1]['budget']}",
                     "torch": f"{cell} PyTorch CPU"}[variant]
            line, marker = styles[variant]
            T = [t for t, _ in pts]
            for axis, key in ((left, "step_MiB"), (right, "tokens_per_s")):
                med = [r[key]["median"] for _, r in pts]
                err = [[m - r[key]["min"] for m, (_, r) in zip(med, pts)],
                       [r[key]["max"] - m for m, (_, r) in zip(med, pts)]]
                axis.errorbar(T, med, yerr=err, linestyle=line, marker=marker, label=label,
                              capsize=2)
    left.set(xscale="log", yscale="log", xlabel="sequence length T (steps)",
             ylabel="peak step memory (MiB)", title="memory of one training step")
    right.set(xscale="log", yscale="log", xlabel="sequence length T (steps)", ylabel="tokens / s",
              title="throughput (median, min–max)")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    m = result["machine"]
    fig.suptitle(f"full BPTT in a memory budget — {m.get('cpu', '')} {m.get('cores', '')} cores, "
                 f"shared (loaded), {m['date']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=sorted(PARTS))
    p.add_argument("--plot", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = json.loads(JSON.read_text()) if JSON.exists() else {"rows": []}
    if args.part:
        rows = run_part(args.part)
        result["rows"] = [r for r in result["rows"] if r["part"] != args.part] + rows
        result.setdefault("machines", {})[args.part] = machine()
        result["machine"] = result["machines"][args.part]
        JSON.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {JSON}")
    if args.plot or args.part:
        print(plot(result) or "matplotlib missing: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
