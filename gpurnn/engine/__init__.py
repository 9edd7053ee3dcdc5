"""The engine: arrays on NumPy or CuPy, cells, the BPTT time loops, the output layer and the
models built from them. It imports nothing from the rest of gpurnn.

Its rooms, by subject (``plan``, the one place where kernels and schedules are chosen,
sits beside them):

* ``arrays`` — the NumPy/CuPy shim, cpu-strict and 16-bit arrays, workspaces, input checks;
* ``gpu`` — the fused, persistent and captured CUDA paths, the kernels and their audit;
* ``recurrences`` — one time step and its vector–Jacobian products: Elman, GRU, LSTM, layer
  norm, the diagonal cells;
* ``sweeps`` — the time loops: BPTT over blocks, recomputation, the scan;
* ``layers`` — stacks, bidirectional stacks, embeddings, dropout;
* ``models`` — the output layer and losses, parameters, torch interop, the models and
  ``make_model``.

Rooms are subjects, not layers: the gated, layer-normalised and diagonal modules declare
their models (``GRU``, ``LSTM``, ``MinGRU``, ...) beside their cells on ``layers.stack``'s
``LayeredRNN``, and a cell asks ``gpu.fused`` for its launcher. What holds is the order of the
modules: their imports have no cycle (``tests/test_layout.py``), ``arrays`` imports no other
room, and nothing here imports the rest of gpurnn.
"""
