"""gpurnn: recurrent networks trained with batched Backpropagation Through Time,
on the GPU through CuPy and on the CPU through NumPy, with one code path."""
from . import bptt, reference
from .backend import cuda_available, get_device
from .cells import Cell, ElmanCell
from .gated import GRU, LSTM, GRUCell, LSTMCell
from .gradcheck import GradcheckResult, gradcheck
from .model import ElmanRNN, LinearRNN, LossAndGrads, RecurrentModel
from .stack import StackedCell, StackedElmanRNN, make_model, model_spec

__version__ = "0.1.0"

__all__ = ["ElmanRNN", "GRU", "LSTM", "LinearRNN", "StackedElmanRNN", "RecurrentModel",
           "make_model", "model_spec", "LossAndGrads", "Cell", "ElmanCell", "GRUCell",
           "LSTMCell", "StackedCell", "gradcheck", "GradcheckResult", "bptt", "reference",
           "get_device", "cuda_available", "__version__"]
