"""``gpurnn.save`` and ``gpurnn.load``: any model (and its optimizer) in the checkpoint
format of ``gpurnn train``, so that files move both ways between Python and the command.

A file written by :func:`save` holds the parameters, the model's constructor arguments
(``config["model"]``, as :func:`gpurnn.model_spec` gives them), the optimizer's
``state_dict()``, an optional vocabulary and whatever JSON scalars and arrays ``extra``
holds. A checkpoint of ``gpurnn train`` holds the same and the run's state besides
(``config["train"]``, the data position, the carried hidden state), which :func:`load`
passes on in ``extra`` and ``config``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ..engine.models.factory import make_model, model_spec
from ..engine.models.model import LinearRNN
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import Vocabulary
from .optim import Optimizer, make_optimizer

__all__ = ["Saved", "save", "load", "model_from_checkpoint"]

# LinearRNN (seed 001's two scalars) is no cell of make_model; it is saved under this name.
_LINEAR = "linear"


class Saved(NamedTuple):
    """What :func:`load` returns."""

    model: object              # the model, on the device asked for
    optimizer: Optimizer | None  # with its state, or None if none was saved
    vocab: Vocabulary | None   # the vocabulary, or None if none was saved
    step: int                  # steps taken (``optimizer.t`` when saved from Python)
    config: dict               # {"model": ..., and "train": ... for a trainer's checkpoint}
    extra: dict                # the ``extra`` given to :func:`save` (a trainer's run state)


def _spec(model) -> dict:
    if isinstance(model, LinearRNN):
        return {"cell": _LINEAR, "dtype": model.dtype.name}
    return model_spec(model)


def save(path, model, optimizer: Optimizer | None = None, *, vocab=None, level: str = "word",
         step: int | None = None, **extra) -> Path:
    """Write ``model`` (and ``optimizer``) to ``path``, atomically: a crash leaves the old
    file or the new one, never half of one.

    Args:
        path: the file, conventionally ``.npz``; an existing file is replaced only if it
            is a gpurnn checkpoint.
        model: any gpurnn model (ElmanRNN, StackedElmanRNN, GRU, LSTM, LinearRNN).
        optimizer: saved with its state (moments, step count, hyperparameters).
        vocab: a :class:`gpurnn.Vocabulary` (or its ``to_list()``); with it, ``gpurnn
            generate`` samples from the file.
        level: "word" or "char", how ``gpurnn generate`` joins the vocabulary's tokens.
        step: steps taken; default ``optimizer.t``, or 0.
        **extra: JSON scalars, lists, dicts and arrays kept beside the model.
    Returns:
        The path written.
    Raises:
        NonFiniteError: a parameter or optimizer slot holds NaN or Inf (nothing written).
        FileExistsError: ``path`` exists and is not a gpurnn checkpoint.
    """
    path = Path(path)
    if path.exists():
        try:
            load_checkpoint(path)
        except CheckpointError:
            raise FileExistsError(f"{path} exists and is not a gpurnn checkpoint; refusing "
                                  f"to replace it (give another path)") from None
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a gpurnn optimizer (gpurnn.Adam, ...) or None, "
                        f"got {type(optimizer).__name__}")
    if step is None:
        step = optimizer.t if optimizer is not None else 0
    config = {"model": _spec(model)}
    if hasattr(model, "dropout_stream"):  # the masks to come: loading continues them
        config["dropout_stream"] = model.dropout_stream.state_dict()
    if vocab is not None:
        config["level"] = level
    return save_checkpoint(path, params=model.params,
                           optimizer_state=optimizer.state_dict() if optimizer else {},
                           vocab=vocab if vocab is not None else [], config=config,
                           rng_state=None, step=step, extra=extra)


def model_from_checkpoint(saved, path, device="cpu", dtype=None):
    """The model that a loaded :class:`~gpurnn.training.checkpoint.Checkpoint` describes,
    with its parameters; CheckpointError (naming ``path``) if they do not fit."""
    try:
        spec = dict(saved.config["model"])
        spec.setdefault("cell", "elman")           # checkpoints written before GRU/LSTM
        if dtype is not None:
            spec["dtype"] = dtype
        if spec["cell"] == _LINEAR:
            model = LinearRNN(dtype=spec["dtype"], device=device)
        else:
            model = make_model(**spec, device=device)
        for name, param in model.params.items():
            value = saved.params.get(name)
            if value is None or value.shape != param.shape:
                raise ValueError(f"parameter {name} is missing or has the wrong shape")
            setattr(model, name, value)
        unknown = sorted(set(saved.params) - set(model.params))
        if unknown:
            raise ValueError(f"parameters {', '.join(unknown)} are not the model's")
        stream = saved.config.get("dropout_stream")
        if stream is not None and hasattr(model, "dropout_stream"):
            model.dropout_stream.load_state_dict(stream)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a usable model checkpoint: its parameters do "
                              f"not make a gpurnn model ({type(error).__name__}: {error})") \
            from None
    return model


def load(path, *, device="cpu", dtype=None) -> Saved:
    """Read a file written by :func:`save` or by ``gpurnn train``.

    Args:
        device: where the model's parameters go ("cpu", "cuda", "cuda:N", "cpu-strict").
        dtype: cast the parameters (e.g. "float64" for checks); default as saved.
    Raises:
        CheckpointError (a ValueError): what ``gpurnn`` refuses too: a missing, damaged,
            foreign or hand-edited file (NaN, integer parameters, a negative step, another
            format version), or parameters that do not fit the saved model; the message
            names the file.
    """
    saved = load_checkpoint(path)
    model = model_from_checkpoint(saved, path, device, dtype)
    optimizer = None
    state = saved.optimizer_state
    if state:
        try:
            optimizer = make_optimizer(state["name"])
            optimizer.load_state_dict(state)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: its optimizer state is not usable "
                                  f"({type(error).__name__}: {error})") from None
    try:
        vocab = Vocabulary.from_list(saved.vocab) if saved.vocab else None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its vocabulary is not usable ({error})") from None
    return Saved(model, optimizer, vocab, saved.step, saved.config, saved.extra or {})
