"""Training hyperparameters: one dataclass, its checks, and the ``--config`` file reader.

Every field is also a ``gpurnn train`` flag (``vocab_size`` is ``--vocab-size``), and a
``--config`` file (TOML or JSON) uses the same names, with dashes or underscores. Layers are
applied in order, each over the one before: the defaults below (or, with ``--resume``, the
configuration saved in the checkpoint), then the file, then the command-line flags.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..engine.layers.dropout import DROPOUT_KINDS
from ..engine.plan import KERNELS, TIME
from ..engine.arrays.precision import MIXED_PRECISIONS, PRECISIONS
from .data import LEVELS, RAW_LEVELS, SPECIAL_TOKENS

MAX_SAMPLES = 100_000  # samples drawn at once, at most (gpurnn.sample, --samples)

__all__ = ["TrainConfig", "DEFAULT_STEPS", "LEVELS", "RAW_LEVELS", "MODES", "OPTIMIZERS",
           "REDUCTIONS", "SCHEDULES", "EPS_PLACEMENTS", "DEVICES", "DTYPES", "CELLS", "RESUMABLE_FIELDS", "read_config_file",
           "merge_config", "parse_duration", "signal_number"]

MODES = ("stream", "sentence")
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "rprop")
REDUCTIONS = ("mean", "sum")
DTYPES = ("float32", "float64")
CELLS = ("elman", "gru", "lstm", "mingru", "minlstm", "lru", "paragru")
SCHEDULES = ("auto", "halve", "cosine", "none")
EPS_PLACEMENTS = ("outside", "inside")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "cpu-strict")
DEFAULT_STEPS = 1800  # neither steps nor epochs given: the built-in corpus, ~19 epochs


def _f(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything ``gpurnn train`` needs. Each field's text is its flag's ``--help``."""

    # --- data -----------------------------------------------------------------------------
    corpus: Optional[str] = _f(None, "UTF-8 text file, folder of .txt files, or .csv (the text "
                               "in --csv-column); default: the built-in corpus (Python's own "
                               "documentation, pydoc_data)")
    level: str = _f("word", "word: words and punctuation of sentences; char: every character "
                    "of the text as it is (newlines, case, spacing kept); byte: its UTF-8 "
                    "bytes (256 tokens, any file); char-sentences: characters of split "
                    "sentences, whitespace runs as one space", LEVELS)
    vocab_size: int = _f(2000, "vocabulary size, the 4 special tokens included; rarer tokens "
                         "become UNKNOWN_TOKEN")
    mode: str = _f("stream", "stream: the corpus as one text cut into chunks, hidden state "
                   "carried from chunk to chunk; sentence: padded batches of whole sentences",
                   MODES)
    valid_fraction: float = _f(0.1, "fraction held out for validation: sentences drawn at "
                               "random, or for char and byte the last stretch of the text")
    csv_column: str = _f("body", "the column of a .csv corpus that holds the text")
    corpus_limit: str = _f("1GiB", "refuse a corpus larger than this many bytes (e.g. 4GB); "
                           "0: no limit")
    # --- model and BPTT -------------------------------------------------------------------
    cell: str = _f("elman", "recurrent cell: elman (the tutorial's tanh RNN), gru or lstm "
                   "(PyTorch's gate equations), mingru or minlstm (Feng et al. 2024) or lru (real-"
                   "diagonal, Orvieto et al. 2023): diagonal cells, time by parallel scan; "
                   "paragru (a GRU with diagonal recurrent weights, Danieli et al. 2025): "
                   "time by Newton iterations of scans", CELLS)
    layer_norm: bool = _f(False, "layer-normalised gru or lstm cells (Ba et al. 2016): LN on "
                          "the input and recurrent projections, and on the LSTM's cell state")
    layers: int = _f(1, "stacked recurrent layers")
    hidden: int = _f(64, "hidden state size (of each layer)")
    embedding_size: Optional[int] = _f(None, "look tokens up in an embedding of this size "
                                       "under the first layer (default: none, a token "
                                       "selects a column of the first layer's weights)")
    # --- dropout (training only; each a rate in [0, 1), 0: off) ----------------------------
    dropout: float = _f(0.0, "between stacked layers, a fresh mask at every step "
                        "(PyTorch's dropout; needs --layers 2 or more)")
    dropout_input: float = _f(0.0, "locked (one mask per sequence, every step) on the "
                              "embedding's output (needs --embedding-size)")
    dropout_output: float = _f(0.0, "locked, on the top layer's output before the softmax")
    dropout_state: float = _f(0.0, "locked, on h(t-1) where it feeds the recurrent weights, "
                              "in every layer")
    weight_drop: float = _f(0.0, "DropConnect on the recurrent weights, one mask per batch "
                            "(AWD-LSTM's weight-drop)")
    dropout_embedding: float = _f(0.0, "whole rows of the embedding, one mask per batch "
                                  "(needs --embedding-size)")
    dtype: str = _f("float32", "precision of parameters and gradients (float64 for exact "
                    "comparisons)", DTYPES)
    batch_size: int = _f(32, "sequences per batch (parallel streams in stream mode); under "
                         "mpirun -n N, per process: the global batch is N times this")
    seq_len: int = _f(32, "stream mode: time steps per chunk; sentence mode: longer sentences "
                      "are cut to this many steps")
    truncate: Optional[int] = _f(None, "the tutorial's bptt_truncate: each output's error goes "
                                 "back at most K steps; default: through the whole chunk or "
                                 "sentence")
    memory_budget: Optional[str] = _f(None, "bytes one training step may hold, e.g. 256MB: "
                                      "the engine keeps what fits and recomputes the rest, "
                                      "with the same gradients (for long --seq-len); "
                                      "default: keep everything")
    # --- how long -------------------------------------------------------------------------
    steps: Optional[int] = _f(None, f"optimizer steps of the whole run, resumed parts included "
                              f"(default {DEFAULT_STEPS} unless --epochs is given)")
    epochs: Optional[int] = _f(None, "passes over the training data of the whole run, "
                               "instead of --steps")
    # --- optimization ---------------------------------------------------------------------
    optimizer: str = _f("adam", "update rule", OPTIMIZERS)
    lr: Optional[float] = _f(None, "learning rate (default: adam 0.003, rmsprop 0.004, "
                             "adagrad 0.05, momentum 0.2, sgd 1.0, rprop 0.001 (its first "
                             "step size); with --reduction sum, sgd's and momentum's are "
                             "divided by the tokens per batch)")
    reduction: str = _f("mean", "loss of a batch: mean cross-entropy per token, or the "
                        "tutorial's sum over tokens (scales the gradient with the batch)",
                        REDUCTIONS)
    schedule: str = _f("auto", "halve: the tutorial's schedule, halve the learning rate when "
                       "the validation loss rises; cosine: decay from --lr to --min-lr over "
                       "the run's total steps (nanoGPT's; more --steps on resuming stretch "
                       "what is left); none: constant; auto: halve for sgd, "
                       "none for the others", SCHEDULES)
    warmup_steps: int = _f(0, "raise the learning rate linearly over the first N steps "
                           "(with --schedule cosine or none)")
    min_lr: Optional[float] = _f(None, "--schedule cosine: the learning rate it ends at, "
                                 "0 allowed (default: --lr / 10, nanoGPT's habit)")
    weight_decay: float = _f(0.0, "decoupled weight decay (AdamW's) on the weight matrices "
                             "and embeddings, never the biases: each step multiplies them by "
                             "1 - lr * X")
    eps: Optional[float] = _f(None, "the optimizer's eps (adagrad, rmsprop, adam; default "
                              "1e-8)")
    eps_placement: str = _f("outside", "adagrad and rmsprop: eps outside the root, g / "
                            "(sqrt(G) + eps) as PyTorch, or inside, g / sqrt(G + eps) as "
                            "min-char-rnn", EPS_PLACEMENTS)
    clip: float = _f(5.0, "scale gradients down to this global L2 norm; 0 turns clipping off")
    clip_value: float = _f(0.0, "then clip every gradient element to [-X, X] (min-char-rnn's "
                           "clip, PyTorch's clip_grad_value_); 0 turns it off")
    max_bad_steps: int = _f(5, "stop after this many consecutive steps with a non-finite "
                            "loss or gradient (each is skipped)")
    # --- evaluation, logging, checkpoints -------------------------------------------------
    eval_every: int = _f(100, "steps between validation evaluations")
    log_every: int = _f(10, "steps between metrics records and progress-bar updates")
    checkpoint: str = _f("gpurnn-lm.npz", "where checkpoints are written and what --resume "
                         "reads")
    checkpoint_every: int = _f(500, "steps between checkpoints; 0: only at the end and on "
                               "Ctrl-C")
    resume: bool = _f(False, "continue the run saved in --checkpoint exactly where it stopped")
    overwrite: bool = _f(False, "replace the gpurnn checkpoint and metrics already at those "
                         "paths with a new run (without it, an existing checkpoint is only "
                         "continued, with --resume)")
    metrics: Optional[str] = _f(None, "JSON-lines metrics file (default: the checkpoint path "
                                "with .jsonl)")
    samples: int = _f(3, "samples drawn from the model at the end: sentences, or for char and "
                      "byte a stretch of text each")
    seed: int = _f(0, "seed for initial weights, the validation split and the batch order")
    device: str = _f("auto", "auto (the GPU when CuPy finds one, else the CPU), cpu, cuda, "
                     "cuda:N or cpu-strict (the CPU with CuPy's rules, to check code for the GPU)")
    quiet: bool = _f(False, "no progress bar and no per-evaluation lines; the final line "
                     "(checkpoint, perplexity) is still printed")
    log_every_seconds: float = _f(10.0, "without a terminal (output to a file or pipe): a "
                                  "progress line at most this often; 0: every --log-every "
                                  "steps")
    time_limit: Optional[str] = _f(None, "stop cleanly before this wall-clock time from the "
                                   "start (e.g. 2h30m, 45m, 90s), leaving time for the final "
                                   "checkpoint as measured during the run")
    stop_signal: Optional[str] = _f(None, "another signal that stops training after the "
                                    "current step with a checkpoint, like SIGTERM and Ctrl-C "
                                    "do (e.g. USR1, for SLURM's --signal=USR1@90)")
    kernels: str = _f("plain", "fused: the cells' steps (per-step or persistent kernels), "
                      "softmax and optimizer updates as CUDA kernels on the GPU; auto: plain, "
                      "per-step or persistent by the cost model (NumPy arrays always run "
                      "plain)", KERNELS)
    time: str = _f("auto", "mingru, minlstm, lru and paragru: cross each block's steps by "
                   "the associative scan (paragru: Newton's method, a scan per iteration) or "
                   "step by step; auto chooses by the block's size and device (the result is "
                   "the same to rounding)", TIME)
    newton_tol: Optional[float] = _f(None, "paragru with --time scan: stop the forward's Newton "
                                     "iterations when no state changes by more than this "
                                     "(default: to rounding)")
    precision: str = _f("float32", "float32; tf32 (TF32 tensor-core GEMMs on the GPU, float32 "
                        "on the CPU); bf16-mixed or fp16-mixed: activations, caches and GEMM "
                        "inputs in bfloat16/float16, the loss, softmax, accumulation, optimizer "
                        "state and master weights in float32 (needs --dtype float32)",
                        PRECISIONS)
    loss_scale: Optional[float] = _f(None, "the first dynamic loss scale (halved and the step "
                                     "skipped on an overflow, doubled after "
                                     "--loss-scale-window clean steps); default 65536 with "
                                     "--precision fp16-mixed, none otherwise")
    loss_scale_window: int = _f(2000, "clean steps after which the loss scale doubles")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Raise ValueError/TypeError naming the flag when a value is out of range."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{_flag(f.name)} must be one of {', '.join(choices)}, "
                                 f"got {getattr(self, f.name)!r}")
        if self.layer_norm and self.cell not in ("gru", "lstm"):
            raise ValueError(f"--layer-norm applies to --cell gru or lstm, not {self.cell}")
        if self.newton_tol is not None and (self.cell != "paragru" or not self.newton_tol > 0):
            raise ValueError(f"--newton-tol takes a positive number and applies to --cell "
                             f"paragru only, got {self.newton_tol} with --cell {self.cell}")
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab-size must be at least {len(SPECIAL_TOKENS) + 1}: "
                             f"{len(SPECIAL_TOKENS)} ids are the special tokens "
                             f"{', '.join(SPECIAL_TOKENS)}, got {self.vocab_size}")
        for name in ("layers", "hidden", "embedding_size", "batch_size", "seq_len", "max_bad_steps", "eval_every",
                     "log_every", "steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{_flag(name)} must be a positive integer, got {value}")
        for name in ("truncate", "checkpoint_every", "samples", "seed"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{_flag(name)} must be an integer >= 0, got {value}")
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{_flag(name)} must be a positive number, got {value}")
        if self.min_lr is not None and not (self.min_lr >= 0 and math.isfinite(self.min_lr)):
            raise ValueError(f"--min-lr must be a number >= 0, got {self.min_lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
        for name in DROPOUT_KINDS:
            rate = getattr(self, name)
            if not 0 <= rate < 1:
                raise ValueError(f"{_flag(name)} must be a rate in [0, 1), got {rate}")
        if self.dropout > 0 and self.layers == 1:
            raise ValueError("--dropout acts between stacked layers; give --layers 2 or more, "
                             "or use --dropout-output for the one layer's output")
        for name in ("dropout_input", "dropout_embedding"):
            if getattr(self, name) > 0 and self.embedding_size is None:
                raise ValueError(f"{_flag(name)} drops the embedding's rows or output; give "
                                 f"--embedding-size too")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup-steps must be an integer >= 0, got {self.warmup_steps}")
        halving = self.schedule == "halve" or (self.schedule == "auto"
                                               and self.optimizer == "sgd")
        if self.warmup_steps and halving:
            raise ValueError("--warmup-steps works with --schedule cosine or none; the "
                             "halving schedule (--schedule halve, or auto with sgd) has no "
                             "warm-up")
        if self.min_lr is not None and self.schedule != "cosine":
            raise ValueError("--min-lr is where --schedule cosine ends; add --schedule cosine")
        if self.min_lr is not None and self.lr is not None and self.min_lr > self.lr:
            raise ValueError(f"--min-lr {self.min_lr} is above --lr {self.lr}; the cosine "
                             f"schedule decays from --lr down to --min-lr")
        if self.eps is not None and self.optimizer not in ("adagrad", "rmsprop", "adam"):
            raise ValueError(f"--eps is for adagrad, rmsprop and adam, not {self.optimizer}")
        if self.eps_placement != "outside" and self.optimizer not in ("adagrad", "rmsprop"):
            raise ValueError(f"--eps-placement {self.eps_placement} is for adagrad and "
                             f"rmsprop; {self.optimizer} has no such choice")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the checkpoint and --overwrite replaces it; "
                             "give one of them")
        if self.samples > MAX_SAMPLES:
            raise ValueError(f"--samples must be at most {MAX_SAMPLES:,}, got {self.samples}")
        for name in ("clip", "clip_value"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{_flag(name)} must be a number >= 0 (0: off), got {value}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")
        if self.level in RAW_LEVELS and self.mode != "stream":
            raise ValueError(f"--level {self.level} reads the text as one stream, without "
                             f"sentences; --mode sentence needs them: use --level "
                             f"{'char-sentences' if self.level == 'char' else 'word'}, or "
                             f"--mode stream")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if not re.fullmatch(r"auto|cpu|cpu-strict|cuda(:\d+)?", self.device):
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.checkpoint:
            raise ValueError("--checkpoint must be a file path")
        from ..engine.plan import parse_bytes
        parse_bytes(self.memory_budget, "--memory-budget")
        if self.precision in MIXED_PRECISIONS and self.dtype != "float32":
            raise ValueError(f"--precision {self.precision} keeps float32 master weights: "
                             f"give --dtype float32 (not {self.dtype})")
        if self.loss_scale is not None and not (self.loss_scale > 0
                                                and math.isfinite(self.loss_scale)):
            raise ValueError(f"--loss-scale must be a number > 0, got {self.loss_scale}")
        if self.loss_scale_window < 1:
            raise ValueError(f"--loss-scale-window must be >= 1, got {self.loss_scale_window}")
        if self.corpus_limit.strip() != "0":
            parse_bytes(self.corpus_limit, "--corpus-limit")
        if not (self.log_every_seconds >= 0 and math.isfinite(self.log_every_seconds)):
            raise ValueError(f"--log-every-seconds must be a number >= 0, got "
                             f"{self.log_every_seconds}")
        if self.time_limit is not None:
            parse_duration(self.time_limit, "--time-limit")
        if self.stop_signal is not None:
            signal_number(self.stop_signal)
        return self

    @property
    def corpus_bytes(self) -> int:
        """--corpus-limit in bytes; 0 for no limit."""
        from ..engine.plan import parse_bytes
        return 0 if self.corpus_limit.strip() == "0" else parse_bytes(self.corpus_limit)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict of field values (dashes or underscores), unknown keys refused."""
        return merge_config(cls(), values, source="config")


# Fields that may differ between a checkpoint and the run that resumes it: how long, how
# often to log or save, where, on which device; the corpus path too, as the trainer compares
# a hash of the data itself. Everything else must match, or it would not be the same run.
RESUMABLE_FIELDS = frozenset({"corpus", "steps", "epochs", "lr", "clip", "clip_value",
                              "max_bad_steps", "corpus_limit",
                              "eval_every", "log_every", "checkpoint", "checkpoint_every", "resume",
                              "metrics", "samples", "device", "quiet", "memory_budget", "kernels", "time",
                              "newton_tol",
                              "overwrite", "log_every_seconds", "time_limit", "stop_signal"})

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d*)?)([dhms]))")


def parse_duration(text: str, name: str = "duration") -> float:
    """Seconds in ``"2h30m"``, ``"45m"``, ``"90s"``, ``"1d"`` or a bare number of seconds."""
    value = str(text).strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_RE.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
            raise ValueError(f"{name} must be a duration like 2h30m, 45m, 90s or a number of "
                             f"seconds, got {text!r}") from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive duration, got {text!r}")
    return seconds


def signal_number(name: str) -> int:
    """The number of a catchable signal named ``USR1``, ``SIGUSR1`` or by its number."""
    import signal
    text = str(name).strip().upper()
    try:
        number = int(text)
    except ValueError:
        number = getattr(signal, text if text.startswith("SIG") else "SIG" + text, None)
    # Beyond KILL and STOP (which cannot be caught), signals of a fault in the process
    # itself: a handler that returns after a real SEGV re-runs the faulting instruction.
    unsafe = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE",
                                           "SIGILL", "SIGABRT", "SIGTRAP", "SIGSYS", "SIGCHLD",
                                           "SIGPIPE") if hasattr(signal, n)}
    valid = {s for s in signal.Signals if s not in unsafe}
    if number not in valid:
        raise ValueError(f"--stop-signal must name a signal that can be caught safely, such "
                         f"as USR1, USR2, HUP or TERM; got {name!r}")
    return int(number)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_TYPES: dict = {}


def _field_types() -> dict:
    if not _TYPES:
        _TYPES.update(typing.get_type_hints(TrainConfig))
    return _TYPES


def _check_type(name: str, value, annotation) -> None:
    optional = typing.get_origin(annotation) is typing.Union
    kind = next(a for a in typing.get_args(annotation) if a is not type(None)) \
        if optional else annotation
    if value is None and optional:
        return
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
          float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[kind](value)
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a number",
                    str: "a string"}[kind]
        raise TypeError(f"{_flag(name)} must be {expected}{' or null' if optional else ''}, "
                        f"got {value!r}")


def merge_config(base: TrainConfig, values: dict, *,
                 source: Optional[str] = "config") -> TrainConfig:
    """``base`` with ``values`` (field names, dashes or underscores) applied over it.

    Setting one of steps/epochs clears the other inherited from ``base``, so a layer that
    says ``epochs`` replaces an earlier ``steps``. Unknown keys raise ValueError listing
    the valid ones; values are type-checked (an int is accepted for a float field). Error
    messages start with ``source`` (a file name, say) unless it is None.
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    updates, spelled = {}, {}
    where = f"{source}: " if source else ""
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ValueError(f"{where}unknown key {key!r}; valid keys are: "
                             f"{', '.join(n.replace('_', '-') for n in names)}")
        if name in spelled:  # 'vocab-size' and 'vocab_size': which one was meant?
            raise ValueError(f"{where}{_flag(name)} is given twice, as {spelled[name]!r} and "
                             f"{key!r}; keep one")
        spelled[name] = key
        if _field_types()[name] in (float, Optional[float]) and isinstance(value, int) \
                and not isinstance(value, bool):
            value = float(value)
        updates[name] = value
    if "steps" in updates and "epochs" not in updates:
        updates["epochs"] = None
    if "epochs" in updates and "steps" not in updates:
        updates["steps"] = None
    try:
        return dataclasses.replace(base, **updates)
    except (TypeError, ValueError) as error:
        if source is None:
            raise
        raise type(error)(f"{source}: {error}") from None


def read_config_file(path) -> dict:
    """The keys of a TOML (``.toml``) or JSON (any other name) file, as a flat dict.

    Raises:
        FileNotFoundError / ValueError with the file's name: missing, unreadable or invalid
        file, or a top level that is not a table / object.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path} is a folder; give a .toml or .json file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist" if not path.exists() else
                                f"config file {path} is not a regular file")
    text = path.read_bytes()
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib
            except ImportError:
                raise ValueError(f"{path}: reading TOML needs Python 3.11+ (or the tomli "
                                 f"package); use a JSON config instead") from None
        try:
            values = tomllib.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
    else:
        try:
            values = json.loads(text.decode("utf-8"), object_pairs_hook=_no_repeats(path))
        except _RepeatedKey:
            raise
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of flag names and values at the top level")
    return values


class _RepeatedKey(ValueError):
    pass


def _no_repeats(path):
    """A json ``object_pairs_hook`` that refuses a key given twice (json keeps the last)."""
    def pairs_to_dict(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise _RepeatedKey(f"{path}: key {key!r} is given twice; keep one")
            out[key] = value
        return out
    return pairs_to_dict
