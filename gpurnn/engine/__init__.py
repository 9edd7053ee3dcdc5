"""The engine: arrays on NumPy or CuPy, cells, the BPTT time loops, the output layer and the
models built from them. It imports nothing from the rest of gpurnn.

Layers inside, each importing only those before it: ``strict`` (the cpu-strict arrays:
NumPy with CuPy's rules) → ``backend`` (the NumPy/CuPy shim, the only module that imports
CuPy) → ``workspace``, ``activations``, ``validation`` →
``cells`` → ``bptt``, ``losses`` → ``parameters``, ``torch_interop`` → ``model`` →
``stack`` → ``gated`` → ``normalized`` → ``factory``.
"""
