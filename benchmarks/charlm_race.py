"""gpurnn's character recipe against a small character Transformer, at equal wall time.

    python benchmarks/charlm_race.py [--seeds 3] [--quick] [--save]

The competitor is what a user would run on a CPU today: nanoGPT's baby ``shakespeare_char``
Transformer, written here in PyTorch (4 layers, 4 heads, 128 channels, context 64, batch 12,
AdamW at 1e-3 with 100 steps of warm-up and cosine decay to 1e-4 over 2,000 iterations, no
dropout, as many threads as cores; gpurnn gets as many BLAS threads). Its wall time T, periodic evaluations included, is the
budget of gpurnn's run: the recipe in ``recipes/char-gru.toml``, its steps set from a short
timing so that its cosine schedule ends at T, and ``--time-limit T`` as the guard.

Both read the same raw text, split as ``gpurnn train --level char`` splits it (the last 10%
held out), with the same vocabulary (every character of the text and ``UNKNOWN_TOKEN``).
During training each reports its validation loss against wall-clock seconds (the
Transformer on 16 fixed batches of held-out windows, gpurnn on the whole stretch). At the
end the benchmark scores both on the whole held-out stretch with the same per-character
cross-entropy: every character after the first predicted once, the Transformer from windows
of 64 sliding by 32 (each character with 32 to 64 characters of context), gpurnn by one
stream whose state runs from the stretch's first character to its last.

Texts: the built-in corpus as raw text (Python's documentation, pydoc_data), and the source
of a fixed list of standard-library modules (code: indentation and newlines matter), both
on every machine. Runs alternate system by system, text by text, seed by seed. Writes JSON
and a PNG to a scratch path, or benchmarks/results/charlm_race.{json,png} with --save.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import pathlib
import statistics
import sys
import sysconfig
import tempfile
import time

import numpy

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "char-gru.toml"
STDLIB_MODULES = ("argparse.py", "dataclasses.py", "enum.py", "functools.py", "inspect.py",
                  "textwrap.py", "string.py", "shutil.py", "tempfile.py", "json/decoder.py",
                  "json/encoder.py", "csv.py", "difflib.py")
TRANSFORMER = dict(layers=4, heads=4, channels=128, context=64, batch=12, lr=1e-3,
                   min_lr=1e-4, warmup=100, iters=2000, eval_every=250, eval_batches=16)
VALID_FRACTION = 0.1
METHOD = ("Both systems read the same raw text, the last 10% held out as one stretch, and the "
          "same vocabulary (every character of the text and UNKNOWN_TOKEN). The Transformer "
          "trains first; its wall time T (its periodic evaluations included) is gpurnn's "
          "budget: time_limit T, and steps from a 20-step timing so that the cosine schedule "
          "ends inside T. Curves: (seconds of training, step, validation loss) at each "
          "evaluation, the Transformer on 16 fixed batches of held-out windows, gpurnn on the "
          "whole stretch. Final scores (score, nats per character): the summed cross-entropy of "
          "characters 1 to n-1 of the stretch divided by their count, the Transformer from "
          "windows of 64 sliding by 32 (each character with 32 to 64 characters of context), "
          "gpurnn from one stream whose state runs over the whole stretch.")


# ------------------------------------------------------------------------------------ texts

def texts(quick: bool) -> dict:
    from gpurnn.training.data import load_builtin_text
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    code = "".join((stdlib / name).read_text(encoding="utf-8") for name in STDLIB_MODULES)
    out = {"python-docs": load_builtin_text(), "python-source": code}
    return {k: v[:60_000] for k, v in out.items()} if quick else out


# ------------------------------------------------------------------------------ Transformer

def transformer_model(vocab: int, cfg: dict):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg["channels"]
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            shape = (B, T, cfg["heads"], C // cfg["heads"])
            q, k, v = (a.view(shape).transpose(1, 2) for a in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp(self.ln2(x))

    class CharTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg["channels"]
            self.tokens, self.positions = nn.Embedding(vocab, C), nn.Embedding(cfg["context"], C)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg["layers"]))
            self.ln, self.head = nn.LayerNorm(C), nn.Linear(C, vocab)

        def forward(self, ids):
            x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    return CharTransformer()


def nanogpt_lr(it: int, cfg: dict) -> float:
    if it < cfg["warmup"]:
        return cfg["lr"] * (it + 1) / (cfg["warmup"] + 1)
    ratio = min(1.0, (it - cfg["warmup"]) / (cfg["iters"] - cfg["warmup"]))
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg["lr"] - cfg["min_lr"])


def train_transformer(train_ids, valid_ids, vocab: int, seed: int, cfg: dict) -> dict:
    import torch
    from torch.nn import functional as F
    torch.manual_seed(seed)
    rng = numpy.random.default_rng(seed)
    model = transformer_model(vocab, cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"],
                            betas=(0.9, 0.99))
    L, B = cfg["context"], cfg["batch"]
    train_t, valid_t = torch.from_numpy(train_ids), torch.from_numpy(valid_ids)
    fixed = numpy.random.default_rng(1234).integers(0, len(valid_ids) - L - 1,
                                                    (cfg["eval_batches"], B))

    def batch(data, starts):
        x = torch.stack([data[s:s + L] for s in starts])
        y = torch.stack([data[s + 1:s + L + 1] for s in starts])
        return x, y

    @torch.no_grad()
    def estimate():
        model.eval()
        losses = [F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1)).item()
                  for x, y in (batch(valid_t, starts) for starts in fixed)]
        model.train()
        return float(numpy.mean(losses))

    curve, start = [], time.perf_counter()
    curve.append((0.0, 0, estimate()))
    for it in range(cfg["iters"]):
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(it, cfg)
        x, y = batch(train_t, rng.integers(0, len(train_ids) - L - 1, B))
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (it + 1) % cfg["eval_every"] == 0 or it + 1 == cfg["iters"]:
            curve.append((time.perf_counter() - start, it + 1, estimate()))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "curve": curve, "model": model,
            "params": sum(p.numel() for p in model.parameters())}


def score_transformer(model, ids: numpy.ndarray, context: int) -> tuple[float, int]:
    """Summed cross-entropy (nats) of characters 1 … n−1 of ``ids``, each scored once:
    windows of ``context`` sliding by context / 2, each scoring its last half (the first
    window all of it), so every character has 32 to 64 characters before it (fewer only at
    the start); a last window ending at the stretch's end scores what is left."""
    import torch
    from torch.nn import functional as F
    data, n = torch.from_numpy(ids), len(ids)
    span = min(context, n - 1)                       # inputs per window
    stride = max(1, span // 2)
    windows, done = [(0, 0)], span                   # (start, first scored offset); targets done
    while done < n - 1:
        start = min(done + stride - span, n - 1 - span)
        windows.append((start, done - start))        # score targets past those done
        done = start + span
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for first in range(0, len(windows), 64):
            chunk = windows[first:first + 64]
            x = torch.stack([data[s:s + span] for s, _ in chunk])
            y = torch.stack([data[s + 1:s + span + 1] for s, _ in chunk])
            losses = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none")
            for row, (_, offset) in enumerate(chunk):
                total += float(losses[row, offset:].sum())
                count += span - offset
    return total, count


# ----------------------------------------------------------------------------------- gpurnn

def recipe() -> dict:
    """The recipe's settings, named as TrainConfig's fields."""
    import tomllib
    values = tomllib.loads(RECIPE.read_text(encoding="utf-8"))
    return {key.replace("-", "_"): value for key, value in values.items()}


class _Clock:
    """A callback recording (seconds since start, step, validation loss) at each evaluation."""

    def __init__(self):
        from gpurnn.training.callbacks import Callback
        self.curve, self.start = [], None
        outer = self

        class Recorder(Callback):
            def on_start(self, trainer):
                outer.start = time.perf_counter()

            def on_eval(self, trainer, record):
                elapsed = time.perf_counter() - (outer.start or time.perf_counter())
                outer.curve.append((elapsed, record["step"], record["valid_loss"]))
        self.callback = Recorder()


def train_gpurnn(path: pathlib.Path, seconds: float, seed: int, work: pathlib.Path,
                 quick: bool, settings: dict | None = None) -> dict:
    """gpurnn's run for ``seconds`` of wall time, with the recipe's ``settings`` (read from
    recipes/char-gru.toml when None)."""
    import gpurnn
    from gpurnn.training.train import Trainer
    settings = {**(recipe() if settings is None else settings), "corpus": str(path), "seed": seed, "quiet": True, "samples": 0,
                "device": "cpu", "valid_fraction": VALID_FRACTION, "overwrite": True}
    # a short timed run: how many steps fit the budget (the cosine curve ends at the last)
    probe = gpurnn.TrainConfig.from_dict({**settings, "steps": 20, "eval_every": 1000,
                                          "warmup_steps": 0,
                                          "checkpoint": str(work / "probe.npz")})
    trainer = Trainer(probe, out=io.StringIO())
    trainer.run()
    step_seconds = trainer.timing["step"] / max(1, trainer.timed_steps)
    steps = max(20, int(0.8 * seconds / step_seconds))  # evaluations and noise take the rest
    warmup = min(settings.get("warmup_steps", 0), steps // 10)  # a run too short shrinks it
    config = gpurnn.TrainConfig.from_dict({
        **settings, "steps": steps, "warmup_steps": warmup, "time_limit": f"{seconds:.1f}s",
        "eval_every": max(10, steps // 8), "checkpoint": str(work / f"lm-{seed}.npz")})
    clock = _Clock()
    trainer = Trainer(config, out=io.StringIO())
    trainer.events.callbacks.append(clock.callback)
    result = trainer.run()
    return {"budget_seconds": seconds, "seconds": result.seconds, "steps": result.step,
            "planned_steps": steps, "warmup_steps": warmup,
            "step_ms": 1e3 * step_seconds, "curve": clock.curve,
            "checkpoint": config.checkpoint, "stopped_by": result.stopped_by,
            "sample": write_sample(config.checkpoint, seed)}


def write_sample(checkpoint: str, seed: int, length: int = 300) -> str:
    """What the model writes after reading the end of its training text (as gpurnn
    generate does), at temperature 0.8."""
    from gpurnn.training.generate import load_language_model, sample
    lm = load_language_model(checkpoint)
    return sample(lm.model, lm.vocab, level=lm.level, length=length, warmup=lm.warmup,
                  temperature=0.8, seed=seed)[0]


def score_gpurnn(checkpoint: str, valid_text: str, work: pathlib.Path) -> tuple[float, int]:
    """Summed cross-entropy of characters 1 … n−1 of the stretch, one stream (state carried
    from its first character)."""
    import gpurnn
    held_out = work / "held-out.txt"
    held_out.write_text(valid_text, encoding="utf-8", newline="")
    scored = gpurnn.evaluate(checkpoint, held_out, batch_size=1)
    return scored.loss * scored.tokens, scored.tokens


# ------------------------------------------------------------------------------------- race

def race(seeds: int, quick: bool, corpora: dict | None = None) -> dict:
    """Train and score both systems on each text (``corpora``: name → raw text; the two
    built-in texts by default), ``seeds`` rounds, system by system, text by text."""
    import torch
    from gpurnn.training import data as D
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = dict(TRANSFORMER, **({"iters": 60, "eval_every": 20, "warmup": 10} if quick else {}))
    runs = []
    with tempfile.TemporaryDirectory(prefix="gpurnn-race-") as scratch:
        work = pathlib.Path(scratch)
        corpora = texts(quick) if corpora is None else corpora
        settings = recipe()                      # read once: every run trains the same recipe
        for name, text in corpora.items():
            (work / f"{name}.txt").write_text(text, encoding="utf-8", newline="")
        for seed in range(seeds):
            for name, text in corpora.items():
                train_t, valid_t = D.split_text(text, VALID_FRACTION)
                vocab = D.Vocabulary.for_text(text, size=2000)
                train_ids, valid_ids = vocab.encode(train_t), vocab.encode(valid_t)
                print(f"seed {seed}, {name}: transformer ...", file=sys.stderr, flush=True)
                tf = train_transformer(train_ids, valid_ids, len(vocab), seed, cfg)
                total, count = score_transformer(tf.pop("model"), valid_ids, cfg["context"])
                runs.append({"system": "transformer", "text": name, "seed": seed,
                             "score": total / count, "scored": count, **tf})
                print(f"seed {seed}, {name}: gpurnn for {tf['seconds']:.1f} s ...",
                      file=sys.stderr, flush=True)
                ours = train_gpurnn(work / f"{name}.txt", tf["seconds"], seed, work, quick,
                                    settings)
                total, count = score_gpurnn(ours["checkpoint"], valid_t, work)
                ours.pop("checkpoint")
                runs.append({"system": "gpurnn", "text": name, "seed": seed,
                             "score": total / count, "scored": count, **ours})
                print(f"  transformer {runs[-2]['score']:.4f}, gpurnn {runs[-1]['score']:.4f} "
                      f"nats per char", file=sys.stderr, flush=True)
        sizes = {name: {"characters": len(text), "held_out": len(D.split_text(text, 0.1)[1]),
                        "vocabulary": len(D.Vocabulary.for_text(text, size=2000))}
                 for name, text in corpora.items()}
    return {"runs": runs, "texts": sizes, "transformer": cfg, "gpurnn_recipe": settings}


def run(seeds: int, quick: bool, corpora: dict | None = None) -> dict:
    """The race with its record: machine, versions, threads, method, recipe and summary."""
    import gpurnn
    from gpurnn.tools.bench import machine_info
    from gpurnn.tools.command import blas_threads
    # both systems get every core: PyTorch takes them by default, gpurnn when told
    os.environ.setdefault("GPURNN_BLAS_THREADS", str(os.cpu_count() or 1))
    with blas_threads():
        result = race(seeds, quick, corpora)
    result["machine"] = machine_info()
    result["versions"] = {"python": result["machine"]["python"],
                          "numpy": result["machine"]["numpy"],
                          "torch": result["machine"].get("torch"), "gpurnn": gpurnn.__version__}
    result["threads"] = {"torch": result["machine"].get("torch_threads"),
                         "gpurnn_blas": int(os.environ["GPURNN_BLAS_THREADS"])}
    result["method"] = METHOD
    result["summary"] = summary(result)
    return result


def summary(result: dict) -> dict:
    out = {}
    for text in result["texts"]:
        row = {}
        for system in ("transformer", "gpurnn"):
            scores = [r["score"] for r in result["runs"]
                      if r["text"] == text and r["system"] == system]
            seconds = [r["seconds"] for r in result["runs"]
                       if r["text"] == text and r["system"] == system]
            row[system] = {"median_nats_per_char": statistics.median(scores),
                           "min": min(scores), "max": max(scores),
                           "median_bits_per_char": statistics.median(scores) / math.log(2),
                           "median_seconds": statistics.median(seconds)}
        pairs = [(a["score"], b["score"]) for a in result["runs"] for b in result["runs"]
                 if a["text"] == b["text"] == text and a["seed"] == b["seed"]
                 and a["system"] == "gpurnn" and b["system"] == "transformer"]
        row["gpurnn_minus_transformer"] = [round(a - b, 4) for a, b in pairs]
        ours, theirs = (row[s]["median_nats_per_char"] for s in ("gpurnn", "transformer"))
        row["winner"] = "gpurnn" if ours <= theirs else "transformer"
        wins = sum(d <= 0 for d in row["gpurnn_minus_transformer"])
        row["verdict"] = (f"{row['winner']} by {abs(ours - theirs):.3f} nats per character "
                          f"(medians); gpurnn lower in {wins} of {len(pairs)} paired seeds")
        out[text] = row
    return out


def plot(result: dict, path: pathlib.Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(result["texts"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    colours = {"transformer": "tab:orange", "gpurnn": "tab:blue"}
    for ax, name in zip(axes[0], names):
        for run in (r for r in result["runs"] if r["text"] == name):
            seconds = [c[0] for c in run["curve"]]
            losses = [c[2] for c in run["curve"]]
            label = f"{run['system']} (seed {run['seed']})"
            ax.plot(seconds, losses, marker=".", color=colours[run["system"]], alpha=0.8,
                    label=label)
        ax.set_title(f"{name}: validation loss per character")
        ax.set_xlabel("wall-clock seconds of training")
        ax.set_ylabel("nats per character")
        ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per system and text")
    parser.add_argument("--quick", action="store_true", help="tiny texts and runs (a smoke test)")
    parser.add_argument("--save", action="store_true",
                        help="write to benchmarks/results/ instead of a scratch folder")
    args = parser.parse_args(argv)
    result = run(args.seeds, args.quick)
    folder = RESULTS if args.save else pathlib.Path(tempfile.gettempdir()) / "gpurnn-bench"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "charlm_race" + ("_quick" if args.quick else "")
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    drawn = plot(result, folder / f"{stem}.png")
    for text, row in result["summary"].items():
        print(f"{text}: transformer {row['transformer']['median_nats_per_char']:.4f}, gpurnn "
              f"{row['gpurnn']['median_nats_per_char']:.4f} nats/char (medians); "
              f"{row['verdict']}")
    print(f"wrote {folder / stem}.json" + (" and .png" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
