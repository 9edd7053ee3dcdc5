"""gpurnn: recurrent networks trained with batched Backpropagation Through Time,
on the GPU through CuPy and on the CPU through NumPy, with one code path.

The package is cut by layer, each importing only the ones before it:
``engine`` (arrays, cells, BPTT, losses, models) → ``training`` (data, optimizers,
checkpoints, the trainer) → ``tools`` (the command, benchmarks, diagnostics);
``reference`` holds the seeds' plain loops and imports nothing.
"""
from ._version import __version__
from .engine import bptt
from .engine.backend import cuda_available, get_device
from .engine.cells import Cell, ElmanCell
from .engine.factory import from_torch, make_model, model_spec
from .engine.gated import GRU, LSTM, GRUCell, LSTMCell
from .engine.model import ElmanRNN, LinearRNN, LossAndGrads, RecurrentModel
from .engine.stack import StackedCell, StackedElmanRNN
from . import reference
from .tools.gradcheck import GradcheckResult, gradcheck
# The trainer and sampling modules under their names of old: ``gpurnn.train.train(config)``,
# ``gpurnn.generate.sample(...)``.
from .training import generate, train

__all__ = ["ElmanRNN", "GRU", "LSTM", "LinearRNN", "StackedElmanRNN", "RecurrentModel",
           "make_model", "model_spec", "from_torch", "LossAndGrads", "Cell", "ElmanCell", "GRUCell",
           "LSTMCell", "StackedCell", "gradcheck", "GradcheckResult", "bptt", "reference",
           "train", "generate", "get_device", "cuda_available", "__version__"]
