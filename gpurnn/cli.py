"""The ``gpurnn`` command: one subcommand per job.

Each subcommand lives in a function ``add_<name>(subparsers)`` that registers its flags
and sets ``handler``; errors the user can fix (bad values, missing files) end in a
one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

import numpy

from .activations import ACTIVATIONS, OUTPUTS

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(Exception):
    """A problem the user can fix; reported as one line, exit code 2."""


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_gradcheck(subparsers):
    p = subparsers.add_parser(
        "gradcheck", help="check BPTT gradients against central differences",
        description="Build a small random Elman RNN in float64 and compare its BPTT "
                    "gradients with central differences of the loss, parameter by parameter.")
    p.add_argument("--input-size", type=positive_int, default=10,
                   help="vocabulary size (token inputs) or features (--dense); default 10")
    p.add_argument("--hidden", type=positive_int, default=6, help="hidden size (default 6)")
    p.add_argument("--output-size", type=positive_int, default=None,
                   help="output size (default: the input size)")
    p.add_argument("--batch-size", type=positive_int, default=3, help="sequences (default 3)")
    p.add_argument("--seq-len", type=positive_int, default=8, help="time steps (default 8)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="tanh",
                   help="hidden activation f (default tanh)")
    p.add_argument("--output", choices=OUTPUTS, default="softmax",
                   help="output g: softmax with cross-entropy, else squared error (default softmax)")
    p.add_argument("--no-bias", action="store_true", help="drop the biases b and c")
    p.add_argument("--dense", action="store_true",
                   help="random float inputs instead of token ids")
    p.add_argument("--eps", type=float, default=1e-6, help="finite-difference step (default 1e-6)")
    p.add_argument("--tolerance", type=float, default=1e-6,
                   help="largest relative error that passes (default 1e-6)")
    p.add_argument("--max-checks", type=positive_int, default=50,
                   help="entries checked per parameter, sampled when larger (default 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.set_defaults(handler=run_gradcheck)


def run_gradcheck(args):
    from .gradcheck import gradcheck
    from .model import ElmanRNN

    output_size = args.output_size or args.input_size
    model = ElmanRNN(args.input_size, args.hidden, output_size, activation=args.activation,
                     output=args.output, bias=not args.no_bias, dtype="float64",
                     device=args.device, seed=args.seed)
    rng = numpy.random.default_rng(args.seed)
    shape = (args.batch_size, args.seq_len)
    if args.dense:
        inputs = rng.normal(size=shape + (args.input_size,))
    else:
        inputs = rng.integers(0, args.input_size, shape)
    if args.output == "softmax":
        targets = rng.integers(0, output_size, shape)
    else:
        targets = rng.normal(size=shape + (output_size,))
    result = gradcheck(model, inputs, targets, eps=args.eps, tolerance=args.tolerance,
                       max_checks=args.max_checks, seed=args.seed)
    print(f"{model!r}: batch {args.batch_size}, {args.seq_len} steps, full BPTT, "
          f"central differences with eps={args.eps:g}")
    print(result.table())
    print("gradient check passed" if result.ok
          else f"gradient check FAILED (tolerance {args.tolerance:g})")
    return 0 if result.ok else 1


SUBCOMMANDS = [add_gradcheck]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpurnn",
        description="Train, run and check recurrent networks with batched BPTT on NumPy or CuPy.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"gpurnn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (UsageError, ValueError, TypeError, RuntimeError, OSError) as error:
        print(f"gpurnn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
