"""One ``loss_and_grads`` call of the batched engine against the seeds' per-sequence loop.

The tutorial's language model (vocabulary 8000, hidden 100, no biases, tanh, softmax),
batch 32 × 32 steps, ``bptt_truncate = 4``. gpurnn runs in float32 on the whole batch;
the reference is the tutorial's ``bptt`` (forward pass included) on the same sequences,
one at a time, in float64 as the tutorial runs it. Prints tokens per second and the ratio,
and records them under benchmarks/results/engine_vs_reference.json.

    python benchmarks/engine_vs_reference.py [--device cpu] [--repeats 7]
"""
import argparse
import json
import pathlib
import sys

import numpy as np

import gpurnn
from gpurnn import reference
from gpurnn.tools.bench import machine_info, timed

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--truncate", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs (median reported)")
    parser.add_argument("--ref-sequences", type=int, default=8,
                        help="sequences the reference loop runs per timing (default 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocab, (args.batch, args.seq_len))
    y = rng.integers(0, args.vocab, (args.batch, args.seq_len))
    model = gpurnn.ElmanRNN(args.vocab, args.hidden, args.vocab, bias=False, dtype="float32",
                            device=args.device)
    engine_s = timed(lambda: model.loss_and_grads(x, y, truncate=args.truncate),
                     args.repeats, 1, str(model.device))
    engine_tps = args.batch * args.seq_len / engine_s

    U, V, W = (gpurnn.engine.backend.to_host(model.params[k]).astype(np.float64) for k in "UVW")
    n = min(args.ref_sequences, args.batch)

    def reference_loop():
        for b in range(n):
            reference.tutorial_bptt(U, V, W, x[b], y[b], args.truncate)
    reference_s = timed(reference_loop, max(3, args.repeats // 2), 1, "cpu")
    reference_tps = n * args.seq_len / reference_s
    ratio = engine_tps / reference_tps

    print(f"vocab {args.vocab}, hidden {args.hidden}, batch {args.batch}, T {args.seq_len}, "
          f"truncate {args.truncate}, device {model.device}")
    print(f"| system | tokens/s | ms per batch of {args.batch * args.seq_len} tokens |")
    print("|---|---:|---:|")
    print(f"| reference loop (seeds' bptt, float64, per sequence) | {reference_tps:,.0f} | "
          f"{args.batch * args.seq_len / reference_tps * 1e3:,.1f} |")
    print(f"| gpurnn loss_and_grads (float32, batched) | {engine_tps:,.0f} | "
          f"{engine_s * 1e3:,.1f} |")
    print(f"speed-up: {ratio:.1f}x (floor 50x)")
    if not args.no_save:
        path = RESULTS / "engine_vs_reference.json"
        path.write_text(json.dumps({
            "benchmark": "engine_vs_reference", "config": vars(args), **machine_info(),
            "device": str(model.device), "engine_tokens_per_s": engine_tps,
            "reference_tokens_per_s": reference_tps, "ratio": ratio}, indent=2) + "\n")
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
