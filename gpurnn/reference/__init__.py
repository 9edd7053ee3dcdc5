"""The seeds' plain loops, written from their own equations, kept as the test oracle and the
benchmark baseline. Plain NumPy, one sequence at a time; they import nothing from gpurnn.

The Elman RNN loops (the tutorial's ``bptt``, the linear RNN's ``backward_gradient``, the
error terms with biases) are re-exported here; the GRU/LSTM loops are in
:mod:`gpurnn.reference.gated`, their layer-normalised forms in :mod:`gpurnn.reference.layer_norm`, the minGRU, minLSTM
and LRU loops in :mod:`gpurnn.reference.diagonal`.
"""
from . import diagonal, gated, layer_norm
from .elman import *  # noqa: F401,F403  (the seeds' names, as before the split)
from .elman import __all__ as _elman_all

__all__ = ["gated", "layer_norm", "diagonal", *_elman_all]
