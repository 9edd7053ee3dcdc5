"""gpurnn: recurrent networks trained with batched Backpropagation Through Time,
on the GPU through CuPy and on the CPU through NumPy, with one code path."""
from .backend import cuda_available, get_device
from .cells import Cell, ElmanCell
from .model import ElmanRNN, LinearRNN, LossAndGrads

__version__ = "0.1.0"

__all__ = ["ElmanRNN", "LinearRNN", "LossAndGrads", "Cell", "ElmanCell", "get_device",
           "cuda_available", "__version__"]
