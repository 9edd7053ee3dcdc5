"""Weights between gpurnn's models and PyTorch's ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``.

Every model with a torch counterpart takes :class:`TorchInterop` as a base and so has
``Model.from_torch(rnn, linear, embedding=None)`` and ``model.to_torch()``.

* GRU and LSTM use PyTorch's equations, gate order and layout, so the conversion is a copy:
  ``weight_ih_l{k}`` ↔ ``weight_ih`` (layer 0) or ``weight_ih_l{k}`` (layer k ≥ 1), and
  likewise ``weight_hh``, ``bias_ih``, ``bias_hh`` and, for an LSTM with ``proj_size``,
  ``weight_hr``.
* Elman ↔ ``nn.RNN`` (``nonlinearity`` tanh or relu): ``weight_ih`` (U), ``weight_hh`` (W)
  likewise. PyTorch adds two biases where the seeds have one, h_t = f(U x_t + W h_{t−1} + b),
  so ``from_torch`` takes gpurnn's bias_ih (b) = bias_ih + bias_hh and ``to_torch`` writes
  bias_ih = b and bias_hh = 0: the same function, and the round trip gpurnn → torch →
  gpurnn is exact.
* ``bidirectional=True``: the reverse direction's ``weight_ih_l{k}_reverse``, … ↔
  ``weight_ih_reverse`` (layer 0) or ``weight_ih_l{k}_reverse``, likewise (Elman's biases
  folded the same way); the output layer then reads 2·hidden features.
* The output layer ``nn.Linear`` ↔ V, c; ``nn.Embedding.weight`` (vocabulary, embedding)
  ↔ E. A model without an embedding takes token ids as one-hot columns of ``weight_ih``:
  torch sees the same model with one-hot float inputs.

torch is imported only when these are called; it is never a dependency of gpurnn.
"""
from __future__ import annotations

from typing import NamedTuple

from ..arrays.backend import to_host
from .parameters import REVERSE, layer_name

__all__ = ["TorchInterop", "TorchModules"]

_TORCH_RNN = {"elman": "RNN", "gru": "GRU", "lstm": "LSTM"}
# The torch parameters copied as they are, per cell (gpurnn uses PyTorch's names); Elman's
# two biases are handled apart.
_NAMES = {"elman": ("weight_ih", "weight_hh"),
          "gru": ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
_NAMES["lstm"] = _NAMES["gru"] + ("weight_hr",)  # (present with proj_size only)


class TorchModules(NamedTuple):
    rnn: object        # torch.nn.RNN, GRU or LSTM, batch_first=True
    linear: object     # torch.nn.Linear: the output layer V h + c
    embedding: object  # torch.nn.Embedding, or None


def _torch():
    try:
        import torch
    except ImportError as error:
        raise RuntimeError("PyTorch is needed to convert to or from torch modules: "
                           "pip install torch") from error
    return torch


def _suffixes(bidirectional):
    """The torch (and gpurnn) name suffixes of a layer's directions."""
    return ("", REVERSE) if bidirectional else ("",)


def _check_modules(torch, rnn, linear, embedding):
    proj_size = getattr(rnn, "proj_size", 0)                         # an LSTM's h is P wide
    directions = len(_suffixes(rnn.bidirectional))
    width = (proj_size or rnn.hidden_size) * directions
    if not isinstance(linear, torch.nn.Linear) or linear.in_features != width:
        label = "proj_size" if proj_size else "hidden_size"
        what = f"2 · {label}" if rnn.bidirectional else label
        raise ValueError(f"linear must be a torch.nn.Linear with in_features = {what} "
                         f"({width}), got {linear!r}")
    if (linear.bias is not None) != bool(rnn.bias):
        raise ValueError("gpurnn models have biases everywhere or nowhere: rnn.bias and "
                         "linear.bias must agree")
    if embedding is not None:
        if not isinstance(embedding, torch.nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        if embedding.embedding_dim != rnn.input_size:
            raise ValueError(f"embedding_dim ({embedding.embedding_dim}) must equal the rnn's "
                             f"input_size ({rnn.input_size})")


class TorchInterop:
    """``from_torch`` / ``to_torch`` for a model class with ``cell_type`` elman, gru or lstm.

    ``single_layer`` classes (:class:`gpurnn.ElmanRNN`) take neither ``num_layers`` nor
    ``embedding_size``; stacked classes take both.
    """

    cell_type: str
    single_layer = False

    @classmethod
    def from_torch(cls, rnn, linear, embedding=None, *, output="softmax", dtype=None,
                   device="cpu"):
        """A model holding a copy of the weights of torch modules.

        Args:
            rnn: ``torch.nn.RNN`` (Elman models), ``torch.nn.GRU`` or ``torch.nn.LSTM``:
                with or without ``proj_size`` (an LSTM's); ``batch_first`` does not matter.
            linear: ``torch.nn.Linear`` (h's width, times 2 when bidirectional → outputs),
                the output layer.
            embedding: optional ``torch.nn.Embedding`` under the first layer (token inputs).
            output: the output nonlinearity g, as in the models (softmax by default).
            dtype: float32 or float64; by default the dtype of the torch weights.
        """
        torch = _torch()
        expected = _TORCH_RNN[cls.cell_type]
        if type(rnn) is not getattr(torch.nn, expected):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{expected}, "
                            f"got {type(rnn).__name__}")
        _check_modules(torch, rnn, linear, embedding)
        options = dict(output=output, bias=bool(rnn.bias), device=device,
                       dtype=dtype or ("float64" if rnn.weight_hh_l0.dtype == torch.float64
                                       else "float32"))
        if cls.cell_type == "elman":
            options["activation"] = rnn.nonlinearity
        if getattr(rnn, "proj_size", 0):                             # (torch: LSTMs only)
            options["proj_size"] = rnn.proj_size
        if cls.single_layer:
            if rnn.num_layers != 1 or embedding is not None or rnn.bidirectional:
                raise ValueError(f"{cls.__name__} has one unidirectional layer and no "
                                 f"embedding; for num_layers={rnn.num_layers}"
                                 f"{' with an embedding' if embedding is not None else ''}"
                                 f"{', bidirectional' if rnn.bidirectional else ''} "
                                 f"use gpurnn.StackedElmanRNN.from_torch")
        else:
            options.update(num_layers=rnn.num_layers, bidirectional=rnn.bidirectional,
                           embedding_size=None if embedding is None else embedding.embedding_dim)
        input_size = rnn.input_size if embedding is None else embedding.num_embeddings
        model = cls(input_size, rnn.hidden_size, linear.out_features, **options)

        def host(tensor):
            return tensor.detach().cpu().double().numpy()

        for layer in range(rnn.num_layers):
            for s in _suffixes(rnn.bidirectional):
                for name in _NAMES[cls.cell_type]:
                    if hasattr(rnn, f"{name}_l{layer}{s}"):
                        setattr(model, layer_name(name, layer) + s,
                                host(getattr(rnn, f"{name}_l{layer}{s}")))
                if cls.cell_type == "elman" and rnn.bias:
                    setattr(model, layer_name("bias_ih", layer) + s,
                            host(getattr(rnn, f"bias_ih_l{layer}{s}"))
                            + host(getattr(rnn, f"bias_hh_l{layer}{s}")))
        model.V = host(linear.weight)
        if linear.bias is not None:
            model.c = host(linear.bias)
        if embedding is not None:
            model.E = host(embedding.weight)
        return model

    def to_torch(self) -> TorchModules:
        """``(rnn, linear, embedding)`` torch modules (CPU, the model's dtype,
        ``batch_first``) holding a copy of this model's weights; ``embedding`` is None
        for a model without one."""
        torch = _torch()
        kind = self.cell_type
        dtype = torch.float64 if self.dtype.name == "float64" else torch.float32
        embedding_size = getattr(self, "embedding_size", None)
        num_layers = getattr(self, "num_layers", 1)
        suffixes = _suffixes(getattr(self, "bidirectional", False))
        options = {"nonlinearity": self.activation} if kind == "elman" else {}
        if getattr(self, "proj_size", 0):
            options["proj_size"] = self.proj_size
        if kind == "elman" and self.activation not in ("tanh", "relu"):
            raise ValueError(f"torch.nn.RNN has tanh and relu only; this model's activation "
                             f"is {self.activation!r}")
        rnn = getattr(torch.nn, _TORCH_RNN[kind])(
            embedding_size or self.input_size, self.hidden_size, num_layers=num_layers,
            bias=self.bias, batch_first=True, dtype=dtype, bidirectional=len(suffixes) == 2,
            **options)
        linear = torch.nn.Linear(self.params["V"].shape[1], self.output_size, bias=self.bias,
                                 dtype=dtype)                # in: the width of h, per direction
        embedding = None
        if embedding_size is not None:
            embedding = torch.nn.Embedding(self.input_size, embedding_size, dtype=dtype)

        def tensor(name):
            return torch.as_tensor(to_host(self.params[name]), dtype=dtype)

        with torch.no_grad():
            for layer in range(num_layers):
                for s in suffixes:
                    for name in _NAMES[kind]:
                        if layer_name(name, layer) + s in self.params:
                            getattr(rnn, f"{name}_l{layer}{s}").copy_(
                                tensor(layer_name(name, layer) + s))
                    if kind == "elman" and self.bias:
                        getattr(rnn, f"bias_ih_l{layer}{s}").copy_(
                            tensor(layer_name("bias_ih", layer) + s))
                        getattr(rnn, f"bias_hh_l{layer}{s}").zero_()
            linear.weight.copy_(tensor("V"))
            if self.bias:
                linear.bias.copy_(tensor("c"))
            if embedding is not None:
                embedding.weight.copy_(tensor("E"))
        return TorchModules(rnn, linear, embedding)
