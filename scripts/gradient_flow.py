"""Seed 001's picture of exploding and vanishing gradients, and the same for a tanh Elman RNN.

1. The linear RNN S_k = wRec·S_{k-1} + wx·X_k counting ones (seed 001): the gradient of the
   loss on each state, ∂ξ/∂S_k, is multiplied by wRec at every step back, so it explodes for
   |wRec| > 1 and vanishes for |wRec| < 1, at (wx, wRec) = (2, 1), (1, 2), (1, −2), (1, 0),
   (1, 0.5), (1, −0.5).
2. A tanh Elman RNN with its recurrent matrix W rescaled to spectral radius ρ: the mean
   ‖∂h_t/∂h_k · u‖ over unit vectors u, per lag t − k (the seeds' product of Jacobians).

Prints the numbers and draws benchmarks/results/gradient_flow_seed001.png and
gradient_flow_elman.png (``gpurnn diagnose --seed001 --json FILE`` writes seed 001's numbers).

    python scripts/gradient_flow.py [--length 10] [--steps 60] [--no-save]
"""
import argparse
import pathlib
import sys

import numpy as np

import gpurnn
from gpurnn.tools import diagnostics
from gpurnn.tools.command import run_reporting_errors

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RADII = (0.5, 0.9, 1.0, 1.5, 3.0)


def elman_flows(steps=60, hidden=32, batch=16, seed=0):
    """Per-lag gradient flow of a random tanh Elman RNN at each spectral radius in RADII."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, (batch, steps))
    flows = {}
    for radius in RADII:
        model = gpurnn.ElmanRNN(10, hidden, 10, dtype="float64", seed=seed)
        diagnostics.scale_recurrent(model, radius)
        flows[f"ρ(W) = {radius:g}"] = diagnostics.gradient_flow(model, x, seed=seed)
    return flows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=10, help="seed 001's sequence length")
    parser.add_argument("--steps", type=int, default=60, help="Elman sequence length")
    parser.add_argument("--no-save", action="store_true", help="print only, write nothing")
    args = parser.parse_args(argv)

    seed001 = diagnostics.seed001_gradients(length=args.length)
    print("seed 001: mean |∂ξ/∂S_k| over the samples, from the output S_n back to S_0")
    for (wx, wRec), g in seed001.items():
        cells = " ".join(f"{v:9.2e}" for v in g["magnitude"][::-1])
        print(f"  wx={wx:>2g} wRec={wRec:>4g}: {cells}")

    flows = elman_flows(args.steps)
    lags = [lag for lag in (0, 1, 5, 10, 20, 40, args.steps - 1) if lag < args.steps]
    print("\ntanh Elman, hidden 32: mean ‖∂h_t/∂h_(t−lag) u‖ for unit u, by lag")
    print("  " + " " * 12 + "".join(f"{lag:>10}" for lag in lags))
    for name, flow in flows.items():
        print(f"  {name:<12}" + "".join(f"{flow.by_lag[lag]:>10.2e}" for lag in lags))

    if args.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        diagnostics.plot_seed001(seed001, RESULTS / "gradient_flow_seed001.png")
        diagnostics.plot_gradient_flow(flows, RESULTS / "gradient_flow_elman.png",
                                       title="tanh Elman RNN: ‖∂h_t/∂h_k u‖ by lag",
                                       heatmaps=("ρ(W) = 0.9", "ρ(W) = 3"))
    except RuntimeError as error:  # no matplotlib
        print(f"no pictures: {error}")
        return
    print(f"\nwrote {RESULTS / 'gradient_flow_seed001.png'} and {RESULTS / 'gradient_flow_elman.png'}")


if __name__ == "__main__":
    sys.exit(run_reporting_errors("gradient_flow.py", main, None))  # errors in one line
