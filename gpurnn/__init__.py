"""gpurnn: recurrent networks trained with batched Backpropagation Through Time,
on the GPU through CuPy and on the CPU through NumPy, with one code path.

The package is cut by layer, each importing only the ones before it:
``engine`` (arrays, cells, BPTT, losses, models) → ``training`` (data, optimizers,
checkpoints, the trainer) → ``tools`` (the command, benchmarks, diagnostics);
``reference`` holds the seeds' plain loops and imports nothing.
"""
from ._version import __version__
from .engine.sweeps import bptt
from .engine.arrays.backend import cuda_available, get_device
from .engine.recurrences.cells import Cell, ElmanCell
from .engine.models.factory import from_torch, make_model, model_spec
from .engine.recurrences.diagonal import LRU, LRUCell, MinGRU, MinGRUCell, MinLSTM, MinLSTMCell
from .engine.recurrences.gated import GRU, LSTM, GRUCell, LSTMCell
from .engine.recurrences.paragru import ParaGRU, ParaGRUCell
from .engine.plan import Plan
from .engine.recurrences.normalized import LayerNormGRUCell, LayerNormLSTMCell
from .engine.models.model import ElmanRNN, LinearRNN, LossAndGrads, RecurrentModel
from .engine.layers.stack import StackedCell, StackedElmanRNN
from . import reference
from .tools.gradcheck import GradcheckResult, gradcheck
from .training.config import TrainConfig
from .training.data import Vocabulary
from .training.evaluation import Evaluation, evaluate_file as evaluate
from .training.generate import sample
from .training.optim import (SGD, Adagrad, Adam, Momentum, Optimizer, RMSprop, Rprop,
                             clip_grad_norm, clip_grad_value, make_optimizer, scheduled_lr)
from .training.serialization import Saved, load, save
from .training.train import TrainResult, train
from . import _moved

_moved.install()


def __getattr__(name):
    # gpurnn.generate, gpurnn.optim, ...: the modules of 0.1's flat layout, with a warning
    if f"gpurnn.{name}" in _moved.MOVED:
        import importlib
        return importlib.import_module(f"gpurnn.{name}")
    raise AttributeError(f"module 'gpurnn' has no attribute {name!r}")


__all__ = ["ElmanRNN", "GRU", "LSTM", "MinGRU", "MinLSTM", "LRU", "ParaGRU", "MinGRUCell", "MinLSTMCell",
           "LRUCell", "ParaGRUCell", "Plan", "LinearRNN", "StackedElmanRNN", "RecurrentModel",
           "make_model", "model_spec", "from_torch", "LossAndGrads", "Cell", "ElmanCell", "GRUCell",
           "LSTMCell", "LayerNormGRUCell", "LayerNormLSTMCell", "StackedCell", "gradcheck", "GradcheckResult", "bptt", "reference",
           "save", "load", "Saved", "Optimizer", "SGD", "Momentum", "Adagrad", "RMSprop", "Adam",
           "Rprop", "make_optimizer", "clip_grad_norm", "clip_grad_value", "scheduled_lr",
           "TrainConfig", "TrainResult", "train",
           "sample", "evaluate", "Evaluation", "Vocabulary", "get_device", "cuda_available", "__version__"]
