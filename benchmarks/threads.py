"""One BLAS thread against two: the default ``gpurnn train`` run and the benchmark configs.

Each workload runs with the BLAS limited to 1 and to 2 threads (threadpoolctl), the two
settings alternating repeat by repeat so that they share whatever else the machine is doing,
under two conditions: the machine as found (its load average is recorded: on a shared machine
this is not "idle") and with one busy-looping process of our own started beside it.

    python benchmarks/threads.py [--repeats 5] [--train-steps 150] [--save]

The default run is timed from its own metrics (``step_ms`` of the ``end`` record: optimizer
steps only, validation excluded); a benchmark configuration is one training step of
``gpurnn.tools.bench`` (forward, BPTT, SGD update). Prints the medians, the range over the
repeats and the ratio 2 threads / 1 thread taken repeat by repeat; writes JSON to a scratch
path, or to benchmarks/results/threads.json with ``--save``.
"""
import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from threadpoolctl import threadpool_limits

from gpurnn.tools import bench

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CONFIGS = [("lm-trunc4", 32), ("lm-trunc4", 256), ("dense-256", 256), ("gru-256", 64)]


def train_step_ms(steps: int, folder: str) -> float:
    """ms per optimizer step of the default ``gpurnn train`` run, cut to ``steps`` steps."""
    from gpurnn.training.config import TrainConfig
    from gpurnn.training.train import Trainer
    checkpoint = os.path.join(folder, "threads.npz")
    Trainer(TrainConfig(steps=steps, device="cpu", quiet=True, samples=0, eval_every=10**6,
                        checkpoint_every=0, checkpoint=checkpoint)).run()
    with open(os.path.splitext(checkpoint)[0] + ".jsonl", encoding="utf-8") as f:
        end = [json.loads(line) for line in f if '"event": "end"' in line][-1]
    return end["step_ms"]


def config_step_ms(name: str, steps: int, repeats: int = 3) -> float:
    step = bench.gpurnn_step(bench.CONFIGS[name], steps)
    return 1e3 * bench.timed(step, repeats, 1, "cpu")


@contextlib.contextmanager
def busy_process(active: bool):
    """One process spinning on a core while the block runs (when ``active``)."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if active else None
    try:
        yield
    finally:
        if process is not None:
            process.kill()
            process.wait()


def summary(samples: dict) -> dict:
    one, two = samples[1], samples[2]
    ratios = sorted(b / a for a, b in zip(one, two))        # time with 2 / time with 1
    return {"ms_1_thread": statistics.median(one), "ms_2_threads": statistics.median(two),
            "range_1": [min(one), max(one)], "range_2": [min(two), max(two)],
            "ratio_2_over_1": statistics.median(ratios), "ratio_range": [ratios[0], ratios[-1]],
            "samples": {"1": one, "2": two}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/threads.json (default: a scratch path)")
    args = parser.parse_args(argv)
    out = (RESULTS if args.save else pathlib.Path(tempfile.gettempdir()) / "gpurnn-bench")
    out.mkdir(parents=True, exist_ok=True)                   # fail now, not after the run
    path = out / "threads.json"
    workloads = [("gpurnn train (default run)", lambda folder: train_step_ms(
        args.train_steps, folder))]
    workloads += [(f"{name} T={steps}", lambda folder, n=name, t=steps: config_step_ms(n, t))
                  for name, steps in CONFIGS]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for condition in ("as found", "with a busy process"):
            load_before = os.getloadavg()
            with busy_process(condition != "as found"):
                time.sleep(1.0)
                for label, work in workloads:
                    samples = {1: [], 2: []}
                    for repeat in range(args.repeats):
                        order = (1, 2) if repeat % 2 == 0 else (2, 1)
                        for threads in order:
                            with threadpool_limits(limits=threads, user_api="blas"):
                                samples[threads].append(work(folder))
                    row = {"workload": label, "condition": condition,
                           "load_average_before": load_before[0],
                           "load_average_after": os.getloadavg()[0], **summary(samples)}
                    results.append(row)
                    print(f"{condition:<20} {label:<28} 1 thread {row['ms_1_thread']:8.2f} ms "
                          f"({row['range_1'][0]:.2f}-{row['range_1'][1]:.2f})  2 threads "
                          f"{row['ms_2_threads']:8.2f} ms ({row['range_2'][0]:.2f}-"
                          f"{row['range_2'][1]:.2f})  2/1 {row['ratio_2_over_1']:.2f} "
                          f"({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f})  "
                          f"load {row['load_average_after']:.1f}", flush=True)
    path.write_text(json.dumps({"benchmark": "threads", **bench.machine_info(),
                                "config": vars(args), "results": results}, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
