"""Mixed precision on the CPU emulation: bf16-mixed and fp16-mixed training curves beside
float32's, at equal steps, on the built-in corpus.

    python benchmarks/precision.py [--steps N] [--save]

Two models: the default language model (an Elman RNN, hidden 64, vocabulary 2000) and a
2-layer LSTM (hidden 64, embedding 32). Each is trained for the same steps and seed in
float32, bf16-mixed and fp16-mixed (dynamic loss scaling), Adam with the default rate; the
runs of a model start from the same weights and see the same batches, so the curves differ
only by the arithmetic. The result is every run's training and validation curve (mean
cross-entropy per word, nats), the largest gap of each 16-bit run's validation loss to
float32's at the same step, and the loss scales fp16-mixed went through. Writes JSON and a
PNG to a scratch path, or to benchmarks/results/precision.{json,png} with --save. The runs
go in parallel, one BLAS thread each.
"""
import argparse
import json
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
MODELS = {"default LM (elman)": [],
          "2-layer LSTM": ["--cell", "lstm", "--layers", "2", "--embedding-size", "32"]}
PRECISIONS = ("float32", "bf16-mixed", "fp16-mixed")


def launch(folder, model, extra, precision, steps):
    checkpoint = folder / f"{model.split()[0]}-{model.split()[-1].strip('()')}-{precision}.npz"
    env = {**os.environ, "GPURNN_BLAS_THREADS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gpurnn", "train", "--steps", str(steps), "--seed", "0",
               "--eval-every", str(max(1, steps // 10)), "--log-every", "5",
               "--checkpoint", str(checkpoint), "--device", "cpu", "--samples", "0",
               "--quiet", "--overwrite", "--precision", precision, *extra]
    return checkpoint, subprocess.Popen(command, env=env, cwd=folder)


def curves(checkpoint):
    records = [json.loads(line) for line in
               checkpoint.with_suffix(".jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in records if r.get("valid_loss") is not None]
    return train, valid


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    folder = SCRATCH / "precision"
    folder.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "steps": args.steps, "models": {}}
    jobs = [(model, extra, precision) for model, extra in MODELS.items()
            for precision in PRECISIONS]
    running, done = [], {}
    parallel = max(1, min(len(jobs), os.cpu_count() or 1))
    while jobs or running:
        while jobs and len(running) < parallel:
            model, extra, precision = jobs.pop(0)
            running.append(((model, precision), time.perf_counter(),
                            *launch(folder, model, extra, precision, args.steps)))
        key, start, checkpoint, process = running.pop(0)
        if process.wait() != 0:
            raise RuntimeError(f"the {key} run failed")
        done[key] = (checkpoint, time.perf_counter() - start)
    from gpurnn.training.checkpoint import load_checkpoint
    for model in MODELS:
        runs = {}
        for precision in PRECISIONS:
            checkpoint, seconds = done[(model, precision)]
            train, valid = curves(checkpoint)
            saved = load_checkpoint(checkpoint)
            runs[precision] = {"train": train, "valid": valid, "seconds": round(seconds, 1),
                               "loss_scale": saved.extra.get("loss_scale")}
        base = dict(runs["float32"]["valid"])
        for precision in PRECISIONS[1:]:
            gaps = [abs(loss - base[step]) for step, loss in runs[precision]["valid"]
                    if step in base]
            runs[precision]["max_valid_gap"] = max(gaps)
            runs[precision]["final_valid_gap"] = runs[precision]["valid"][-1][1] - \
                runs["float32"]["valid"][-1][1]
        result["models"][model] = runs
    out = RESULTS if args.save else folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "precision.png")
    for model, runs in result["models"].items():
        for precision, run in runs.items():
            print(f"{model:20s} {precision:11s} final valid {run['valid'][-1][1]:.4f} "
                  f"max gap {run.get('max_valid_gap', 0):.4f} ({run['seconds']} s)")
    print(f"wrote {out / 'precision.json'}")


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = result["models"]
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    styles = {"float32": ("black", "-"), "bf16-mixed": ("tab:blue", "--"),
              "fp16-mixed": ("tab:red", ":")}
    for axis, (model, runs) in zip(axes[0], models.items()):
        for precision, run in runs.items():
            color, line = styles[precision]
            steps, losses = zip(*run["train"])
            axis.plot(steps, losses, color=color, linestyle=line, alpha=0.35, linewidth=1)
            steps, losses = zip(*run["valid"])
            axis.plot(steps, losses, color=color, linestyle=line, marker="o", markersize=3,
                      label=f"{precision} (validation)")
        axis.set_title(f"{model}: {result['steps']} steps")
        axis.set_xlabel("step")
        axis.set_ylabel("cross-entropy per word (nats)")
        axis.legend()
    figure.suptitle("mixed precision vs float32 on the built-in corpus (CPU emulation; faint: "
                    "training loss)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


if __name__ == "__main__":
    main()
