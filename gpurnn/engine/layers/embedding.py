"""A token embedding E (input_size, embedding_size) under a model's first layer: token
x_t enters as the row E[x_t]. Shared by stacked and bidirectional layers."""
from __future__ import annotations

from ..arrays.backend import get_array_module, scatter_add

__all__ = ["embed", "embedding_grad"]


def embed(E, tokens):
    """The rows E[x_t] of token ids ``tokens`` (time, batch): (time, batch, embedding_size)."""
    if tokens.dtype.kind not in "iu":
        raise ValueError("inputs must be int token ids (batch, time) for a model with "
                         "an embedding; dense inputs have no embedding to look up")
    return get_array_module(E).take(E, tokens, axis=0)


def embedding_grad(E, tokens, dx, row_scale=None):
    """dL/dE from the gradient ``dx`` (time, batch, embedding_size) on the rows E[x_t]; with
    ``row_scale`` (input_size,) the rows entered as E[x_t] · row_scale[x_t] (embedding
    dropout's mask over the vocabulary)."""
    dE = get_array_module(E).zeros_like(E)
    scatter_add(dE, tokens.reshape(-1), dx.reshape(-1, E.shape[1]))   # dE[x_t] += dx_t
    if row_scale is not None:
        dE *= row_scale[:, None]
    return dE
