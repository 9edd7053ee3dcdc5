"""Seed 001: a linear RNN learns to count the ones in a binary sequence, trained with Rprop.

    S_k = S_{k-1}·wRec + X_k·wx,  S_0 = 0,  loss = mean over samples of (S_n − Σ_k X_k)²

The exact solution is wx = wRec = 1. The loss surface has exploding-gradient cliffs
(|wRec| > 1 raises wRec to the n-th power), which is why the seed uses Rprop: it looks
only at the sign of each gradient.

    python scripts/count_ones.py [--samples 20] [--length 10] [--steps 500] [--seed 0]
"""
import argparse
import sys

import numpy as np

from gpurnn import LinearRNN
from gpurnn.training.optim import Rprop
from gpurnn.tools.arguments import DEVICE_HELP
from gpurnn.tools.command import run_reporting_errors


def make_data(samples=20, length=10, seed=0):
    """Random binary sequences (samples, length) and their counts of ones (samples,)."""
    rng = np.random.default_rng(seed)
    X = np.round(rng.random((samples, length)))
    return X, X.sum(axis=1)


def train(samples=20, length=10, steps=500, seed=0, wx=-1.5, wRec=2.0, device="cpu"):
    """Train from the seed's start (wx, wRec) = (−1.5, 2); returns the model and losses."""
    X, t = make_data(samples, length, seed)
    model = LinearRNN(wx, wRec, device=device)
    optimizer = Rprop(lr=0.001)  # the seed's initial step size for both weights
    losses = []
    for _ in range(steps):
        loss, grads, _ = model.loss_and_grads(X, t)
        optimizer.step(model.params, grads)
        losses.append(loss)
    return model, losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="sequences (default 20)")
    parser.add_argument("--length", type=int, default=10, help="sequence length (default 10)")
    parser.add_argument("--steps", type=int, default=500, help="Rprop steps (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = parser.parse_args(argv)
    model, losses = train(args.samples, args.length, args.steps, args.seed, device=args.device)
    print(f"loss: {losses[0]:.4g} -> {losses[-1]:.3g} after {args.steps} Rprop steps")
    print(f"learned wx = {float(model.wx):.6f}, wRec = {float(model.wRec):.6f} (exact: 1, 1)")
    X = np.array([[0, 1, 0, 1, 1, 0, 1, 0, 1, 1]], dtype=float)
    print(f"ones in {X[0].astype(int).tolist()}: model says {float(model.forward(X)[0, -1]):.4f}")


if __name__ == "__main__":
    sys.exit(run_reporting_errors("count_ones.py", main, None))  # errors in one line
