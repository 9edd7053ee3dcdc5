"""Training throughput against sequence length: gpurnn, the seeds' loop and PyTorch, one run.

The harness itself is ``gpurnn.tools.bench`` (also ``gpurnn bench``); this program runs the full
sweep, the systems' timed steps interleaved (see the harness's docstring):

    pip install -e ".[bench]"            # PyTorch (CPU build) and matplotlib
    python benchmarks/throughput.py      # all configurations, T = 16 … 1024, to a scratch path
    python benchmarks/throughput.py --save   # record under benchmarks/results/

writes throughput.json, throughput_throughput.png (tokens/s against T), throughput_memory.png
(peak step memory against T) and throughput_memory_sweep.{json,png} (step memory against T
and vocabulary, logits blocked and whole). Extra arguments go to the harness
(``--configs``, ``--lengths``, ``--systems``, ``--repeats``, ``--output``, ...).
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's gpurnn
from gpurnn.tools import bench  # noqa: E402

if __name__ == "__main__":
    sys.exit(bench.main(["--memory-sweep", *sys.argv[1:]]))
