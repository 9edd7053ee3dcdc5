"""Dropout on the engine: the kinds, their rates, and the masks of one call.

Every kind is *inverted* dropout, as PyTorch's: a kept element is scaled by 1/(1 − p), so a
model in evaluation mode uses its weights and states as they are. The kinds, each with its
own rate p in [0, 1) (0, the default, is no dropout and changes nothing):

=====================  ==================================================================
``dropout``            between stacked layers, on layer l−1's h_t where layer l reads it,
                       a fresh mask for every step: PyTorch's ``dropout`` of ``nn.LSTM``
                       (Zaremba, Sutskever and Vinyals 2014).
``dropout_input``      *locked* (variational): one mask per sequence, the same at every
                       step, on layer 0's input (the embedding rows or the dense features)
                       (Gal and Ghahramani 2016; AWD-LSTM's ``dropouti``).
``dropout_output``     locked, on the top layer's h_t where the output layer reads it
                       (AWD-LSTM's ``dropout`` on the last layer's output).
``dropout_state``      locked, on h_{t−1} where it feeds ``weight_hh``, in every layer, one
                       mask per layer (Gal and Ghahramani's recurrent mask); the GRU's
                       z ⊙ h_{t−1} and the LSTM's cell path keep the whole state.
``weight_drop``        DropConnect on ``weight_hh`` of every layer, one mask per call (per
                       batch) (Wan et al. 2013; AWD-LSTM's weight-drop, Merity, Keskar and
                       Socher 2017): the masked copy is formed once, in the weights' own
                       layout, and the gradient is masked after the sweep.
``dropout_embedding``  whole rows of the embedding E, one mask per call over the vocabulary:
                       a dropped token type is zero wherever it occurs in the batch
                       (Gal and Ghahramani 2016; AWD-LSTM's ``dropoute``).
=====================  ==================================================================

The stream. Call n of a model (each ``forward``, ``loss`` or ``loss_and_grads`` in training
mode) draws its masks from a generator seeded by (seed, stream, n): ``seed`` is the model's
initialisation seed, ``stream`` 0 unless set (the trainer sets its MPI rank, so each rank has
its own masks), n the count of draws so far. So the masks depend on nothing but that count,
which a checkpoint stores: a run stopped and resumed draws the same masks. They are drawn
where the arrays live: NumPy's generator on the host, CuPy's on a GPU (no transfer), so a
seed gives other masks on the two; a recomputed block reuses the masks of its call.
"""
from __future__ import annotations

import contextlib
import dataclasses
import numbers

import numpy

from ..arrays.backend import get_array_module, keyed_uniform

__all__ = ["DROPOUT_KINDS", "DropoutRates", "Masks", "DropoutStream", "dropped_inputs",
           "dropped_input_grads"]

DROPOUT_KINDS = ("dropout", "dropout_input", "dropout_output", "dropout_state", "weight_drop",
                 "dropout_embedding")


@dataclasses.dataclass(frozen=True)
class DropoutRates:
    """The rate of every kind of dropout (see the module docstring), each in [0, 1)."""

    dropout: float = 0.0
    dropout_input: float = 0.0
    dropout_output: float = 0.0
    dropout_state: float = 0.0
    weight_drop: float = 0.0
    dropout_embedding: float = 0.0

    def __post_init__(self):
        for kind in DROPOUT_KINDS:
            rate = getattr(self, kind)
            if isinstance(rate, bool) or not isinstance(rate, numbers.Real) \
                    or not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"{kind} must be a rate in [0, 1), got {rate!r}")
            object.__setattr__(self, kind, float(rate))

    @classmethod
    def from_options(cls, owner: str, options: dict) -> "DropoutRates":
        """The rates from a constructor's keyword arguments; others are refused as Python
        refuses an unknown keyword."""
        unknown = sorted(set(options) - set(DROPOUT_KINDS))
        if unknown:
            raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
        return cls(**options)

    @property
    def active(self) -> bool:
        return any(getattr(self, kind) > 0 for kind in DROPOUT_KINDS)

    def nonzero(self) -> dict:
        """The rates that are not 0, by name (what a model's ``config`` records)."""
        return {kind: getattr(self, kind) for kind in DROPOUT_KINDS if getattr(self, kind) > 0}


class Masks:
    """The masks of one call, in the model's dtype on its device, holding 0 or 1/(1 − p):

    ``embedding`` (vocabulary,), ``input`` (batch, input features), ``between`` a list of
    (time, batch, directions · hidden) for layers 1 … L−1 (the input each reads), ``state``
    a list of (batch, hidden) per layer and direction (layer l's direction d at
    l · directions + d), ``weight`` a dict {parameter name: mask of its shape}, ``output``
    (batch, directions · hidden); None where the rate is 0. ``hidden`` is the width of h.
    """

    __slots__ = ("embedding", "input", "between", "state", "weight", "output")

    def __init__(self, rates: DropoutRates, draw, dtype, *, vocabulary, batch, steps,
                 input_width, hidden, layers, recurrent, directions=1):
        """``draw(shape)`` gives uniform numbers; ``recurrent`` {name: shape} of the
        ``weight_hh`` matrices, in order. Masks are drawn in a fixed order, each only at a
        rate above 0."""
        def mask(rate, shape):
            if rate == 0:
                return None
            keep = draw(shape) >= rate
            xp = get_array_module(keep)
            return xp.where(keep, xp.asarray(1.0 / (1.0 - rate), dtype=dtype),
                            xp.asarray(0.0, dtype=dtype))

        self.embedding = mask(rates.dropout_embedding, (vocabulary,)) if vocabulary else None
        self.input = mask(rates.dropout_input, (batch, input_width))
        width = directions * hidden                              # what a layer above reads
        self.between = ([mask(rates.dropout, (steps, batch, width)) for _ in range(1, layers)]
                        if rates.dropout > 0 else None)
        self.state = ([mask(rates.dropout_state, (batch, hidden))
                       for _ in range(layers * directions)] if rates.dropout_state > 0 else None)
        self.weight = ({name: mask(rates.weight_drop, shape) for name, shape in recurrent.items()}
                       if rates.weight_drop > 0 else None)
        self.output = mask(rates.dropout_output, (batch, width))

    def dropped_weights(self, params: dict) -> dict:
        """``params`` with each ``weight_hh`` replaced by its masked copy (weight-drop): one
        product per matrix in its own layout, so every path of the cells (the fused kernels
        included) runs on it unchanged."""
        if self.weight is None:
            return params
        dropped = dict(params)
        for name, mask in self.weight.items():
            dropped[name] = params[name] * mask
        return dropped

    def mask_weight_grads(self, grads: dict) -> None:
        """d(W ⊙ M)/dW = M: the gradients of the masked copies, made those of the weights."""
        for name, mask in (self.weight or {}).items():
            grads[name] *= mask


def dropped_inputs(inputs, masks, tokens=None):
    """Layer 0's input (time, batch, features) as the first layer reads it: the embedding
    rows of dropped token types zeroed (``tokens`` (time, batch), the ids they were looked
    up with) and dropout_input's locked mask applied; as it is without masks."""
    if masks is None:
        return inputs
    if masks.embedding is not None:
        inputs = inputs * masks.embedding[tokens][..., None]      # whole token types dropped
    if masks.input is not None:
        if inputs.dtype.kind in "iu":
            raise ValueError("dropout_input needs an embedding (embedding_size=...) or dense "
                             "inputs: token ids select columns of weight_ih")
        inputs = inputs * masks.input                             # one mask for every step
    return inputs


def dropped_input_grads(dx, masks):
    """The gradient on layer 0's input rows before the masks, from the gradient ``dx`` on
    what layer 0 read (the embedding's rows then take ``masks.embedding``, see
    :func:`gpurnn.engine.layers.embedding.embedding_grad`)."""
    if masks is None or masks.input is None:
        return dx
    return dx * masks.input


class DropoutStream:
    """Which masks a model's next call draws: the key (seed, stream, draws) (see the module
    docstring). ``draws`` is what a checkpoint stores to resume the same masks."""

    def __init__(self, seed):
        # a model built with seed=None still gets one stream, fixed at construction
        self.seed = (int(seed) if isinstance(seed, numbers.Integral)
                     else int(numpy.random.SeedSequence().generate_state(1)[0]))
        self.stream = 0
        self.draws = 0
        self._fixed = False

    def next_draw(self, device):
        """The uniform draw of the next call on ``device`` (a
        :class:`gpurnn.engine.arrays.backend.Device`); ``draws`` advances unless fixed."""
        key = (self.seed, self.stream, self.draws)
        if not self._fixed:
            self.draws += 1
        return keyed_uniform(key, device)

    @contextlib.contextmanager
    def fixed(self):
        """Every call inside draws the same masks (those of the next draw); the draw is
        counted once on leaving. For gradient checks, which compare several calls."""
        previous, self._fixed = self._fixed, True
        try:
            yield
        finally:
            self._fixed = previous
            if not previous:
                self.draws += 1

    def state_dict(self) -> dict:
        return {"seed": self.seed, "stream": self.stream, "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream ``state`` describes (what :meth:`state_dict` gave)."""
        for name in ("seed", "stream", "draws"):
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"the dropout stream's {name} must be an int >= 0, "
                                 f"got {value!r}")
        self.seed, self.stream, self.draws = (int(state[name]) for name in
                                              ("seed", "stream", "draws"))
