"""Training throughput against sequence length, gpurnn side by side with what users would use.

One *training step* is the forward pass, BPTT and an SGD update. Systems, all measured in the
same run on the same data:

* ``reference`` — the seeds' per-sequence loops (:mod:`gpurnn.reference`), float64 as the
  tutorial runs them, on a few sequences and short T only (marked ``per-seq``);
* ``gpurnn`` — the batched engine on NumPy, and ``gpurnn-cuda`` on CuPy where a GPU is usable;
* ``torch`` — PyTorch on the CPU (``nn.RNN`` + ``nn.Linear`` + the loss, autograd, same sizes,
  same threads) and ``torch-cuda`` (cuDNN) where a GPU is usable. PyTorch has no windowed
  truncation, so for ``truncate=k`` configurations it runs full BPTT (no cheaper for it).

Also recorded: the *roofline efficiency* (the step's own matrix products timed alone, same
shapes and BLAS, divided by the step's time) and the peak host memory of a step, each in a
fresh subprocess so one measurement cannot inflate another.

On a shared machine one system's timing can be slowed by whatever else runs at that moment.
So for each (configuration, T) every system gets its own process, set up and warmed up once,
and their timed steps are *interleaved*: repeat r times system A, then B, then C (the order
rotating), so that a burst of load hits all of them alike. Each row records the median, the
spread (min and max) and every sample; ratios are taken repeat by repeat and reported as the
median with their quartiles. When the quartiles straddle 1 the difference is within the
noise and no ratio is printed, only the quartiles, with a warning (also kept in the JSON's
``warnings``). The summaries, the paired ratios and the record of the machine (its load
before and after, the BLAS kernel family, whether ``OPENBLAS_CORETYPE`` was set) come from
:mod:`gpurnn.tools.harness`, the harness every CPU figure of ``benchmarks/`` is taken with.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy

from ..engine.arrays import backend

from ..engine.models import losses

from ..reference import elman as reference
from ..engine.models.model import ElmanRNN
from ..training.optim import SGD
from ..engine.models.factory import make_model
from . import harness
from .harness import machine_info
from .arguments import UsageError, positive_int

__all__ = ["Config", "CONFIGS", "run", "timed", "spread", "paired_ratios", "machine_info",
           "main", "DEFAULT_REPEATS"]


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration (sizes of the model and the batch)."""

    name: str
    kind: str                 # "lm": token ids, softmax; "dense": float inputs, squared error
    input_size: int
    hidden: int
    output_size: int
    batch: int
    truncate: int | None      # None: full BPTT
    cell: str = "elman"       # elman | gru | lstm


CONFIGS = {c.name: c for c in [
    # (a) the tutorial's language model
    Config("lm-trunc4", "lm", 8000, 100, 8000, 32, 4),
    Config("lm-full", "lm", 8000, 100, 8000, 32, None),
    # (b) dense-input RNNs
    Config("dense-256", "dense", 128, 256, 128, 64, None),
    Config("dense-512", "dense", 128, 512, 128, 64, None),
    Config("dense-1024", "dense", 128, 1024, 128, 64, None),
    # gated cells, dense inputs
    Config("gru-256", "dense", 128, 256, 128, 64, None, "gru"),
    Config("lstm-256", "dense", 128, 256, 128, 64, None, "lstm"),
    # the gated cells at other sizes and small batches (benchmarks/cpu_roofline.py --table)
    *(Config(f"{cell}-{hidden}{suffix}", "dense", 128, hidden, 128, batch, None, cell)
      for cell in ("gru", "lstm")
      for hidden, batch, suffix in ((128, 64, ""), (256, 8, "-b8"), (256, 1, "-b1"),
                                    (512, 16, "-b16"), (1024, 8, "-b8"))),
]}
# What a plain ``gpurnn bench`` sweeps (the extra gated sizes only when named).
DEFAULT_CONFIGS = ("lm-trunc4", "lm-full", "dense-256", "dense-512", "dense-1024", "gru-256",
                   "lstm-256")
LENGTHS = (16, 32, 64, 128, 256, 512, 1024)
REFERENCE_MAX_T = 64          # the plain loop is O(T·τ) tiny ops per sequence: keep it short
REFERENCE_SEQUENCES = 2
# Interleaved timed steps per system. In 15 repeats of lm-trunc4 and dense-256 at T = 32
# beside PyTorch on the shared, heavily loaded 2-core machine (results/bench_noise.json), the
# median gpurnn/torch ratio of any 3 consecutive repeats ranged over 1.2-6.3x, of 5 over
# 1.5-3.3x, of 9 over 2.0-2.3x (dense-256: 1.0-1.5x).
DEFAULT_REPEATS = 9
SETTLE_SECONDS = 0.05  # pause between systems: spinning BLAS/OpenMP threads go to sleep


def make_data(config: Config, steps: int, seed: int = 0):
    """Host arrays: inputs (batch, T[, input]) and targets (batch, T[, output])."""
    rng = numpy.random.default_rng(seed)
    shape = (config.batch, steps)
    if config.kind == "lm":
        return (rng.integers(0, config.input_size, shape),
                rng.integers(0, config.output_size, shape))
    return (rng.standard_normal(shape + (config.input_size,), dtype=numpy.float32),
            rng.standard_normal(shape + (config.output_size,), dtype=numpy.float32))


# --- one training step per system ------------------------------------------------------------
def gpurnn_step(config: Config, steps: int, device="cpu"):
    output = "softmax" if config.kind == "lm" else "identity"
    model = make_model(config.cell, config.input_size, config.hidden, config.output_size,
                       output=output, dtype="float32", device=device)
    x, y = (backend.to_device(a, model.device) for a in make_data(config, steps))
    optimizer = SGD(lr=1e-4)

    def step():
        result = model.loss_and_grads(x, y, truncate=config.truncate)
        optimizer.step(model.params, result.grads)
    return step


def torch_step(config: Config, steps: int, device="cpu"):
    import torch
    torch.manual_seed(0)
    dev = torch.device(device)
    if config.kind == "lm":
        # The one-hot column of U is an embedding lookup; nn.RNN then adds its own W_ih.
        embed = torch.nn.Embedding(config.input_size, config.hidden).to(dev)
        rnn = torch.nn.RNN(config.hidden, config.hidden, batch_first=True).to(dev)
        loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    else:
        embed = None
        layer = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[config.cell]
        rnn = layer(config.input_size, config.hidden, batch_first=True).to(dev)
        loss_fn = torch.nn.MSELoss(reduction="sum")
    head = torch.nn.Linear(config.hidden, config.output_size).to(dev)
    modules = [m for m in (embed, rnn, head) if m is not None]
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-4)
    x, y = (torch.as_tensor(a, device=dev) for a in make_data(config, steps))

    def step():
        optimizer.zero_grad(set_to_none=True)
        inputs = embed(x) if embed is not None else x
        hidden, _ = rnn(inputs)
        out = head(hidden)
        if config.kind == "lm":
            loss = loss_fn(out.reshape(-1, config.output_size), y.reshape(-1))
        else:
            loss = 0.5 * loss_fn(out, y)
        loss.backward()
        optimizer.step()
    return step


def reference_step(config: Config, steps: int):
    """The seeds' loop over REFERENCE_SEQUENCES sequences (tutorial bptt for the LM)."""
    model = ElmanRNN(config.input_size, config.hidden, config.output_size,
                     output="softmax" if config.kind == "lm" else "identity", dtype="float64")
    # the seeds' loops take the seeds' names: U, W, V, b, c
    params = {old: backend.to_host(getattr(model, old)) for old in ("U", "W", "V", "b", "c")}
    x, y = make_data(config, steps)
    rows = range(min(REFERENCE_SEQUENCES, config.batch))
    lr = 1e-4

    def step():
        for b in rows:
            if config.kind == "lm":
                grads = dict(zip("UVW", reference.tutorial_bptt(
                    params["U"], params["V"], params["W"], x[b], y[b],
                    config.truncate if config.truncate is not None else steps)))
            else:
                _, grads, _ = reference.general_bptt(params, x[b].astype(numpy.float64),
                                                     y[b].astype(numpy.float64),
                                                     output="identity",
                                                     truncate=config.truncate)
            for name, grad in grads.items():
                params[name] -= lr * grad
    return step, len(rows) * steps


def timed(step, repeats, warmup, device):
    """Median wall time of ``step()`` in seconds after ``warmup`` calls, device synchronised."""
    return statistics.median(timed_samples(step, repeats, warmup, device))


def timed_samples(step, repeats, warmup, device) -> list:
    """Wall times of ``repeats`` calls of ``step()`` after ``warmup`` calls, synchronised."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def spread(values) -> dict:
    """Median, min and max of a list of samples."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired_ratios(ours: list, theirs: list) -> dict:
    """How many times faster we are, repeat by repeat (their time / our time for the same
    work): the median; the spread as the quartiles ``low``, ``high`` (one outlier repeat
    does not move them, and they settle as repeats are added, where min and max only
    widen); ``min``, ``max``; and ``clear``: the quartiles do not straddle 1, i.e. the
    spread is smaller than the difference."""
    n = min(len(ours), len(theirs))
    r = harness.ratio(theirs[:n], ours[:n])
    return {"ratio": r["median"], "low": r["q1"], "high": r["q3"], "min": r["min"],
            "max": r["max"], "clear": r["clear"], "repeats": r["n"]}


def _sync(device):
    if device.startswith("cuda"):
        backend.synchronize(device)
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        except ImportError:
            pass


# --- the step's own matrix products, timed alone: the roofline ------------------------------
def gemm_shapes(config: Config, steps: int):
    """(m, k, n, count) of every matrix product in one gpurnn step (forward, BPTT, dW, dU)."""
    B, H, I, O = config.batch, config.hidden, config.input_size, config.output_size
    G = {"elman": 1, "gru": 3, "lstm": 4, "mingru": 2, "minlstm": 3,
         "lru": 1, "paragru": 3}[config.cell]                            # gates share one product
    rows = B * steps
    width = 1 if config.truncate is None else min(config.truncate + 1, steps)
    shapes = [
        (B, H, G * H, steps),           # forward recurrence h_{t-1} W_hhᵀ
        (width * B, G * H, H, steps),   # backward sweep: live window origins times W_hh
        (G * H, rows, H, 1),            # dW_hh = Σ e(t)ᵀ h_{t-1}
    ]
    # The output layer works a block of rows at a time (gpurnn.losses): logits, dV, e_y V.
    block = max(1, min(rows, losses.LOGIT_BLOCK_ELEMENTS // O))
    for n, count in ((block, rows // block), (rows % block, 1)):
        if n and count:
            shapes += [(n, H, O, count), (O, n, H, count), (n, O, H, count)]
    if config.kind == "dense":
        shapes += [(rows, I, G * H, 1), (G * H, rows, I, 1)]   # input projection, dW_ih
    return shapes


def gemm_seconds(shapes, repeats=3) -> float:
    """Median time of running every product in ``shapes`` once, float32, on the host BLAS."""
    rng = numpy.random.default_rng(0)
    total = 0.0
    for m, k, n, count in shapes:
        a = rng.standard_normal((m, k), dtype=numpy.float32)
        b = rng.standard_normal((k, n), dtype=numpy.float32)
        out = numpy.empty((m, n), dtype=numpy.float32)
        # Large products are timed once and multiplied; tiny ones repeat for a stable figure.
        reps = max(1, min(count, 200))

        def product():
            for _ in range(reps):
                numpy.matmul(a, b, out=out)
        total += timed(product, repeats, 1, "cpu") * count / reps
    return total


# --- peak memory, in a fresh process --------------------------------------------------------
def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def measure_memory(system: str, config: Config, steps: int) -> dict:
    """Peak resident memory of a training step (Linux only), in this fresh process.

    After one warm-up step the kernel's peak mark is reset and one more step runs.
    ``step_bytes`` is that peak less the resident size before the model and data were
    made: parameters, data, reused buffers and the step's temporaries together.
    """
    make = {"gpurnn": gpurnn_step, "torch": torch_step}[system]
    if system == "torch":
        import torch  # noqa: F401  (the library's own footprint is not the step's)
    baseline = _status_bytes("VmRSS")
    step = make(config, steps)
    step()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")                                   # resets VmHWM to the current RSS
    step()
    peak = _status_bytes("VmHWM")
    return {"peak_bytes": peak, "step_bytes": max(0, peak - baseline)}


def make_step(system: str, config: Config, steps: int):
    """(step function, tokens per step, device) of one system, or None where the system does
    not run this (configuration, T): the seeds' loop only for Elman and short T."""
    device = "cuda" if system.endswith("-cuda") else "cpu"
    base = system.replace("-cuda", "")
    if base == "reference":
        if steps > REFERENCE_MAX_T or config.cell != "elman":
            return None
        step, tokens = reference_step(config, steps)
        return step, tokens, device
    if base == "torch":
        import torch
        torch.set_num_threads(os.cpu_count())          # the same threads as the host BLAS
    make = torch_step if base == "torch" else gpurnn_step
    return make(config, steps, device), config.batch * steps, device


def measure_speed(system: str, config: Config, lengths, repeats: int, warmup: int) -> list:
    """Tokens/s of one system over the lengths, in this process, not interleaved."""
    rows = []
    for steps in lengths:
        made = make_step(system, config, steps)
        if made is not None:
            step, tokens, device = made
            rows.append(_speed_row(system, config, steps, tokens,
                                   timed_samples(step, repeats, warmup, device)))
    return rows


def _speed_row(system, config, steps, tokens, samples) -> dict:
    seconds = statistics.median(samples)
    quartiles = harness.summary(samples)
    row = {"config": config.name, "T": steps, "system": system, "tokens": tokens,
           "seconds": seconds, "tokens_per_s": tokens / seconds,
           "seconds_min": min(samples), "seconds_max": max(samples),
           "seconds_q1": quartiles["q1"], "seconds_q3": quartiles["q3"], "samples": samples}
    if system == "reference":
        row["per_sequence"] = True
    if system == "gpurnn":
        row["gemm_seconds"] = gemm_seconds(gemm_shapes(config, steps))
        row["efficiency"] = row["gemm_seconds"] / seconds
    return row


def _package_env() -> dict:
    """The environment for a measuring subprocess: this gpurnn first on the path, so that a
    checkout's benchmark measures that checkout's code, not another installed copy."""
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


class _Worker:
    """One system's step in its own process, timed one call at a time on request."""

    def __init__(self, system: str, config: Config, steps: int, warmup: int):
        command = [sys.executable, "-m", "gpurnn.tools.bench", "--probe", "worker", system,
                   json.dumps(dataclasses.asdict(config)), str(steps), str(warmup)]
        self.process = subprocess.Popen(command, env=_package_env(), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.ready = self._read()          # {"tokens": n} or {"skip": true}

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            lines = self.process.stderr.read().strip().splitlines()
            raise RuntimeError(f"benchmark worker {' '.join(self.process.args[4:])} failed: "
                               f"{lines[-1] if lines else self.process.wait()}")
        return json.loads(line)

    def time_one(self) -> dict:
        """``{"seconds": wall time of one step, "at": when it started (time.time())}``."""
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def _serve(system: str, config: Config, steps: int, warmup: int) -> None:
    """The worker's side: set up, warm up, then time one step per ``step`` line read."""
    made = make_step(system, config, steps)
    if made is None:
        print(json.dumps({"skip": True}), flush=True)
        return
    step, tokens, device = made
    timed_samples(step, 0, warmup, device)
    print(json.dumps({"tokens": tokens}), flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            at = time.time()
            print(json.dumps({"seconds": timed_samples(step, 1, 0, device)[0], "at": at}),
                  flush=True)


def measure_interleaved(systems, config: Config, steps: int, repeats: int,
                        warmup: int) -> list:
    """Rows of tokens/s for ``systems`` at one (configuration, T), their timed steps
    interleaved repeat by repeat, the order rotating; each system in its own process."""
    workers = {}
    try:
        for system in systems:
            worker = _Worker(system, config, steps, warmup)
            if worker.ready.get("skip"):
                worker.close()
            else:
                workers[system] = worker
        names = list(workers)
        timings = {system: [] for system in names}
        for repeat in range(repeats):
            shift = repeat % len(names) if names else 0
            for system in names[shift:] + names[:shift]:
                time.sleep(SETTLE_SECONDS)
                timings[system].append(workers[system].time_one())
    finally:
        for worker in workers.values():
            worker.close()
    rows = []
    for system in names:
        row = _speed_row(system, config, steps, workers[system].ready["tokens"],
                         [t["seconds"] for t in timings[system]])
        row["started"] = [t["at"] for t in timings[system]]  # shows the interleaving
        rows.append(row)
    return rows


def _probe(*arguments) -> object:
    """Run ``python -m gpurnn.tools.bench --probe ...`` and return the JSON it prints last."""
    command = [sys.executable, "-m", "gpurnn.tools.bench", "--probe", *map(str, arguments)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env=_package_env())
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"benchmark probe {' '.join(command[3:])} failed: "
                           f"{lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_systems() -> list[str]:
    systems = ["reference", "gpurnn"]
    try:
        import torch
        systems.append("torch")
    except ImportError:
        torch = None
    if backend.cuda_available():
        systems.append("gpurnn-cuda")
        if torch is not None and torch.cuda.is_available():
            systems.append("torch-cuda")
    return systems


# --- the sweep ----------------------------------------------------------------------------
def run(config_names, lengths, *, systems=None, repeats=DEFAULT_REPEATS, warmup=1,
        memory=True, progress=print) -> list[dict]:
    """Measure every (configuration, T, system): the systems' timed steps interleaved (see the
    module docstring), each system in a fresh process so that no library's threads or caches
    slow another; returns one dict per measurement."""
    systems = systems or available_systems()
    results = []
    for name in config_names:
        for steps in lengths:
            for row in measure_interleaved(systems, CONFIGS[name], steps, repeats, warmup):
                if memory and row["system"] in ("gpurnn", "torch"):
                    row.update(_probe("memory", row["system"], name, steps))
                results.append(row)
                progress(_describe(row))
    return results


def memory_sweep(lengths, vocabularies, *, at_length=256, progress=print) -> list[dict]:
    """Peak step memory of the LM (truncate 4) against T and against the vocabulary, with
    the logits made a block of rows at a time ("blocked", the default) and all at once
    ("whole sequence", as an unblocked implementation holds them)."""
    rows = []
    whole = 1 << 62
    for label, block in (("blocked", 0), ("whole sequence", whole)):
        points = [(t, 8000) for t in lengths] + [(at_length, v) for v in vocabularies]
        for steps, vocab in dict.fromkeys(points):
            row = {"logits": label, "T": steps, "vocab": vocab,
                   **_probe("memory", "gpurnn", "lm-trunc4", steps, vocab, block)}
            rows.append(row)
            progress(f"memory {label:<15} T={steps:<5} vocab={vocab:<6} "
                     f"{row['step_bytes'] / 2**20:8,.0f} MiB")
    return rows


def plot_memory_sweep(rows, path) -> str | None:
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (by_t, by_vocab) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label in dict.fromkeys(r["logits"] for r in rows):
        mine = [r for r in rows if r["logits"] == label]
        lengths = sorted({r["T"] for r in mine if r["vocab"] == 8000})
        by_t.plot(lengths, [next(r["step_bytes"] for r in mine if r["T"] == t and r["vocab"] == 8000)
                            / 2**20 for t in lengths], "o-", label=label)
        at = max(r["T"] for r in mine if r["vocab"] != 8000) if any(
            r["vocab"] != 8000 for r in mine) else None
        vocabs = sorted({r["vocab"] for r in mine if r["T"] == at})
        by_vocab.plot(vocabs, [next(r["step_bytes"] for r in mine if r["T"] == at and
                                    r["vocab"] == v) / 2**20 for v in vocabs], "o-", label=label)
    by_t.set(xscale="log", yscale="log", xlabel="sequence length T (vocabulary 8000)",
             ylabel="step memory (MiB)", title="LM, batch 32, hidden 100")
    by_vocab.set(xscale="log", yscale="log", xlabel="vocabulary size (T = 256)",
                 ylabel="step memory (MiB)", title="LM, batch 32, hidden 100")
    vocabs = sorted({r["vocab"] for r in rows})
    by_vocab.set_xticks(vocabs, [f"{v:,}" for v in vocabs])
    by_vocab.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (by_t, by_vocab):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _describe(row) -> str:
    low, high = row["tokens"] / row["seconds_max"], row["tokens"] / row["seconds_min"]
    text = (f"{row['config']:<11} T={row['T']:<5} {row['system']:<11} "
            f"{row['tokens_per_s']:>11,.0f} tok/s ({low:,.0f}-{high:,.0f})")
    if "efficiency" in row:
        text += f"  efficiency {row['efficiency']:.0%}"
    if "step_bytes" in row:
        text += f"  step memory {row['step_bytes'] / 2**20:,.0f} MiB"
    return text


def ratios(results) -> dict:
    """gpurnn's speed over each other system's, per (config, T), taken repeat by repeat
    (see :func:`paired_ratios`): ``{label: {"ratio", "low", "high", "clear", "repeats"}}``."""
    table = {}
    for row in results:
        table.setdefault((row["config"], row["T"]), {})[row["system"]] = row
    out = {}
    for (config, steps), by_system in table.items():
        for ours in ("gpurnn", "gpurnn-cuda"):
            for other, row in by_system.items():
                if ours in by_system and other != ours and not other.startswith("gpurnn"):
                    mine = by_system[ours]
                    # seconds per token, so that per-sequence rows compare fairly
                    out[f"{config} T={steps} {ours}/{other}"] = paired_ratios(
                        [s / mine["tokens"] for s in mine["samples"]],
                        [s / row["tokens"] for s in row["samples"]])
    return out


def format_ratio(r: dict) -> str:
    """``1.85x (quartiles 1.62-2.10x)``, or, within the noise, no ratio: ``no clear
    difference (quartiles 0.80-1.30x over 9 repeats)``."""
    span = f"quartiles {r['low']:.2f}-{r['high']:.2f}x"
    if not r["clear"]:
        return f"no clear difference ({span} over {r['repeats']} repeats)"
    return f"{r['ratio']:.2f}x ({span})"


def markdown(results) -> str:
    systems = sorted({r["system"] for r in results}, key=lambda s: (
        ["reference", "gpurnn", "torch", "gpurnn-cuda", "torch-cuda"].index(s)))
    lines = ["| config | T | " + " | ".join(f"{s} tok/s" for s in systems)
             + " | gpurnn/torch | gpurnn/ref | efficiency | step MiB |",
             "|---|---:|" + "---:|" * (len(systems) + 4)]
    table = {}
    for row in results:
        table.setdefault((row["config"], row["T"]), {})[row["system"]] = row
    found = ratios(results)
    for (config, steps), rows in table.items():
        cells = []
        for s in systems:
            r = rows.get(s)
            mark = " (per-seq)" if r and r.get("per_sequence") else ""
            cells.append(f"{r['tokens_per_s']:,.0f}{mark}" if r else "–")
        ours = rows.get("gpurnn")
        vs_torch = found.get(f"{config} T={steps} gpurnn/torch")
        vs_torch = format_ratio(vs_torch) if vs_torch else "–"
        vs_ref = found.get(f"{config} T={steps} gpurnn/reference")
        vs_ref = f"{vs_ref['ratio']:.0f}x" if vs_ref else "–"
        eff = f"{ours['efficiency']:.0%}" if ours and "efficiency" in ours else "–"
        mem = (f"{ours['step_bytes'] / 2**20:,.0f}" if ours and "step_bytes" in ours else "–")
        lines.append(f"| {config} | {steps} | " + " | ".join(cells)
                     + f" | {vs_torch} | {vs_ref} | {eff} | {mem} |")
    return "\n".join(lines)


_COLORS = {"reference": "tab:gray", "gpurnn": "tab:blue", "torch": "tab:orange",
           "gpurnn-cuda": "tab:green", "torch-cuda": "tab:red"}


def plot(results, path_prefix) -> list[str]:
    """tokens/s against T (log–log) and step memory against T, one line per system."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install gpurnn[plot]); no plot written",
              file=sys.stderr)
        return []
    configs = list(dict.fromkeys(r["config"] for r in results))
    written = []
    for metric, label, suffix in (("tokens_per_s", "tokens / s", "throughput"),
                                  ("step_bytes", "peak memory of a step (MiB)", "memory")):
        if not any(metric in r for r in results):
            continue
        columns = min(4, len(configs))
        grid_rows = -(-len(configs) // columns)
        fig, axes = plt.subplots(grid_rows, columns, figsize=(4.2 * columns, 3.6 * grid_rows),
                                 squeeze=False)
        for ax in axes.flat[len(configs):]:
            ax.set_visible(False)
        for ax, config in zip(axes.flat, configs):
            for system in dict.fromkeys(r["system"] for r in results):
                rows = [r for r in results if r["config"] == config and r["system"] == system
                        and metric in r]
                if not rows:
                    continue
                scale = 2**20 if metric == "step_bytes" else 1
                ax.plot([r["T"] for r in rows], [r[metric] / scale for r in rows], "o-",
                        color=_COLORS.get(system),
                        label=system + (" (per-seq)" if rows[0].get("per_sequence") else ""))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(config)
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = f"{path_prefix}_{suffix}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


SCRATCH = Path(tempfile.gettempdir()) / "gpurnn-bench"
RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        choices=list(CONFIGS), metavar="NAME",
                        help=f"configurations (default: {', '.join(DEFAULT_CONFIGS)}; also "
                             f"{', '.join(c for c in CONFIGS if c not in DEFAULT_CONFIGS)})")
    parser.add_argument("--lengths", nargs="+", type=positive_int, default=list(LENGTHS),
                        metavar="T", help="sequence lengths (default 16 32 ... 1024)")
    parser.add_argument("--systems", nargs="+", default=None,
                        choices=["reference", "gpurnn", "torch", "gpurnn-cuda", "torch-cuda"],
                        help="default: all that are available here")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                        help=f"timed steps per system, interleaved with the other systems'; "
                             f"the median is reported (default {DEFAULT_REPEATS})")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    parser.add_argument("--memory-sweep", action="store_true",
                        help="also sweep the LM's step memory against T and vocabulary, with "
                             "the logits blocked and whole")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", default=None, metavar="PREFIX",
                       help=f"path prefix for the JSON and PNG files (default: "
                            f"{SCRATCH / 'throughput'}, a scratch place)")
    where.add_argument("--save", action="store_true",
                       help="write to the recorded results, benchmarks/results/throughput* of "
                            "the source checkout, instead of the scratch place")


def output_prefix(args) -> Path:
    """Where the results go (--output, --save or the scratch place), its folder created now,
    before anything is measured, so that a bad path fails at once."""
    if args.save:
        if not RECORDED.is_dir():
            raise UsageError(f"--save writes to {RECORDED}, which exists only in a source "
                             f"checkout of gpurnn; give --output PREFIX instead")
        prefix = RECORDED / "throughput"
    else:
        prefix = Path(args.output) if args.output else SCRATCH / "throughput"
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output folder {prefix.parent}: "
                         f"{error.strerror or error}") from None
    return prefix


def execute(args) -> int:
    from .._version import __version__
    prefix = output_prefix(args)
    environment = harness.environment()
    results = run(args.configs, args.lengths, systems=args.systems, repeats=args.repeats,
                  memory=not args.no_memory)
    print()
    print(markdown(results))
    found = ratios(results)
    for key, value in found.items():
        print(f"{key}: {format_ratio(value)}")
    noisy = [key for key, value in found.items() if not value["clear"]]
    if noisy:
        print(f"warning: {len(noisy)} of {len(found)} comparisons are within the noise (the "
              f"quartiles of their ratios over the repeats straddle 1); more --repeats or a "
              f"quieter machine would tell them apart", file=sys.stderr)
    payload = {"benchmark": "throughput", "gpurnn": __version__, **environment,
               "load_average_before": environment["load_average"],
               "load_average_after": list(os.getloadavg()),
               "configs": {n: dataclasses.asdict(CONFIGS[n]) for n in args.configs},
               "repeats": args.repeats, "interleaved": True, "results": results,
               "ratios": found, "warnings": [
                   f"{key}: the quartiles of the ratio ({value['low']:.2f}-{value['high']:.2f})"
                   f" straddle 1, the spread exceeds the difference"
                   for key, value in found.items() if not value["clear"]]}
    with open(f"{prefix}.json", "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    written = [f"{prefix}.json"] + plot(results, prefix)
    print("wrote " + ", ".join(map(str, written)))
    if args.memory_sweep:
        rows = memory_sweep(args.lengths, (2000, 4000, 8000, 16000, 32000))
        with open(f"{prefix}_memory_sweep.json", "w", encoding="utf-8") as f:
            json.dump({"benchmark": "memory_sweep", **machine_info(), "rows": rows}, f,
                      indent=1)
        path = plot_memory_sweep(rows, f"{prefix}_memory_sweep.png")
        print(f"wrote {prefix}_memory_sweep.json" + (f", {path}" if path else ""))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpurnn.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)  # one measurement
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.probe:
        kind, system, name, *rest = args.probe
        if kind == "worker":  # the configuration comes whole, as JSON
            _serve(system, Config(**json.loads(name)), int(rest[0]), int(rest[1]))
        else:
            config, steps = CONFIGS[name], int(rest[0])
            if len(rest) > 1:                          # vocabulary and logit-block overrides
                vocab, block = int(rest[1]), int(rest[2])
                config = dataclasses.replace(config, input_size=vocab, output_size=vocab)
                if block:
                    losses.LOGIT_BLOCK_ELEMENTS = block
            print(json.dumps(measure_memory(system, config, steps)))
        return 0
    from .command import run_reporting_errors
    return run_reporting_errors("python -m gpurnn.tools.bench", execute, args)


if __name__ == "__main__":
    sys.exit(main())
