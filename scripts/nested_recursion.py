"""Seed 003: the gradient of a nested recursion, by the BPTT engine with a user-defined cell.

    S_t = f(w, S_{t-1}) = (1 + w·S_{t-1})²,   S_0 = 1,   y = S_4 = f(f(f(f(1))))

dy/dw = Σ_i (dS_4/dS_i)(∂S_i/∂w) = 12926834988414 for w = 2, exactly in float64.

    python scripts/nested_recursion.py [--w 2] [--s0 1] [--steps 4]
"""
import argparse
import sys

import numpy as np

from gpurnn import Cell

from gpurnn.engine.sweeps import bptt
from gpurnn.tools.command import run_reporting_errors


class NestedSquare(Cell):
    """S_t = (1 + w S_{t-1})², a recurrence with no input; params {"w": shape ()}."""

    def step(self, params, x_t, s_prev):
        return (1 + params["w"] * s_prev) ** 2

    def vjp_state(self, params, x_t, s_prev, s_t, g):
        return g * 2 * (1 + params["w"] * s_prev) * params["w"]    # g · ∂S_t/∂S_{t-1}

    def vjp_params(self, params, x_t, s_prev, s_t, g):
        return {"w": (g * 2 * (1 + params["w"] * s_prev) * s_prev).sum()}  # g · ∂S_t/∂w


def nested_recursion_gradient(w=2.0, s0=1.0, steps=4):
    """(S_steps, dS_steps/dw) by the BPTT engine, in float64."""
    cell = NestedSquare()
    params = {"w": np.array(w, dtype=np.float64)}
    h0 = np.full((1, 1), s0, dtype=np.float64)                       # (batch, state)
    _, states = bptt.forward(cell, params, None, h0, steps)          # (steps, 1, 1)
    dstates = np.zeros_like(states)
    dstates[-1] = 1.0                                                # d y / d S_steps
    grads = bptt.backward(cell, params, None, None, h0, states, dstates)
    return float(states[-1, 0, 0]), float(grads["w"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w", type=float, default=2.0, help="the weight w (default 2)")
    parser.add_argument("--s0", type=float, default=1.0, help="the initial state S_0 (default 1)")
    parser.add_argument("--steps", type=int, default=4, help="nesting depth (default 4)")
    args = parser.parse_args(argv)
    value, grad = nested_recursion_gradient(args.w, args.s0, args.steps)
    print(f"S_{args.steps} = {value:.17g}")
    print(f"dS_{args.steps}/dw = {grad:.17g}")


if __name__ == "__main__":
    sys.exit(run_reporting_errors("nested_recursion.py", main, None))  # errors in one line
