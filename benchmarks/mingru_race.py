"""minGRU trained by the parallel scan and the ParaGRU against the GRU of the same size, at
equal wall time.

    python benchmarks/mingru_race.py [--seconds 120] [--quick] [--save]

Both run ``gpurnn train`` on the built-in corpus as raw text with the same sizes, optimizer
and cosine schedule: ``recipes/char-gru.toml`` (GRU, 320 units) and
``recipes/char-mingru.toml`` (minGRU, 320 units, ``time = "scan"``), the minGRU with
``--time loop`` (the same model step by step) and ``recipes/char-paragru.toml`` (the ParaGRU,
320 units, ``time = "auto"``: on a CPU the loop forward and the reverse-scan backward). Each system first times a few steps; its
run then gets the steps that fill the budget, so that its schedule ends in time, and
``--time-limit`` as the guard. Runs alternate system by system (so a shared machine's load
falls on all of them alike); each reports the held-out validation loss in bits per
character at the end. Writes JSON and a PNG (validation bits against seconds) to a scratch
path, or to benchmarks/results/mingru_race.{json,png} with --save.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gpurnn.tools.harness import machine_info  # noqa: E402

SYSTEMS = {"gru": ["--config", str(ROOT / "recipes" / "char-gru.toml")],
           "mingru-scan": ["--config", str(ROOT / "recipes" / "char-mingru.toml")],
           "mingru-loop": ["--config", str(ROOT / "recipes" / "char-mingru.toml"),
                           "--time", "loop"],
           "paragru": ["--config", str(ROOT / "recipes" / "char-paragru.toml")]}


def train(args, folder, name, extra):
    metrics = folder / f"{name}.jsonl"
    command = [sys.executable, "-m", "gpurnn", "train", *args, *extra,
               "--checkpoint", str(folder / f"{name}.npz"), "--metrics", str(metrics)]
    subprocess.run(command, check=False, cwd=folder, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    end = next(r for r in records if r.get("event") == "end")
    evals = [r for r in records if "valid_loss" in r]
    return end, evals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="each run's budget")
    parser.add_argument("--quick", action="store_true", help="10-second runs (a smoke test)")
    parser.add_argument("--save", action="store_true", help="record under benchmarks/results")
    args = parser.parse_args(argv)
    budget = 10.0 if args.quick else args.seconds
    out = ROOT / "benchmarks" / "results" if args.save else pathlib.Path(tempfile.mkdtemp())
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = pathlib.Path(scratch)
        for name, system in SYSTEMS.items():                       # a short timing first
            end, _ = train(system, folder, f"{name}-timing", ["--steps", "12",
                                                                  "--eval-every", "1000"])
            # 8 evaluations in the run, each about one step's cost per 40 held-out chunks
            steps = max(20, int(budget * 1000 / end["step_ms"] * 0.85))
            end, evals = train(system, folder, name,
                                  ["--steps", str(steps), "--eval-every", str(max(1, steps // 8)),
                                   "--warmup-steps", str(min(200, steps // 10)),
                                   "--time-limit", f"{int(budget * 1.25) + 5}s"])
            step_s = end["step_ms"] / 1000
            row = {"system": name, "steps": end["step"], "seconds": end["seconds"],
                   "step_ms": end["step_ms"], "stopped_by": end["stopped_by"],
                   "valid_bits_per_char": evals[-1]["valid_bits_per_char"],
                   "curve": [{"step": e["step"], "seconds_est": e["step"] * step_s,
                              "valid_bits_per_char": e["valid_bits_per_char"]} for e in evals]}
            rows.append(row)
            print(f"{name:12s} {row['steps']:5d} steps in {row['seconds']:6.1f} s "
                  f"({row['step_ms']:.0f} ms a step): {row['valid_bits_per_char']:.3f} bits/char",
                  flush=True)
    result = {"benchmark": "mingru_race", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **machine_info(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "budget_seconds": budget,
              "command": " ".join(sys.argv), "rows": rows}
    (out / "mingru_race.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "mingru_race.png")
    print(f"wrote {out / 'mingru_race.json'} and .png")


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in result["rows"]:
        ax.plot([p["seconds_est"] for p in row["curve"]],
                [p["valid_bits_per_char"] for p in row["curve"]], "o-",
                label=f"{row['system']} ({row['steps']} steps, {row['step_ms']:.0f} ms/step)")
    ax.set_xlabel("training seconds (steps × the run's mean step time)")
    ax.set_ylabel("validation bits per character")
    ax.set_title(f"built-in corpus, char level, 320 units, {result['budget_seconds']:.0f} s each "
                 f"(load {result['load_average_before'][0]:.1f})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
