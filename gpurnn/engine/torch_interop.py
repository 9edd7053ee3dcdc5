"""Weights between gpurnn's GRU/LSTM and PyTorch's ``nn.GRU`` / ``nn.LSTM``.

The cells use PyTorch's equations, gate order and parameter layout, so the conversion is a
copy: ``weight_ih_l{k}`` ↔ ``weight_ih`` (layer 0) or ``weight_ih_l{k}`` (layer k ≥ 1), and
likewise for ``weight_hh``, ``bias_ih``, ``bias_hh``; the output layer ``nn.Linear`` ↔ V, c;
``nn.Embedding.weight`` (vocabulary, embedding) ↔ E. torch is imported only when these
functions are called.
"""
from __future__ import annotations

from typing import NamedTuple

from .backend import to_host
from .stack import layer_name

__all__ = ["TorchModules", "from_torch", "to_torch"]

_GATED = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class TorchModules(NamedTuple):
    rnn: object        # torch.nn.GRU or torch.nn.LSTM, batch_first=True
    linear: object     # torch.nn.Linear: the output layer V h + c
    embedding: object  # torch.nn.Embedding, or None


def _torch():
    try:
        import torch
    except ImportError as error:
        raise RuntimeError("PyTorch is needed to convert to or from torch modules: "
                           "pip install torch") from error
    return torch


def from_torch(rnn, linear, embedding=None, *, output="softmax", dtype=None, device="cpu"):
    """A :class:`gpurnn.GRU` or :class:`gpurnn.LSTM` holding the weights of torch modules.

    Args:
        rnn: ``torch.nn.GRU`` or ``torch.nn.LSTM`` (unidirectional, no ``proj_size``).
        linear: ``torch.nn.Linear`` (hidden → outputs), the output layer.
        embedding: optional ``torch.nn.Embedding`` under the first layer (token inputs).
        output: the output nonlinearity g, as in the models (softmax by default).
        dtype: float32 or float64; by default the dtype of the torch weights.
    """
    torch = _torch()
    from .gated import GRU, LSTM

    kinds = {torch.nn.GRU: GRU, torch.nn.LSTM: LSTM}
    model_class = kinds.get(type(rnn))
    if model_class is None:
        raise TypeError(f"rnn must be a torch.nn.GRU or torch.nn.LSTM, got {type(rnn).__name__}")
    if rnn.bidirectional:
        raise ValueError("bidirectional torch RNNs have no gpurnn counterpart")
    if getattr(rnn, "proj_size", 0):
        raise ValueError("LSTMs with proj_size > 0 have no gpurnn counterpart")
    if not isinstance(linear, torch.nn.Linear) or linear.in_features != rnn.hidden_size:
        raise ValueError(f"linear must be a torch.nn.Linear with in_features = hidden_size "
                         f"({rnn.hidden_size}), got {linear!r}")
    if (linear.bias is not None) != bool(rnn.bias):
        raise ValueError("gpurnn models have biases everywhere or nowhere: rnn.bias and "
                         "linear.bias must agree")
    if embedding is not None:
        if not isinstance(embedding, torch.nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        if embedding.embedding_dim != rnn.input_size:
            raise ValueError(f"embedding_dim ({embedding.embedding_dim}) must equal the rnn's "
                             f"input_size ({rnn.input_size})")
    if dtype is None:
        dtype = "float64" if rnn.weight_hh_l0.dtype == torch.float64 else "float32"
    input_size = rnn.input_size if embedding is None else embedding.num_embeddings
    model = model_class(input_size, rnn.hidden_size, linear.out_features,
                        num_layers=rnn.num_layers,
                        embedding_size=None if embedding is None else embedding.embedding_dim,
                        output=output, bias=bool(rnn.bias), dtype=dtype, device=device)

    def host(tensor):
        return tensor.detach().cpu().double().numpy()

    for layer in range(rnn.num_layers):
        for name in _GATED:
            if layer_name(name, layer) in model.params:
                setattr(model, layer_name(name, layer), host(getattr(rnn, f"{name}_l{layer}")))
    model.V = host(linear.weight)
    if linear.bias is not None:
        model.c = host(linear.bias)
    if embedding is not None:
        model.E = host(embedding.weight)
    return model


def to_torch(model) -> TorchModules:
    """``(rnn, linear, embedding)`` torch modules (CPU, the model's dtype, ``batch_first``)
    holding a copy of the weights of a :class:`gpurnn.GRU` or :class:`gpurnn.LSTM`."""
    torch = _torch()
    kind = getattr(model, "cell_type", None)
    if kind not in ("gru", "lstm"):
        raise TypeError(f"to_torch takes a gpurnn GRU or LSTM, got {type(model).__name__}")
    dtype = torch.float64 if model.dtype.name == "float64" else torch.float32
    input_size = model.embedding_size or model.input_size
    rnn_class = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    rnn = rnn_class(input_size, model.hidden_size, num_layers=model.num_layers, bias=model.bias,
                    batch_first=True, dtype=dtype)
    linear = torch.nn.Linear(model.hidden_size, model.output_size, bias=model.bias, dtype=dtype)
    embedding = None
    if model.embedding_size is not None:
        embedding = torch.nn.Embedding(model.input_size, model.embedding_size, dtype=dtype)

    def tensor(name):
        return torch.as_tensor(to_host(model.params[name]), dtype=dtype)

    with torch.no_grad():
        for layer in range(model.num_layers):
            for name in _GATED:
                if layer_name(name, layer) in model.params:
                    getattr(rnn, f"{name}_l{layer}").copy_(tensor(layer_name(name, layer)))
        linear.weight.copy_(tensor("V"))
        if model.bias:
            linear.bias.copy_(tensor("c"))
        if embedding is not None:
            embedding.weight.copy_(tensor("E"))
    return TorchModules(rnn, linear, embedding)
