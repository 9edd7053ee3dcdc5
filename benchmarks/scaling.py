"""Data-parallel scaling: training throughput against the number of processes on this
machine, and a projection for several GPUs and hosts.

    pip install -e ".[mpi,plot]"
    python benchmarks/scaling.py                 # about a minute on 2 cores
    python benchmarks/scaling.py --steps 400 --repeats 5

Measured: ``gpurnn train`` on the built-in corpus (its default model: vocabulary 2000,
hidden 64, 32 steps per chunk, Adam), run as 1 process and as 2 (``mpiexec -n 2``), the
configurations interleaved in each repeat so that they share the machine's load. Throughput
is global tokens per second (all ranks' tokens), the median of the metrics windows after
the first 50 steps; validation and checkpoints are left out.

Projected: the bytes all-reduced per step (every gradient in float32, once), a ring
all-reduce over NVLink and over 100 Gb/s Ethernet, against the compute time of a step
(arithmetic at an assumed sustained rate, with the per-kernel launch cost as a floor), hence
the scaling efficiency compute / (compute + all-reduce) and the per-GPU batch where it
reaches 90%. The assumptions are written into the JSON beside the numbers.

Writes benchmarks/results/scaling.json and, with matplotlib, scaling.png.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gpurnn.training.distributed import find_mpiexec

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------- projection
# Every figure the projection rests on; change them here and rerun.
ASSUMPTIONS = {
    "seq_len": 32,                 # steps per sequence (chunk)
    "links": {
        # H100 SXM NVLink 4: 450 GB/s each way; NCCL reaches about 80% of it as bus
        # bandwidth. Rings of 2 and 8 GPUs: one host.
        "NVLink (H100)": {"gb_per_s": 450.0, "efficiency": 0.8, "latency_us": 5.0,
                          "ring_sizes": [2, 8]},
        # 100 Gb/s Ethernet = 12.5 GB/s each way; ~80% with TCP/RoCE, ~20 us per hop. Rings
        # of 2 and 8 hosts (one NIC each; the reduction inside a host, over NVLink, is
        # much faster and left out).
        "100 Gb/s Ethernet": {"gb_per_s": 12.5, "efficiency": 0.8, "latency_us": 20.0,
                              "ring_sizes": [2, 8]},
    },
    # sustained FP32 GEMM rate of one H100 SXM on these shapes (peak 67 TFLOP/s, no TF32)
    "sustained_tflops": 30.0,
    # launch-bound floor: host time per CuPy operation, and operations per time step of
    # forward + backward (recurrence, activation, error, weight-gradient pieces)
    "us_per_op": 15.0,
    "ops_per_time_step": 12,
    "bytes_per_value": 4,          # float32 gradients
}

MODELS = {
    "tutorial LM (vocabulary 8000, hidden 100)": {"vocab": 8000, "hidden": 100},
    "hidden 1024 (vocabulary 8000)": {"vocab": 8000, "hidden": 1024},
}


def elman_params(vocab: int, hidden: int) -> int:
    """U (H x V), W (H x H), V (V x H), b (H), c (V)."""
    return 2 * vocab * hidden + hidden * hidden + hidden + vocab


def allreduce_bytes(vocab: int, hidden: int, a=ASSUMPTIONS) -> int:
    """Every gradient once, plus the loss, token count and stop flag riding along."""
    return (elman_params(vocab, hidden) + 3) * a["bytes_per_value"]


def flops_per_token(vocab: int, hidden: int) -> float:
    """Forward 2HV (output layer) + 2H^2 (recurrence); backward twice that (dV and the
    error into h for the output layer; dW and the error through W for the recurrence)."""
    return 6.0 * vocab * hidden + 6.0 * hidden * hidden


def ring_allreduce_s(nbytes: float, gpus: int, link: dict) -> float:
    """Ring all-reduce: 2(N-1) steps, each moving nbytes/N over every link, plus a
    latency per step: 2(N-1)/N * S / bandwidth + 2(N-1) * latency."""
    bandwidth = link["gb_per_s"] * 1e9 * link["efficiency"]
    return 2 * (gpus - 1) / gpus * nbytes / bandwidth + 2 * (gpus - 1) * link["latency_us"] * 1e-6


def compute_s(batch: int, model: dict, a=ASSUMPTIONS) -> dict:
    """Seconds of one GPU step on ``batch`` sequences: arithmetic alone, and with the
    launch-bound floor of a time loop that is not captured in a CUDA graph."""
    tokens = batch * a["seq_len"]
    arithmetic = tokens * flops_per_token(**model) / (a["sustained_tflops"] * 1e12)
    floor = a["seq_len"] * a["ops_per_time_step"] * a["us_per_op"] * 1e-6
    return {"arithmetic": arithmetic, "launch_floor": floor, "both": max(arithmetic, floor)}


def batch_for(efficiency: float, comm: float, model: dict, a=ASSUMPTIONS) -> int:
    """The smallest per-GPU batch (sequences of seq_len) whose arithmetic time alone keeps
    compute / (compute + comm) >= efficiency (no overlap of the two)."""
    needed = efficiency / (1 - efficiency) * comm
    per_sequence = a["seq_len"] * flops_per_token(**model) / (a["sustained_tflops"] * 1e12)
    return max(1, math.ceil(needed / per_sequence))


def projection(a=ASSUMPTIONS) -> dict:
    rows = []
    for name, model in MODELS.items():
        params, nbytes = elman_params(**model), allreduce_bytes(**model, a=a)
        for link_name, link in a["links"].items():
            for ring in link["ring_sizes"]:
                comm = ring_allreduce_s(nbytes, ring, link)
                floor = compute_s(1, model, a)["launch_floor"]
                row = {"model": name, **model, "params": params, "bytes_per_step": nbytes,
                       "flops_per_token": flops_per_token(**model), "link": link_name,
                       "ring": ring, "allreduce_ms": 1e3 * comm,
                       "batch_for_90pct_arithmetic_bound": batch_for(0.9, comm, model, a),
                       "batch_for_90pct_with_launch_floor":
                           1 if floor / (floor + comm) >= 0.9 else batch_for(0.9, comm, model, a)}
                for batch in (32, 256):
                    time = compute_s(batch, model, a)
                    row[f"compute_ms_b{batch}"] = {k: 1e3 * v for k, v in time.items()}
                    row[f"efficiency_b{batch}"] = {
                        k: v / (v + comm) for k, v in time.items() if k != "launch_floor"}
                rows.append(row)
    return {"assumptions": a, "rows": rows}


def projection_table(rows) -> str:
    lines = ["| model | link | ring | MB per step | all-reduce ms | compute ms, b=32 "
             "(arith. / with launch floor) | efficiency b=32 (same) | efficiency b=256 "
             "(arith.) | b for 90% (arith. / with floor) |", "|" + " --- |" * 9]
    for r in rows:
        c32 = r["compute_ms_b32"]
        lines.append(
            f"| {r['model']} | {r['link']} | {r['ring']} | {r['bytes_per_step'] / 1e6:.2f} | "
            f"{r['allreduce_ms']:.3f} | {c32['arithmetic']:.3f} / {c32['both']:.2f} | "
            f"{100 * r['efficiency_b32']['arithmetic']:.0f}% / "
            f"{100 * r['efficiency_b32']['both']:.0f}% | "
            f"{100 * r['efficiency_b256']['arithmetic']:.0f}% | "
            f"{r['batch_for_90pct_arithmetic_bound']} / "
            f"{r['batch_for_90pct_with_launch_floor']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- measurement



def measure(processes: int, batch: int, threads: int, steps: int, folder: Path) -> dict:
    checkpoint = folder / f"p{processes}-b{batch}-t{threads}.npz"
    argv = [sys.executable, "-m", "gpurnn", "train", "--device", "cpu", "--steps",
            str(steps), "--batch-size", str(batch), "--eval-every", str(10 * steps),
            "--checkpoint-every", "0", "--samples", "0", "--log-every", "10", "--quiet",
            "--overwrite",  # the repeats of one configuration write the same files
            "--checkpoint", str(checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if processes > 1:
        argv = [find_mpiexec(), "-n", str(processes), *argv]
    subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=900)
    records = [json.loads(line) for line in checkpoint.with_suffix(".jsonl").open()]
    rates = [r["tokens_per_s"] for r in records if "loss" in r and r["step"] > 50]
    end = records[-1]
    return {"tokens_per_s": statistics.median(rates), "step_ms": end["step_ms"],
            "allreduce_ms_per_step": 1e3 * end.get("allreduce_seconds", 0.0) / steps,
            "allreduce_bytes": records[0].get("allreduce_bytes", 0),
            "communicator": records[0].get("communicator", "one process")}


BARE_ALLREDUCE = """
import sys, time
import numpy
from mpi4py import MPI
comm, buffer = MPI.COMM_WORLD, numpy.ones(int(sys.argv[1]) // 4, numpy.float32)
for _ in range(20):
    comm.Allreduce(MPI.IN_PLACE, buffer)
comm.Barrier()
start = time.perf_counter()
for _ in range(500):
    comm.Allreduce(MPI.IN_PLACE, buffer)
comm.Barrier()
if comm.rank == 0:
    print(1e3 * (time.perf_counter() - start) / 500)
"""


def bare_allreduce_ms(nbytes: int) -> float:
    """One MPI Allreduce of ``nbytes`` between 2 processes with nothing else to do."""
    done = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-c", BARE_ALLREDUCE,
                           str(nbytes)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=True, capture_output=True, text=True, timeout=300)
    return float(done.stdout.strip())


CONFIGS = [  # (name, processes, batch per process, BLAS threads per process)
    ("1 process, batch 32, 2 threads", 1, 32, 2),
    ("1 process, batch 32, 1 thread", 1, 32, 1),
    ("2 processes x batch 16 (global 32), 1 thread each", 2, 16, 1),
    ("1 process, batch 64, 2 threads", 1, 64, 2),
    ("2 processes x batch 32 (global 64), 1 thread each", 2, 32, 1),
]


def measured(steps: int, repeats: int) -> dict:
    results = {name: [] for name, *_ in CONFIGS}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            for name, processes, batch, threads in CONFIGS:
                results[name].append(measure(processes, batch, threads, steps, Path(folder)))
                print(f"repeat {repeat + 1}/{repeats}: {name}: "
                      f"{results[name][-1]['tokens_per_s']:.0f} tokens/s", flush=True)
            load.append(os.getloadavg()[0])
    runs = []
    for name, processes, batch, threads in CONFIGS:
        rates = [r["tokens_per_s"] for r in results[name]]
        runs.append({"name": name, "processes": processes, "batch_per_process": batch,
                     "global_batch": processes * batch, "threads_per_process": threads,
                     "tokens_per_s": rates, "median_tokens_per_s": statistics.median(rates),
                     "step_ms": [r["step_ms"] for r in results[name]],
                     "allreduce_ms_per_step": [r["allreduce_ms_per_step"] for r in results[name]],
                     "allreduce_bytes": results[name][0]["allreduce_bytes"],
                     "communicator": results[name][0]["communicator"]})

    def ratio(a, b):  # median of the per-repeat ratios: each pair ran side by side
        return statistics.median(x / y for x, y in zip(runs[a]["tokens_per_s"],
                                                       runs[b]["tokens_per_s"]))
    nbytes = runs[2]["allreduce_bytes"]
    return {"steps": steps, "repeats": repeats, "load_average_1min": load, "runs": runs,
            "bare_allreduce_ms": {"bytes": nbytes, "ms": bare_allreduce_ms(nbytes)},
            "ratios": {
                "2 processes x 16 / 1 process x 32 (2 threads): same global batch": ratio(2, 0),
                "2 processes x 16 / 1 process x 32 (1 thread)": ratio(2, 1),
                "2 processes x 32 / 1 process x 64 (2 threads): same global batch": ratio(4, 3),
                "2 processes x 32 / 1 process x 32 (2 threads): weak scaling": ratio(4, 0)}}


def plot(result, path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    runs = result["measured"]["runs"]
    left.barh([r["name"] for r in runs][::-1], [r["median_tokens_per_s"] for r in runs][::-1],
              color=["C1" if r["processes"] > 1 else "C0" for r in runs][::-1])
    left.set_xlabel("global tokens/s (median)")
    left.set_title(f"measured, {result['machine']['cores']} cores, load "
                   f"{min(result['measured']['load_average_1min']):.1f}-"
                   f"{max(result['measured']['load_average_1min']):.1f}", fontsize=10)
    a = result["projection"]["assumptions"]
    batches = [2 ** k for k in range(0, 13)]
    for (name, model), style in zip(MODELS.items(), ("-", "--")):
        nbytes = allreduce_bytes(**model, a=a)
        for (link_name, link), color in zip(a["links"].items(), ("C2", "C3")):
            comm = ring_allreduce_s(nbytes, 8, link)
            eff = [compute_s(b, model)["arithmetic"] / (compute_s(b, model)["arithmetic"] + comm)
                   for b in batches]
            right.plot(batches, eff, style, color=color, label=f"{name.split(' (')[0]}, "
                                                               f"{link_name}")
    right.axhline(0.9, color="grey", lw=0.8)
    right.set_xscale("log", base=2)
    right.set_xlabel("sequences of 32 steps per GPU per step")
    right.set_ylabel("scaling efficiency (arithmetic-bound)")
    right.set_title("projected: ring all-reduce over 8 GPUs (NVLink) or 8 hosts (Ethernet)",
                    fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per run (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--output", default=str(RESULTS / "scaling"),
                        help="path prefix of the .json and .png "
                             "(default benchmarks/results/scaling)")
    args = parser.parse_args(argv)
    if find_mpiexec() is None:
        print("no mpiexec: pip install -e '.[mpi]'", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from gpurnn.tools.bench import machine_info
    from importlib.metadata import PackageNotFoundError, version
    machine = machine_info()
    for package in ("mpi4py", "mpich", "openmpi"):
        try:
            machine[package] = version(package)
        except PackageNotFoundError:
            pass
    result = {"machine": machine, "measured": measured(args.steps, args.repeats),
              "projection": projection()}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print()
    for run in result["measured"]["runs"]:
        print(f"{run['name']:52s} {run['median_tokens_per_s']:9.0f} tokens/s  "
              f"all-reduce {statistics.median(run['allreduce_ms_per_step']):.3f} ms/step")
    bare = result["measured"]["bare_allreduce_ms"]
    print(f"a bare Allreduce of {bare['bytes']} bytes between 2 processes: {bare['ms']:.3f} ms")
    for name, value in result["measured"]["ratios"].items():
        print(f"{name}: {value:.2f}")
    print()
    print(projection_table(result["projection"]["rows"]))
    picture = plot(result, output.with_suffix(".png"))
    print(f"\nwrote {output.with_suffix('.json')}" + (f" and {picture}" if picture else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
