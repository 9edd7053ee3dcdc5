"""gpurnn: recurrent networks trained with batched Backpropagation Through Time,
on the GPU through CuPy and on the CPU through NumPy, with one code path."""
from . import bptt, reference
from .backend import cuda_available, get_device
from .cells import Cell, ElmanCell
from .gradcheck import GradcheckResult, gradcheck
from .model import ElmanRNN, LinearRNN, LossAndGrads, RecurrentModel

__version__ = "0.1.0"

__all__ = ["ElmanRNN", "LinearRNN", "LossAndGrads", "RecurrentModel", "Cell", "ElmanCell", "gradcheck",
           "GradcheckResult", "bptt", "reference", "get_device", "cuda_available",
           "__version__"]

from .gated import GRU, LSTM, GRUCell, LSTMCell
from .stack import StackedCell, StackedElmanRNN, make_model, model_spec

__all__ += ["GRU", "LSTM", "GRUCell", "LSTMCell", "StackedCell", "StackedElmanRNN",
            "make_model", "model_spec"]
