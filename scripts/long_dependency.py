"""Elman vs GRU vs LSTM on the adding problem, a sum that needs memory over 100+ steps.

The adding problem (Hochreiter & Schmidhuber 1997; the variant of Le et al. 2015): every
step gets a random value in [0, 1) and a marker bit; exactly two steps are marked, one in
the first half of the sequence and one in the second, and at the last step (flagged by a
third input) the net must output the sum of the two marked values. With T = 200 steps the
first marked value must be held for 100 to 200 steps. Outputs before the last step are
trained towards 0 (the flag says when to answer); the loss is ½ Σ_t (y_t − target_t)².

Predicting the mean, 1, gives a squared error of 1/6 ≈ 0.167 at the last step; a sequence
counts as solved when |y_T − target| < 0.04 (Hochreiter & Schmidhuber's criterion).

For each cell the script reports test MSE and accuracy, the training time, and how much of
the last output's gradient reaches earlier steps: ‖∂h_T/∂h_{T−k} u‖ for unit vectors u,
lag k, at initialisation and after training (gpurnn.tools.diagnostics.gradient_flow). The plain
cell's product of Jacobians vanishes long before lag 100; the gated cells learn to keep it
near 1 (z → 1, f → 1), which is why the seeds point to GRU and LSTM.

The LSTM starts with its forget-gate bias at 1 (Gers et al. 2000; Jozefowicz et al. 2015),
the usual choice for long memories; everything else is each cell's default initialisation.
Training: Adam on the loss averaged over the batch, gradient norm clipped at 1, the learning
rate divided by 3 for the last 30 % of the iterations.

Writes benchmarks/results/long_dependency.{json,png}.

    python scripts/long_dependency.py [--steps 200] [--iterations 5000] [--cells elman gru lstm]
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

import gpurnn
from gpurnn.tools import diagnostics
from gpurnn.engine.arrays.backend import to_host
from gpurnn.training.optim import Adam, clip_grad_norm
from gpurnn.tools.arguments import DEVICE_HELP
from gpurnn.tools.command import run_reporting_errors

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def adding_batch(rng, batch, steps):
    """Inputs (batch, steps, 3) = (value, marker, answer flag) and targets (batch, steps, 1)."""
    x = np.zeros((batch, steps, 3))
    x[:, :, 0] = rng.random((batch, steps))
    rows = np.arange(batch)
    first = rng.integers(0, steps // 2, batch)
    second = rng.integers(steps // 2, steps - 1, batch)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    x[:, -1, 2] = 1.0
    y = np.zeros((batch, steps, 1))
    y[:, -1, 0] = x[rows, first, 0] + x[rows, second, 0]
    return x, y


def evaluate(model, x, y):
    """Test MSE and accuracy (|error| < 0.04) of the answer at the last step."""
    outputs, _ = model.forward(x)
    error = to_host(outputs[:, -1, 0]) - y[:, -1, 0]
    return float(np.mean(error ** 2)), float(np.mean(np.abs(error) < 0.04))


def last_output_flow(model, x):
    """‖∂h_T/∂h_{T−k} u‖ (unit u, mean over sequences) for k = 0 … T−1, in float64 (a
    vanished gradient underflows float32 within a few dozen steps)."""
    steps = x.shape[1]
    flow = diagnostics.gradient_flow(model.copy(dtype="float64"), x, origins=[steps - 1])
    return flow.norms[steps - 1, ::-1].copy()


def make_model(cell, hidden, dtype, device, seed):
    model = gpurnn.make_model(cell, 3, hidden, 1, output="identity", dtype=dtype,
                              device=device, seed=seed)
    if cell == "lstm":                                              # forget-gate bias 1
        bias = to_host(model.bias_hh).copy()
        bias[hidden:2 * hidden] = 1.0
        model.bias_hh = bias
    return model


def train(cell, args, test):
    rng = np.random.default_rng(args.seed)                          # same data for every cell
    model = make_model(cell, args.hidden, args.dtype, args.device, args.seed)
    flow_init = last_output_flow(model, test[0][:args.flow_batch])
    optimizer = Adam(lr=args.lr)
    curve = []
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        if iteration == int(0.7 * args.iterations) + 1:
            optimizer.lr = args.lr / 3                               # settle for the last 30 %
        x, y = adding_batch(rng, args.batch, args.steps)
        _, grads, _ = model.loss_and_grads(x, y, reduction="sum")
        for grad in grads.values():
            grad /= args.batch
        clip_grad_norm(grads, args.clip)
        optimizer.step(model.params, grads)
        if iteration % args.eval_every == 0 or iteration == args.iterations:
            mse, accuracy = evaluate(model, *test)
            curve.append({"iteration": iteration, "test_mse": mse, "accuracy": accuracy,
                          "seconds": time.perf_counter() - start})
            print(f"  {cell:<5} {iteration:>6}  test MSE {mse:.4f}  accuracy {accuracy:6.1%}"
                  f"  {curve[-1]['seconds']:6.0f} s", flush=True)
    seconds = time.perf_counter() - start
    mse, accuracy = evaluate(model, *test)
    return {"cell": cell, "parameters": int(sum(p.size for p in model.params.values())),
            "test_mse": mse, "accuracy": accuracy, "seconds": seconds,
            "ms_per_iteration": 1e3 * seconds / args.iterations, "curve": curve,
            "flow_init": flow_init.tolist(),
            "flow_trained": last_output_flow(model, test[0][:args.flow_batch]).tolist()}


def plot(results, args, path):
    plt = diagnostics._pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"elman": "tab:red", "gru": "tab:blue", "lstm": "tab:green"}
    for r in results:
        color = colors.get(r["cell"])
        it = [p["iteration"] for p in r["curve"]]
        left.plot(it, [p["test_mse"] for p in r["curve"]], color=color,
                  label=f"{r['cell']}: {r['accuracy']:.0%} solved")
        lag = np.arange(args.steps)
        right.plot(lag, r["flow_init"], color=color, linestyle="--", alpha=0.6,
                   label=f"{r['cell']} at initialisation")
        right.plot(lag, r["flow_trained"], color=color, label=f"{r['cell']} trained")
    left.axhline(1 / 6, color="gray", linestyle=":", label="predict the mean (1/6)")
    left.set_yscale("log")
    left.set_xlabel("iteration")
    left.set_ylabel("test MSE of the answer")
    left.set_title(f"adding problem, T = {args.steps}")
    right.set_yscale("log")
    right.set_ylim(bottom=1e-30)
    right.set_xlabel("lag k: steps back from the answer")
    right.set_ylabel("‖∂h_T/∂h_(T−k) u‖, unit u")
    right.set_title("how much gradient reaches the marked steps")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict:
    try:
        from gpurnn.tools.bench import machine_info
        info = machine_info()
    except ImportError:
        info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "platform": platform.platform(), "cores": os.cpu_count(),
                "numpy": np.__version__}
    info["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["elman", "gru", "lstm"],
                        choices=gpurnn.engine.models.factory.CELL_TYPES)
    parser.add_argument("--steps", type=int, default=200, help="sequence length T (default 200)")
    parser.add_argument("--iterations", type=int, default=5000, help="Adam steps (default 5000)")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (default 32)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (default 1)")
    parser.add_argument("--eval-every", type=int, default=250, help="(default 250)")
    parser.add_argument("--test-size", type=int, default=512, help="test sequences (default 512)")
    parser.add_argument("--flow-batch", type=int, default=32,
                        help="sequences for the gradient-flow measure (default 32)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be at least 4")

    test = adding_batch(np.random.default_rng(10_000 + args.seed), args.test_size, args.steps)
    print(f"adding problem, T = {args.steps}: the first marked value is held for "
          f"{args.steps - args.steps // 2}–{args.steps - 1} steps; predicting 1 gives MSE 0.167")
    results = [train(cell, args, test) for cell in args.cells]

    lags = [k for k in (1, 10, 50, 100, 150, args.steps - 1) if k < args.steps]
    print(f"\n{'cell':<6} {'params':>7} {'test MSE':>9} {'solved':>7} {'time':>8} {'ms/it':>6}"
          f"   ‖∂h_T/∂h_(T−k) u‖ at k = {', '.join(map(str, lags))}: initial → trained")
    for r in results:
        flows = "  ".join(f"{r['flow_init'][k]:.0e}→{r['flow_trained'][k]:.0e}" for k in lags)
        print(f"{r['cell']:<6} {r['parameters']:>7} {r['test_mse']:>9.4f} {r['accuracy']:>7.1%} "
              f"{r['seconds']:>7.0f}s {r['ms_per_iteration']:>6.1f}   {flows}")
    if args.no_save:
        return results
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"task": "adding problem", "settings": vars(args), "machine": machine(),
              "results": results}
    (RESULTS / "long_dependency.json").write_text(json.dumps(record, indent=1))
    print(f"\nwrote {RESULTS / 'long_dependency.json'}")
    try:
        plot(results, args, RESULTS / "long_dependency.png")
        print(f"wrote {RESULTS / 'long_dependency.png'}")
    except RuntimeError as error:
        print(f"no picture: {error}")
    return results


def _command(_args) -> int:
    main()  # returns the results, for tests; the command's exit code is 0
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors("long_dependency.py", _command, None))  # errors in one line
