"""Training throughput against sequence length: gpurnn, the seeds' loop and PyTorch, one run.

The harness itself is ``gpurnn.tools.bench`` (also ``gpurnn bench``); this program runs the full
sweep and records it under benchmarks/results/:

    pip install -e ".[bench]"            # PyTorch (CPU build) and matplotlib
    python benchmarks/throughput.py      # all configurations, T = 16 … 1024

writes throughput.json, throughput_throughput.png (tokens/s against T), throughput_memory.png
(peak step memory against T) and throughput_memory_sweep.{json,png} (step memory against T
and vocabulary, logits blocked and whole). Extra arguments go to the harness
(``--configs``, ``--lengths``, ``--systems``, ``--repeats``, ...).
"""
import pathlib
import sys

from gpurnn.tools import bench

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    RESULTS.mkdir(exist_ok=True)
    sys.exit(bench.main(["--output", str(RESULTS / "throughput"), "--memory-sweep",
                         *sys.argv[1:]]))
