"""Does dropout pay? The word-level LSTM recipe trained with and without its dropout.

    python benchmarks/dropout_lm.py [--steps N] [--seeds K] [--save]

recipes/word-lstm-dropout.toml (two LSTM layers over an embedding; locked dropout on the
embedding's output and the top layer's output, dropout between the layers, weight-drop,
embedding dropout) is trained on the built-in corpus beside the same file with every
dropout rate set to 0, for the same steps and seeds. The two runs of a seed train at the same
time, one BLAS thread each, so that a load on the machine falls on both alike. The result is
both validation curves (mean cross-entropy per word and perplexity) of every seed. Writes
JSON and a PNG to a scratch path, or to benchmarks/results/dropout_lm.{json,png} with --save.
"""
import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from gpurnn.tools.bench import machine_info

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCRATCH = pathlib.Path(tempfile.gettempdir()) / "gpurnn-bench"
RECIPE = ROOT / "recipes" / "word-lstm-dropout.toml"
NO_DROPOUT = ["--dropout", "0", "--dropout-input", "0", "--dropout-output", "0",
              "--dropout-state", "0", "--weight-drop", "0", "--dropout-embedding", "0"]


def train_both(folder: pathlib.Path, steps: int, seed: int) -> dict:
    """Both runs of one seed, side by side: {name: (metrics records, seconds)}."""
    runs = {}
    env = {**os.environ, "GPURNN_BLAS_THREADS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    for name, extra in (("dropout", []), ("no dropout", NO_DROPOUT)):
        checkpoint = folder / f"{name.replace(' ', '-')}-{seed}.npz"
        command = [sys.executable, "-m", "gpurnn", "train", "--config", str(RECIPE),
                   "--steps", str(steps), "--seed", str(seed), "--checkpoint", str(checkpoint),
                   "--device", "cpu", "--samples", "0", "--quiet", *extra]
        runs[name] = (checkpoint, subprocess.Popen(command, env=env, cwd=folder),
                      time.perf_counter())
    out = {}
    for name, (checkpoint, process, start) in runs.items():
        if process.wait() != 0:
            raise RuntimeError(f"the {name} run of seed {seed} failed")
        records = [json.loads(line) for line in
                   checkpoint.with_suffix(".jsonl").read_text().splitlines()]
        out[name] = (records, time.perf_counter() - start)
    return out


def curve(records) -> list:
    """[(step, validation loss)] of a run's metrics."""
    return [(r["step"], r["valid_loss"]) for r in records if r.get("valid_loss") is not None]


def plot(result: dict, path: pathlib.Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, color in (("dropout", "tab:blue"), ("no dropout", "tab:red")):
        for k, run in enumerate(result["runs"][name]):
            steps, losses = zip(*run["valid"][1:])           # step 0: the untrained model
            ax.plot(steps, [math.exp(v) for v in losses], color=color, alpha=0.8,
                    label=name if k == 0 else None)
    ax.set(xlabel="step", ylabel="validation perplexity (words)", yscale="log",
           title="word LSTM LM (recipe), with and without dropout")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per run (default "
                                                                "2000, the recipe's)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds (default 1)")
    parser.add_argument("--save", action="store_true",
                        help="record in benchmarks/results/ (default: a scratch path)")
    args = parser.parse_args(argv)
    out = RESULTS if args.save else SCRATCH
    out.mkdir(parents=True, exist_ok=True)                     # fail now, not after the runs
    runs = {"dropout": [], "no dropout": []}
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            for name, (records, seconds) in train_both(pathlib.Path(folder), args.steps,
                                                       seed).items():
                valid = curve(records)
                runs[name].append({"seed": seed, "seconds": seconds, "valid": valid,
                                   "best_valid_ppl": math.exp(min(v for _, v in valid)),
                                   "final_valid_ppl": math.exp(valid[-1][1])})
    summary = {name: {"final_valid_ppl": [r["final_valid_ppl"] for r in rs],
                      "best_valid_ppl": [r["best_valid_ppl"] for r in rs]}
               for name, rs in runs.items()}
    wins = sum(d["final_valid_ppl"] < n["final_valid_ppl"]
               for d, n in zip(runs["dropout"], runs["no dropout"]))
    payload = {"benchmark": "dropout_lm", **machine_info(), "recipe": str(RECIPE.relative_to(ROOT)),
               "recipe_text": RECIPE.read_text(), "steps": args.steps, "seeds": args.seeds,
               "method": "both runs of a seed trained at once, one BLAS thread each",
               "summary": summary, "dropout_wins": f"{wins} of {args.seeds}", "runs": runs}
    path = out / "dropout_lm.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    drawn = plot(payload, out / "dropout_lm.png")
    for name, s in summary.items():
        print(f"{name:>10}: final validation perplexity "
              + ", ".join(f"{p:.1f}" for p in s["final_valid_ppl"])
              + "; best " + ", ".join(f"{p:.1f}" for p in s["best_valid_ppl"]))
    print(f"dropout lower at the end in {wins} of {args.seeds} seeds")
    print(f"wrote {path}" + (f", {out / 'dropout_lm.png'}" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
