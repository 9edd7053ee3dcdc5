"""The ``gpurnn`` command: one subcommand per job.

Each subcommand lives in a function ``add_<name>(subparsers)`` that registers its flags
and sets ``handler``; errors the user can fix (bad values, missing files) end in a
one-line message and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

import numpy

from ..engine.recurrences.activations import OUTPUTS
from ..engine.arrays.backend import get_device
from .arguments import (DEVICE_HELP, UsageError, add_model_arguments, float_in, int_at_least,
                        int_or_none, plain_text, positive_float, positive_int)
from .command import run_reporting_errors, with_blas_threads

__all__ = ["main", "build_parser", "UsageError"]




def add_gradcheck(subparsers):
    p = subparsers.add_parser(
        "gradcheck", help="check BPTT gradients against central differences, any cell",
        description="Build a small random model (Elman, GRU or LSTM, one or more layers) in "
                    "float64 and compare its BPTT gradients with central differences of the "
                    "loss, parameter by parameter.")
    add_model_arguments(p, hidden=6)
    p.add_argument("--input-size", type=positive_int, default=10,
                   help="vocabulary size (token inputs) or features (--dense); default 10")
    p.add_argument("--output-size", type=positive_int, default=None,
                   help="output size (default: the input size)")
    p.add_argument("--batch-size", type=positive_int, default=3, help="sequences (default 3)")
    p.add_argument("--seq-len", type=positive_int, default=8, help="time steps (default 8)")
    p.add_argument("--output", choices=OUTPUTS, default="softmax",
                   help="output g: softmax with cross-entropy, else squared error (default softmax)")
    p.add_argument("--no-bias", action="store_true", help="drop the biases")
    p.add_argument("--dense", action="store_true",
                   help="random float inputs instead of token ids")
    p.add_argument("--eps", type=float_in(0.0, 1.0), default=1e-6,
                   help="finite-difference step, in (0, 1] (default 1e-6)")
    p.add_argument("--tolerance", type=float_in(0.0, 1.0), default=1e-6,
                   help="largest relative error that passes, in (0, 1] (default 1e-6)")
    p.add_argument("--max-checks", type=positive_int, default=50,
                   help="entries checked per parameter, sampled when larger (default 50)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(handler=run_gradcheck)


def run_gradcheck(args):
    from .gradcheck import gradcheck
    from ..engine.models.factory import make_model

    output_size = args.output_size or args.input_size
    extra = {"activation": args.activation} if args.cell == "elman" else {}
    if args.cell != "elman" and args.activation != "tanh":
        raise UsageError(f"--activation applies to the elman cell only, not {args.cell}")
    model = make_model(args.cell, args.input_size, args.hidden, output_size,
                       num_layers=args.layers, output=args.output, bias=not args.no_bias,
                       dtype="float64", device=args.device, seed=args.seed, **extra)
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


# ------------------------------------------------------------------------------------ train

_METAVARS = {"corpus": "PATH", "checkpoint": "PATH", "metrics": "PATH", "lr": "X", "clip": "X",
             "clip_value": "X", "min_lr": "X", "weight_decay": "X", "eps": "X",
             "corpus_limit": "BYTES",
             "valid_fraction": "X", "truncate": "K", "time_limit": "DURATION",
             "stop_signal": "SIGNAL", "log_every_seconds": "SECONDS", "csv_column": "NAME",
             "device": "DEVICE", "memory_budget": "BYTES"}


def add_train(subparsers):
    import dataclasses
    import typing

    from ..training.config import TrainConfig
    p = subparsers.add_parser(
        "train", help="train a language model (default: on Python's own documentation)",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a recurrent language model (Elman, GRU or LSTM cells, stacked "
                    "with --layers)\nwith batched BPTT and save it to --checkpoint.\nThe loss "
                    "shown is the mean cross-entropy per predicted token (nats); perplexity = "
                    "exp(loss).",
        epilog="Settings can also come from --config FILE (TOML or JSON, keys named like the "
               "flags,\nwith dashes or underscores); flags given here override the file.\n"
               "--resume starts from the settings saved in the checkpoint; --steps/--epochs "
               "count the\nwhole run, so --resume --steps 30 after 15 saved steps trains 15 more.\n"
               "Ctrl-C, SIGTERM and --stop-signal save a checkpoint after the current step "
               "and exit;\nan existing checkpoint is continued with --resume or replaced "
               "with --overwrite.\n\n"
               "exit codes: 0 finished; 1 diverged; 2 bad input (flags, files, checkpoint "
               "in use);\n  3 a checkpoint could not be written (the previous one is "
               "intact); 75 stopped before\n  --time-limit; 128+N stopped by signal N (130 "
               "Ctrl-C, 143 SIGTERM); after 75 and 128+N,\n  continue with --resume.\n\n"
               "examples:\n  gpurnn train\n"
               "  gpurnn train --corpus book.txt --level char --cell lstm --hidden 256 "
               "--epochs 5\n"
               "  gpurnn train --resume --steps 3000\n")
    hints = typing.get_type_hints(TrainConfig)
    exclusive = p.add_mutually_exclusive_group()
    for field in dataclasses.fields(TrainConfig):
        flag, meta = "--" + field.name.replace("_", "-"), field.metadata
        kind = next(t for t in typing.get_args(hints[field.name]) or (hints[field.name],)
                    if t is not type(None))
        text = meta["help"]
        if field.default is not None and kind is not bool:
            text += f" (default: {field.default})"
        if kind is bool:
            p.add_argument(flag, action="store_true", help=text)
            continue
        target = exclusive if field.name in ("steps", "epochs") else p
        metavar = None if meta["choices"] else _METAVARS.get(field.name, "N")
        kind = int_or_none if field.name == "truncate" else kind       # --truncate none
        target.add_argument(flag, type=kind, choices=meta["choices"], metavar=metavar,
                            help=text)
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings")
    p.set_defaults(handler=run_train)


def train_config_from_args(args, base=None, *, comm=None):
    """The TrainConfig a ``gpurnn train`` command line asks for: ``base`` (default:
    TrainConfig(), or with --resume the checkpoint's settings), then --config FILE, then flags.

    With several processes (``comm``, see gpurnn.distributed) each builds it alike, an error
    on any of them is raised on all, and only rank 0 reads the checkpoint's settings.
    """
    from ..training.config import TrainConfig, merge_config, read_config_file
    from ..training.distributed import SingleProcess
    comm = comm or SingleProcess()
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config")}
    config_file = getattr(args, "config", None)
    from_file = comm.collectively(lambda: read_config_file(config_file) if config_file else {})

    def layered(start, **more):
        config = merge_config(start, from_file, source=str(config_file))
        return merge_config(config, {**flags, **more}, source=None)

    config = comm.collectively(lambda: layered(base or TrainConfig()))
    if config.resume:
        saved = comm.on_root(lambda: _saved_train_config(config.checkpoint))
        config = comm.collectively(lambda: layered(saved, resume=True))
    return config


def _saved_train_config(checkpoint):
    import dataclasses
    from pathlib import Path

    from ..training.train import read_train_config
    if not Path(checkpoint).is_file():
        raise UsageError(f"--resume: no checkpoint at {checkpoint} (give its path "
                         f"with --checkpoint)")
    # Paths stored in a checkpoint never say where this run writes: a copied or downloaded
    # checkpoint would otherwise append to (or cut) another run's metrics. The checkpoint
    # is the one named here, and the metrics go beside it unless --metrics says otherwise.
    # Nor does the run that wrote it having replaced an older one (--overwrite) carry over.
    return dataclasses.replace(read_train_config(checkpoint), quiet=False, metrics=None,
                               checkpoint=str(checkpoint), overwrite=False)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from tqdm import tqdm
    tqdm.write(f"gpurnn: warning: {message}", file=sys.stderr)


def run_train(args, base=None):
    """Train; the exit code says how it ended (see gpurnn.training.stopping.ExitCode)."""
    import signal
    import warnings

    from ..training.distributed import abort_all_on_failure, world
    from ..training.saving import CheckpointWriteError
    from ..training.stopping import ExitCode
    from ..training.train import Trainer, TrainingError
    comm = world()  # one process, or all those mpirun started
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            with abort_all_on_failure(comm, "gpurnn train"):  # a rank failing alone stops all
                config = train_config_from_args(args, base, comm=comm)
                return Trainer(config, comm=comm).run().exit_code
        except (TrainingError, CheckpointWriteError) as error:  # raised by every rank alike
            if comm.rank == 0:
                print(f"gpurnn train: {error}", file=sys.stderr)
            return ExitCode.DIVERGED if isinstance(error, TrainingError) \
                else ExitCode.SAVE_FAILED
        except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
            print("gpurnn train: interrupted, no checkpoint written", file=sys.stderr)
            return ExitCode.SIGNAL_BASE + signal.SIGINT


# --------------------------------------------------------------------------------- generate

def add_generate(subparsers):
    p = subparsers.add_parser(
        "generate", help="sample text or sentences from a trained language model",
        description="Sample from a checkpoint written by gpurnn train. A char or byte model "
                    "writes --length characters (bytes) of text per sample, with its "
                    "newlines and indentation, each sample under a numbered rule. A word or "
                    "char-sentences model writes one sentence per line: each starts at "
                    "SENTENCE_START (then the prompt) and stops at SENTENCE_END or "
                    "--max-length tokens. A model trained in stream mode first reads the "
                    "stretch of its training text kept in the checkpoint, so that sampling "
                    "starts from a state like those it was trained on.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz written by gpurnn train")
    p.add_argument("--num", type=positive_int, default=5,
                   help="samples: sentences, or stretches of text (default 5)")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="divides the log-probabilities: below 1 safer, above 1 wilder "
                        "(default 1.0)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help="draw only among the K most likely tokens (default: all)")
    p.add_argument("--prompt", metavar="TEXT", default=None,
                   help="text every sample starts with (for char and byte models, as typed: "
                        "\\n in the shell's $'...' quotes is a newline); tokens outside the "
                        "vocabulary are named in a warning")
    p.add_argument("--length", type=positive_int, default=None, metavar="N",
                   help="char and byte models: characters (bytes) written after the prompt "
                        "(default 500)")
    p.add_argument("--min-length", type=int_at_least(0), default=0, metavar="N",
                   help="sentence models: tokens before SENTENCE_END may be drawn (default 0)")
    p.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                   help="sentence models: stop after N tokens (default 60 words or 300 "
                        "characters)")
    p.add_argument("--show-unknown", action="store_true",
                   help="let the model draw UNKNOWN_TOKEN and print it, also for unknown "
                        "prompt words (default: never drawn, prompt words shown as typed)")
    p.add_argument("--seed", type=int_at_least(0), default=None,
                   help="random seed, for repeatable samples (default: fresh randomness)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(handler=run_generate)


def _print_warning(command):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"gpurnn {command}: warning: {message}", file=sys.stderr)
    return show


def run_generate(args):
    import warnings

    from ..training.data import RAW_LEVELS
    from ..training.generate import format_samples, load_language_model, sample
    if args.min_length and args.max_length and args.min_length > args.max_length:
        raise UsageError(f"--min-length {args.min_length} is above --max-length "
                         f"{args.max_length}")
    get_device(args.device)  # a bad --device is the flag's fault, not the checkpoint's
    lm = load_language_model(args.checkpoint, device=args.device)
    raw = lm.level in RAW_LEVELS
    if lm.written_as:
        print(f"gpurnn generate: note: {args.checkpoint} holds a model of the characters of "
              f"split sentences (--level {lm.level}; written as --level {lm.written_as}, the "
              f"name this mode had before gpurnn 0.2)", file=sys.stderr)
    misplaced = ([flag for flag, given in (("--min-length", args.min_length),
                                           ("--max-length", args.max_length)) if given]
                 if raw else (["--length"] if args.length else []))
    if misplaced:
        raise UsageError(f"{misplaced[0]} is for {'sentence' if raw else 'char and byte'} "
                         f"models; {args.checkpoint} is a {lm.level} model: use "
                         + ("--length N (characters written)" if raw
                            else "--max-length N (tokens per sentence at most)"))
    lengths = {"length": args.length} if raw else {"min_length": args.min_length,
                                                   "max_length": args.max_length}
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning("generate")
        samples = sample(lm.model, lm.vocab, num=args.num, level=lm.level,
                         prompt=args.prompt, temperature=args.temperature, top_k=args.top_k,
                         warmup=lm.warmup, show_unknown=args.show_unknown, seed=args.seed,
                         **lengths)
    print(format_samples(samples, lm.level) if raw else "\n".join(samples))
    return 0


# --------------------------------------------------------------------------------- evaluate

def add_evaluate(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="loss, perplexity and bits per character of a model on a file",
        description="Score a checkpoint written by gpurnn train on a held-out FILE, read as "
                    "the model was trained (its --level, --mode and --seq-len; a stream's "
                    "hidden state carried from chunk to chunk): the mean cross-entropy per "
                    "predicted token in nats, the perplexity, and for char and byte models "
                    "the bits per character (byte). The model's own held-out stretch scores "
                    "what its last validation did.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .npz written by gpurnn train")
    p.add_argument("file", metavar="FILE",
                   help="text file, folder of .txt files or .csv (as gpurnn train reads them)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="parallel rows per batch; each starts from the zero state (default: "
                        "as the training run validated, at least 32)")
    p.add_argument("--seq-len", type=positive_int, default=None, metavar="N",
                   help="steps per chunk (default: the training run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args):
    import json

    from ..training.evaluation import evaluate_file
    get_device(args.device)
    result = evaluate_file(args.checkpoint, args.file, device=args.device,
                           batch_size=args.batch_size, seq_len=args.seq_len)
    print(json.dumps(result.to_dict()) if args.json else result.line())
    return 0


# ------------------------------------------------------------------------------------- plot

def add_plot(subparsers):
    p = subparsers.add_parser(
        "plot", help="draw loss and perplexity curves from a metrics file to PNG",
        description="Draw the training and validation loss and the validation perplexity "
                    "recorded by gpurnn train (--metrics) to a PNG. Needs matplotlib: "
                    "pip install 'gpurnn[plot]'.")
    p.add_argument("metrics", metavar="METRICS", help="a .jsonl file written by gpurnn train")
    p.add_argument("--output", "-o", metavar="PNG", default=None,
                   help="image to write (default: METRICS with .png)")
    p.set_defaults(handler=run_plot)


def run_plot(args):
    from .plot import plot_metrics
    try:
        output = plot_metrics(args.metrics, args.output)
    except ImportError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {output}")
    return 0


def add_bench(subparsers):
    from . import bench
    p = subparsers.add_parser(
        "bench", help="training throughput against sequence length, beside PyTorch",
        description=plain_text(bench.__doc__.split("\n\n")[0]) + " Needs PyTorch for the torch columns "
                    "(pip install gpurnn[bench]). Each system runs in its own process and "
                    "their timed steps take turns; the median, the spread and ratios taken "
                    "repeat by repeat are reported, no ratio where the spread is larger than "
                    "the difference. Results go to a scratch place unless --output or --save.")
    bench.add_arguments(p)
    p.set_defaults(handler=bench.execute)


def add_diagnose(subparsers):
    from .diagnostics import add_diagnose as add
    add(subparsers)


def add_selftest(subparsers):
    from . import selftest
    p = subparsers.add_parser(
        "selftest", help="on a GPU: the CuPy tests, exactness, fused kernels, sweep beside cuDNN",
        description=plain_text(selftest.__doc__.split("\n\n")[0]))
    selftest.add_arguments(p)
    p.set_defaults(handler=selftest.execute)


def add_plan(subparsers):
    p = subparsers.add_parser(
        "plan", help="the kernels, launches and memory a training step would use",
        description="Print the launch plan of a training step: per block of the time grid, "
                    "what the forward and the backward sweep run as (plain, per-step fused "
                    "or persistent kernels) and why, each launch's grid, block, shared "
                    "memory, registers and resident blocks, the estimated times, and the "
                    "memory. On a GPU, or for a named one without it.")
    p.add_argument("--cell", choices=("elman", "gru", "lstm"), default="lstm")
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--gpu", default=None,
                   help="a100, h100 or h200 (default: the current CUDA device, else h100)")
    p.add_argument("--kernels", choices=("fused", "auto"), default="auto")
    p.add_argument("--persistent", choices=("auto", "on", "off"), default="auto",
                   help="the plan's persistent: the cost model, always where it fits, never")
    p.add_argument("--truncate", type=int, default=None)
    p.add_argument("--block-steps", type=int, default=None)
    p.add_argument("--proj-size", type=int, default=0)
    p.set_defaults(handler=run_plan)


def run_plan(args):
    from ..engine.plan import Plan
    from .arguments import UsageError

    if args.hidden <= 0 or args.batch <= 0 or args.seq_len <= 0:
        raise UsageError("--hidden, --batch and --seq-len must be positive")
    persistent = {"auto": None, "on": True, "off": False}[args.persistent]
    try:
        plan = Plan(kernels=args.kernels, persistent=persistent, block_steps=args.block_steps)
        report = plan.explain(cell=args.cell, hidden=args.hidden, batch=args.batch,
                              steps=args.seq_len, dtype=args.dtype, gpu=args.gpu,
                              truncate=args.truncate, proj_size=args.proj_size)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(report)
    return 0


SUBCOMMANDS = [add_train, add_generate, add_evaluate, add_gradcheck, add_plot, add_diagnose, add_bench,
               add_selftest, add_plan]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line: ``gpurnn train: error: ... (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpurnn",
        description="Train, run and check recurrent networks with batched BPTT on NumPy or CuPy.")
    from .._version import __version__
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
    return run_reporting_errors(f"gpurnn {args.command}", with_blas_threads(args.handler),
                                args)


if __name__ == "__main__":
    sys.exit(main())
