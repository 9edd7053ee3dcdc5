"""One ``loss_and_grads`` call of the batched engine against the seeds' per-sequence loop.

The tutorial's language model (vocabulary 8000, hidden 100, no biases, tanh, softmax),
batch 32 × 32 steps, ``bptt_truncate = 4``. gpurnn runs in float32 on the whole batch;
the reference is the tutorial's ``bptt`` (forward pass included) on the same sequences,
one at a time, in float64 as the tutorial runs it. The two are timed in interleaved rounds
of the shared harness (:class:`gpurnn.tools.harness.Rounds`: both in each round, in a
shuffled order) so that the machine's load hits both alike; the speed-up is taken round by
round and reported as the median with its quartiles and range, with the machine's load, BLAS
kernel and ``OPENBLAS_CORETYPE`` recorded (:func:`gpurnn.tools.harness.environment`).

The *floor* is the least speed-up this program accepts: when the lower quartile of the
turn-by-turn speed-ups is below it, it says so and exits with status 1, so that a change that loses the batching shows at once. It is set well
under what the shared 2-core test machine measures (30-66x over the recorded runs), as
that machine's load moves single runs by tens of percent.

    python benchmarks/engine_vs_reference.py [--device cpu] [--repeats 7] [--save]

Writes JSON to a scratch path, or to benchmarks/results/engine_vs_reference.json with --save.
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's gpurnn
import gpurnn  # noqa: E402
from gpurnn import reference  # noqa: E402
from gpurnn.tools import harness  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SCRATCH = pathlib.Path(tempfile.gettempdir()) / "gpurnn-bench"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--truncate", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed turns of each (median and range reported; default 7)")
    parser.add_argument("--ref-sequences", type=int, default=8,
                        help="sequences the reference loop runs per turn (default 8)")
    parser.add_argument("--floor", type=float, default=20.0,
                        help="least speed-up accepted; exit status 1 below it (default 20)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", action="store_true",
                        help="record in benchmarks/results/ (default: a scratch path)")
    args = parser.parse_args(argv)
    path = (RESULTS if args.save else SCRATCH) / "engine_vs_reference.json"
    path.parent.mkdir(parents=True, exist_ok=True)          # fail now, not after the run

    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocab, (args.batch, args.seq_len))
    y = rng.integers(0, args.vocab, (args.batch, args.seq_len))
    model = gpurnn.ElmanRNN(args.vocab, args.hidden, args.vocab, bias=False, dtype="float32",
                            device=args.device)
    U, V, W = (gpurnn.engine.arrays.backend.to_host(getattr(model, k)).astype(np.float64) for k in "UVW")
    n = min(args.ref_sequences, args.batch)

    def engine():
        model.loss_and_grads(x, y, truncate=args.truncate)

    def reference_loop():
        for b in range(n):
            reference.tutorial_bptt(U, V, W, x[b], y[b], args.truncate)

    device = str(model.device)
    environment = harness.environment()
    if device.startswith("cuda"):
        sync = gpurnn.engine.arrays.backend.synchronize

        def timed_engine():
            engine()
            sync(device)
    else:
        timed_engine = engine
    rounds = harness.Rounds(min_sample_s=0)                  # one call per sample
    rounds.add("engine", timed_engine)
    rounds.add("reference", reference_loop)
    samples = rounds.run(args.repeats)
    engine_s, reference_s = samples["engine"], samples["reference"]
    engine_tokens, reference_tokens = args.batch * args.seq_len, n * args.seq_len
    speedup = harness.ratio([s / reference_tokens for s in reference_s],
                            [s / engine_tokens for s in engine_s])
    engine_tps = engine_tokens / harness.summary(engine_s)["median"]
    reference_tps = reference_tokens / harness.summary(reference_s)["median"]

    print(f"vocab {args.vocab}, hidden {args.hidden}, batch {args.batch}, T {args.seq_len}, "
          f"truncate {args.truncate}, device {model.device}, {args.repeats} turns each")
    print("| system | tokens/s (median) | range |")
    print("|---|---:|---:|")
    print(f"| reference loop (seeds' bptt, float64, per sequence) | {reference_tps:,.0f} | "
          f"{reference_tokens / max(reference_s):,.0f}-{reference_tokens / min(reference_s):,.0f} |")
    print(f"| gpurnn loss_and_grads (float32, batched) | {engine_tps:,.0f} | "
          f"{engine_tokens / max(engine_s):,.0f}-{engine_tokens / min(engine_s):,.0f} |")
    held = speedup["q1"] >= args.floor
    print(f"speed-up: {speedup['median']:.1f}x (round by round: quartiles {speedup['q1']:.1f}-"
          f"{speedup['q3']:.1f}x, all {speedup['min']:.1f}-{speedup['max']:.1f}x); floor "
          f"{args.floor:g}x: " + ("held" if held else "NOT held (lower quartile below it)"))
    path.write_text(json.dumps({
        "benchmark": "engine_vs_reference", "config": vars(args), **environment,
        "load_average_before": environment["load_average"],
        "load_average_after": list(os.getloadavg()), "interleaved": True,
        "device": device, "engine_tokens_per_s": engine_tps,
        "reference_tokens_per_s": reference_tps, "ratio": speedup["median"],
        "ratio_quartiles": [speedup["q1"], speedup["q3"]],
        "warnings": harness.noise_warnings({"engine/reference": speedup}),
        "ratio_range": [speedup["min"], speedup["max"]], "engine_seconds": engine_s,
        "reference_seconds": reference_s, "floor_held": held}, indent=2) + "\n")
    print(f"recorded in {path}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
