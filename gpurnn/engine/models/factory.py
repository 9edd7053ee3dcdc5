"""Models by cell name: ``make_model("gru", ...)`` and ``model_spec`` to rebuild one."""
from __future__ import annotations

from ..recurrences import normalized  # noqa: F401  (gives GRU and LSTM their layer_norm=True cells)
from ..recurrences.diagonal import LRU, MinGRU, MinLSTM
from ..layers.dropout import DROPOUT_KINDS
from ..recurrences.gated import GRU, LSTM
from ..recurrences.paragru import ParaGRU
from .model import ElmanRNN
from ..layers.stack import LayeredRNN, StackedElmanRNN
from ..arrays.validation import check_size

__all__ = ["CELL_TYPES", "make_model", "model_spec", "from_torch"]

CELL_TYPES = ("elman", "gru", "lstm", "mingru", "minlstm", "lru", "paragru")
# the diagonal cells (gpurnn.engine.recurrences.diagonal, .paragru): time by scan or loop
DIAGONAL = {"mingru": MinGRU, "minlstm": MinLSTM, "lru": LRU, "paragru": ParaGRU}


def make_model(cell, input_size, hidden_size, output_size, *, num_layers=1, **kw):
    """A model by cell name: ``"elman"`` | ``"gru"`` | ``"lstm"`` | ``"mingru"`` | ``"minlstm"``
    | ``"lru"`` | ``"paragru"``.

    ``kw`` are the constructors' keywords (``embedding_size``, ``bidirectional``, ``output``,
    ``bias``, ``dtype``, ``device``, ``seed``, the dropout rates of
    :mod:`gpurnn.engine.layers.dropout`; ``activation`` for Elman only, ``proj_size`` for LSTM only,
    ``layer_norm`` for GRU and LSTM, ``r_min``/``r_max`` for LRU, ``newton_tol``/``newton_max_iterations`` for
    ParaGRU). One unidirectional Elman layer without an embedding or
    dropout gives :class:`gpurnn.ElmanRNN`, the seeds' model. ``make_model(**model_spec(m))``
    rebuilds a model like ``m``.
    """
    if cell not in CELL_TYPES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELL_TYPES)}")
    if cell != "lstm" and kw.pop("proj_size", 0):
        raise ValueError(f"proj_size applies to the lstm cell only; use cell='lstm' or leave "
                         f"proj_size out for the {cell} cell")
    if cell in DIAGONAL:
        if kw.pop("layer_norm", False):
            raise ValueError(f"layer_norm=True applies to the gru and lstm cells only, not {cell}")
        if kw.pop("activation", "tanh") != "tanh":
            raise ValueError(f"activation applies to the elman cell only, not {cell}")
        return DIAGONAL[cell](input_size, hidden_size, output_size, num_layers=num_layers, **kw)
    if cell == "elman":
        if kw.pop("layer_norm", False):
            raise ValueError("layer_norm=True applies to the gru and lstm cells only, not elman")
        if check_size(num_layers, "num_layers") == 1 and kw.get("embedding_size") is None \
                and not kw.get("bidirectional", False) \
                and not any(kw.get(kind) for kind in DROPOUT_KINDS):
            for name in ("embedding_size", "bidirectional") + DROPOUT_KINDS:  # None, 0, False
                kw.pop(name, None)
            return ElmanRNN(input_size, hidden_size, output_size, **kw)
        return StackedElmanRNN(input_size, hidden_size, output_size, num_layers=num_layers, **kw)
    activation = kw.pop("activation", "tanh")
    if activation != "tanh":
        raise ValueError(f"activation={activation!r} applies to the elman cell only; "
                         f"the {cell} cell's activations are fixed (sigmoid gates, tanh)")
    model_class = GRU if cell == "gru" else LSTM
    return model_class(input_size, hidden_size, output_size, num_layers=num_layers, **kw)


def model_spec(model) -> dict:
    """``{"cell": ..., **model.config}``: JSON-able, and ``make_model(**spec)`` rebuilds it."""
    if isinstance(model, LayeredRNN):
        return {"cell": model.cell_type, **model.config}
    if isinstance(model, ElmanRNN):
        return {"cell": "elman", "num_layers": 1, **model.config}
    raise TypeError(f"model_spec takes a gpurnn Elman, GRU, LSTM, minGRU, minLSTM, LRU or ParaGRU model, "
                    f"got {type(model).__name__}")


def from_torch(rnn, linear, embedding=None, **kw):
    """The gpurnn model that matches torch modules, holding a copy of their weights:
    ``torch.nn.RNN`` → :class:`ElmanRNN` (one unidirectional layer, no embedding) or
    :class:`StackedElmanRNN`, ``torch.nn.GRU`` → :class:`GRU`, ``torch.nn.LSTM`` →
    :class:`LSTM`. ``kw`` as for ``Model.from_torch`` (``output``, ``dtype``, ``device``)."""
    kinds = {"RNN": ElmanRNN, "GRU": GRU, "LSTM": LSTM}
    model_class = kinds.get(type(rnn).__name__)
    if model_class is None or type(rnn).__module__.split(".")[0] != "torch":
        raise TypeError(f"rnn must be a torch.nn.RNN, GRU or LSTM, got {type(rnn).__name__}")
    if model_class is ElmanRNN and (rnn.num_layers != 1 or embedding is not None
                                    or rnn.bidirectional):
        model_class = StackedElmanRNN
    return model_class.from_torch(rnn, linear, embedding, **kw)
