"""The GPU self-test, as a script: the same as ``gpurnn selftest --device cuda``.

    python scripts/gpu_check.py [--device cuda:N] [--output DIR] [--budget SECONDS]

Runs the CuPy half of the test suite, float64 exactness of every cell against NumPy, the
fused kernels against the plain path, and the throughput sweep beside PyTorch's cuDNN
(TF32 off and on); writes benchmarks/results/gpu/ and prints one summary table. Fails at
once, with one line, where no GPU is usable.
"""
import sys

from gpurnn.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["selftest", *(sys.argv[1:] or ["--device", "cuda"])]))
