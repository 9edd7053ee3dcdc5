"""Bidirectional layers (PyTorch's ``bidirectional=True``) on the unchanged cells.

Each layer runs one cell forward in time and a second cell, with parameters of its own,
over every sequence reversed. Layer l ≥ 1 reads the concatenation [h_fwd, h_bwd] (2H) of
the layer below at the same step, and the output layer reads the top layer's (V is
(output, 2H)). The reverse cell's parameters carry PyTorch's suffix after the layer's
name: ``weight_ih_reverse``, ``weight_hh_l1_reverse``, … (torch's ``weight_hh_l1_reverse``).

Ragged batches: with a right-padded mask, the reverse direction of sequence b starts at its
own last real step L_b − 1, as PyTorch's packed sequences do. The reverse cell runs on a
time-major copy in which each sequence's first L_b steps are reversed and its padding left
where it is (an index gather, which is its own inverse). Padding thus comes after every
real step in both directions' time: it never reaches a real step, and no gradient reaches
it. Each direction's final state is its state at step L_b − 1 of its own time (for the
reverse direction: after reaching step 0).

Execution is layer by layer: both directions of a layer are whole-sequence runs of their
cells (``project_inputs``, ``forward``); the backward goes top layer down, each direction
swept back by :func:`gpurnn.engine.sweeps.bptt.sweep` on the cell's ``backward_stepper``, then the
cell's ``param_grads``, and its ``input_grads`` into the layer below.

What a bidirectional model refuses, and why:

* ``h0``: the reverse direction starts from each sequence's end, so there is no state to
  carry from one chunk of a stream to the next; it reads whole sequences (sentences).
* ``truncate=k``: truncation lets the error of output t reach k steps back in time, but
  the reverse direction's error flows forward; the two do not make one exact gradient.
* ``memory_budget`` / ``checkpoint_every``: the engine recomputes blocks of one forward
  recurrence from checkpoints of its state; the reverse direction has no such
  checkpoints, so both directions' caches of every layer are kept whole.
"""
from __future__ import annotations

import functools

from ..sweeps import bptt
from ..arrays.backend import get_array_module
from .embedding import embed, embedding_grad
from ..models.losses import output_forward, output_loss, output_loss_and_grads
from .dropout import dropped_input_grads, dropped_inputs
from ..arrays.precision import mixed_policy, tf32_mode
from ..models.model import (LossAndGrads, RecurrentModel, _output_dropped, _time_major,
                            _unscaled)
from ..models.parameters import direction_name, layer_name
from ..arrays.validation import as_inputs, as_mask, as_targets, check_reduction
from ..arrays.workspace import Workspace

__all__ = ["reversal", "reverse", "layer_input", "layer_input_grads", "sequence_lengths",
           "BidirectionalStack", "BidirectionalModel"]


def reversal(lengths, steps):
    """The (time, batch) gather that reverses each sequence's first L_b steps: row t of
    column b reads step L_b − 1 − t for t < L_b, step t (padding stays) after."""
    xp = get_array_module(lengths)
    t = xp.arange(steps)[:, None]
    return xp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def reverse(array, index):
    """``array`` (time, batch, ...) gathered by ``index`` (:func:`reversal`): a new array
    with each sequence's real steps in reverse order. Applied twice it gives ``array``."""
    xp = get_array_module(array)
    return array[index, xp.arange(array.shape[1])[None, :]]


def layer_input(layer: int, x, masks, tokens=None):
    """What layer ``layer`` reads, time-major, from ``x``: the model's inputs or embedding
    rows (layer 0, ``tokens`` their ids) or the layer below's [h_fwd, h_bwd], through the
    call's dropout ``masks`` (input and embedding dropout, or the dropout between layers)."""
    if layer == 0:
        return dropped_inputs(x, masks, tokens)
    if masks is None or masks.between is None:
        return x
    return x * masks.between[layer - 1]


def layer_input_grads(layer: int, dx, masks):
    """The gradient on what :func:`layer_input` was given, from ``dx`` on what it gave."""
    if layer == 0:
        return dropped_input_grads(dx, masks)
    if masks is None or masks.between is None:
        return dx
    return dx * masks.between[layer - 1]


def sequence_lengths(weights, batch, steps, xp):
    """(batch,) ints: each sequence ends after its last step of non-zero weight (a
    right-padded mask: its number of ones); every sequence is whole without weights."""
    if weights is None:
        return xp.full((batch,), steps, dtype=xp.int64)
    positions = xp.arange(1, steps + 1, dtype=xp.int64)
    return ((weights > 0) * positions).max(axis=1)


class _Run:
    """One direction of one layer after its forward: what its backward needs."""

    __slots__ = ("inputs", "xin", "states")

    def __init__(self, inputs, xin, states):
        self.inputs, self.xin, self.states = inputs, xin, states


class _Pass:
    """A forward through all layers: the runs (per layer, per direction), the reversal
    gather, the lengths, the initial state and the token ids (for an embedding)."""

    def __init__(self, runs, index, lengths, h0, tokens):
        self.runs, self.index, self.lengths, self.h0, self.tokens = (runs, index, lengths,
                                                                      h0, tokens)
        self.params, self.masks = None, None     # the call's (weight-dropped) parameters


class BidirectionalStack:
    """``num_layers`` bidirectional layers, optionally over an embedding ``E``.

    Args:
        cells: per layer (bottom first), the pair (forward cell, reverse cell); separate
            objects, since a cell keeps its scratch buffers in its own workspace.
        names: the cells' parameter names (layer 0's, forward direction).
        hidden_size: H of every layer and direction; h is the first ``hidden_width(H)``
            entries of a state (H, or an LSTM's proj_size).
        embedding: True to look token ids up in ``params["E"]``.
    """

    def __init__(self, cells, names, hidden_size: int, embedding: bool = False):
        self.cells = [tuple(pair) for pair in cells]
        self.num_layers = len(self.cells)
        self.names = tuple(names)
        self.hidden = self.cells[0][0].hidden_width(hidden_size)    # h: H, or proj_size
        self.embedding = bool(embedding)
        self.state_width = self.cells[0][0].state_size(hidden_size)
        self.workspace = Workspace()                                 # the output layer's
        self.masks = None

    def set_masks(self, masks) -> None:
        """The dropout masks of the next calls (None for none): the state masks go to the
        cells, layer l's direction d taking ``masks.state[2 l + d]``."""
        self.masks = masks
        for layer, pair in enumerate(self.cells):
            for direction, cell in enumerate(pair):
                cell.state_mask = (None if masks is None or masks.state is None
                                   else masks.state[2 * layer + direction])

    @property
    def plan(self):
        return self.cells[0][0].plan

    @plan.setter
    def plan(self, plan):  # every cell runs under the model's plan
        for pair in self.cells:
            for cell in pair:
                cell.plan = plan

    def layer_params(self, params, layer, direction):
        names = {n: direction_name(layer_name(n, layer), direction) for n in self.names}
        return {n: params[key] for n, key in names.items() if key in params}

    def forward(self, params, inputs, lengths):
        """All layers on time-major ``inputs`` (time, batch[, features]) of sequences of
        ``lengths`` (batch,): the pass (for :meth:`backward`) and the top layer's
        [h_fwd, h_bwd] (time, batch, 2H)."""
        steps, batch = inputs.shape[:2]
        index = reversal(lengths, steps)
        # the weights' module: under a 16-bit precision on NumPy it keeps the states and
        # the layers' concatenations 16-bit arrays of the emulation (numpy's would not)
        xp = get_array_module(params["V"])
        h0 = xp.zeros((batch, self.state_width), dtype=params["V"].dtype)
        x = embed(params["E"], inputs) if self.embedding else inputs
        runs = []
        for layer, pair in enumerate(self.cells):
            x = layer_input(layer, x, self.masks, inputs)
            both = []
            for direction, cell in enumerate(pair):
                p = self.layer_params(params, layer, direction)
                seen = reverse(x, index) if direction else x
                xin = cell.project_inputs(p, seen)
                both.append(_Run(seen, xin, cell.forward(p, xin, h0, steps)))
            runs.append(both)
            h_fwd, h_rev = (run.states[..., :self.hidden] for run in both)
            x = xp.concatenate([h_fwd, reverse(h_rev, index)], axis=-1)
        return _Pass(runs, index, lengths, h0, inputs), x

    def backward(self, params, state, dhidden):
        """Parameter gradients from dL/d[h_fwd, h_bwd] of the top layer (time, batch, 2H)."""
        H = self.hidden
        grads, d = {}, dhidden
        for layer in reversed(range(self.num_layers)):
            below = None                                 # dL/d(this layer's input)
            for direction, (cell, run) in enumerate(zip(self.cells[layer], state.runs[layer])):
                dh = reverse(d[..., H:], state.index) if direction else d[..., :H]
                p = self.layer_params(params, layer, direction)
                back = cell.backward_stepper(p, run.xin, state.h0, run.states)
                deltas = bptt.sweep(back, self._state_grads(dh, run.states), None,
                                    cell.workspace)
                for name, value in cell.param_grads(p, run.inputs, run.xin, state.h0,
                                                    run.states, deltas).items():
                    grads[direction_name(layer_name(name, layer), direction)] = value
                if layer > 0 or self.embedding:
                    dx = cell.input_grads(p, run.xin, deltas)
                    dx = reverse(dx, state.index) if direction else dx
                    below = dx if below is None else below + dx
            d = None if below is None else layer_input_grads(layer, below, self.masks)
        if self.embedding:
            grads["E"] = embedding_grad(params["E"], state.tokens, d,
                                        None if self.masks is None else self.masks.embedding)
        return grads

    def _state_grads(self, dh, states):
        """dL/dS from dL/dh: zeros on the rest of a state wider than h (an LSTM's c)."""
        if states.shape[-1] == self.hidden:
            return dh
        out = get_array_module(states).zeros_like(states)
        out[..., :self.hidden] = dh
        return out

    def final_states(self, state):
        """(layers·2, batch, S) in PyTorch's order (layer by layer, forward then reverse):
        each direction's state at step L_b − 1 of its own time, zeros for an empty one."""
        xp = get_array_module(state.lengths)
        lengths = state.lengths
        last, columns = xp.maximum(lengths - 1, 0), xp.arange(lengths.shape[0])
        some = (lengths > 0)[:, None]
        return xp.stack([xp.where(some, run.states[last, columns], 0)
                         for both in state.runs for run in both])


def _refuse_chunks(h0):
    if h0 is not None:
        raise ValueError("a bidirectional model cannot carry a state across chunks (its "
                         "reverse direction starts at each sequence's end): h0 is refused; "
                         "give it whole sequences (sentence mode)")


def _refuse_plan(plan):
    if plan.memory_budget is not None or plan.checkpoint_every is not None:
        raise ValueError("memory_budget and checkpoint_every are refused for a bidirectional "
                         "model: blocks are recomputed from checkpoints of a forward "
                         "recurrence, which the reverse direction does not have; it keeps "
                         "every layer's cache whole")


class BidirectionalModel:
    """What a :class:`gpurnn.engine.layers.stack.LayeredRNN` built with ``bidirectional=True``
    (whose ``cell`` is a :class:`BidirectionalStack`) does in place of the one-recurrence
    engine; with ``bidirectional=False`` every method here hands over to the next class
    unchanged.

    ``forward`` takes ``mask`` (the outputs of a bidirectional model at real steps depend
    on where each sequence ends); ``loss`` takes each sequence as ending after its last
    step of non-zero weight, so that ``loss(weights=mask)`` is the loss of
    ``loss_and_grads(mask=mask)``. The final state is in PyTorch's layout (layers·2,
    batch, hidden), a pair (h, c) of those for an LSTM.
    """

    bidirectional = False

    # The unidirectional methods' docstrings and signatures, for help() and the API pages.
    @functools.wraps(RecurrentModel.forward)
    def forward(self, inputs, *args, **options):
        if not self.bidirectional:
            return super().forward(inputs, *args, **options)
        return self._both_forward(inputs, *args, **options)

    @functools.wraps(RecurrentModel.loss)
    def loss(self, inputs, targets, **options):
        if not self.bidirectional:
            return super().loss(inputs, targets, **options)
        return self._both_loss(inputs, targets, **options)

    @functools.wraps(RecurrentModel.loss_and_grads)
    def loss_and_grads(self, inputs, targets, **options):
        if not self.bidirectional:
            return super().loss_and_grads(inputs, targets, **options)
        return self._both_loss_and_grads(inputs, targets, **options)

    @functools.wraps(RecurrentModel.schedule)
    def schedule(self, inputs, targets, **options):
        if not self.bidirectional:
            return super().schedule(inputs, targets, **options)
        _refuse_plan(self.plan.replace(memory_budget=options.get("memory_budget"),
                                       checkpoint_every=options.get("checkpoint_every")))
        raise ValueError("a bidirectional model has no schedule: it keeps every layer's "
                         "cache whole")

    def _run(self, inputs, h0):
        # One forward recurrence over all layers, what the diagnostics read: a
        # bidirectional model has no such thing, so they refuse it here in one line.
        if not self.bidirectional:
            return super()._run(inputs, h0)
        raise ValueError("this reads the model as one forward recurrence, which a "
                         "bidirectional model is not (its layers also run in reverse)")

    # --- the bidirectional path ----------------------------------------------------------
    def _checked_inputs(self, inputs, h0, plan):
        """The inputs (batch, time[, features]), after the refusals."""
        _refuse_chunks(h0)
        _refuse_plan(plan)
        return as_inputs(inputs, self.input_size, self.dtype, self.device)

    def _pass(self, x, weights, plan, mixed=None):
        """The forward pass over ``x`` (batch-major), each sequence ending after its last
        step of non-zero ``weights``: (pass, top [h_fwd, h_bwd] (time, batch, 2H)). With a
        :class:`gpurnn.engine.arrays.precision.MixedPolicy` ``mixed`` the layers run on a
        16-bit copy of the (weight-dropped) parameters and inputs, as a one-recurrence
        step does (:meth:`gpurnn.engine.models.model.RecurrentModel.loss_and_grads`)."""
        batch, steps = x.shape[:2]
        params, masks = self._call_params(x)
        if mixed is not None:
            params, x = mixed.weights(params), mixed.store(x)
        self.cell.plan = plan
        state, hidden = self.cell.forward(params, _time_major(x),
                                          sequence_lengths(weights, batch, steps,
                                                           get_array_module(self.V)))
        state.params, state.masks = params, masks
        return state, hidden

    def _targets(self, targets, x):
        return _time_major(as_targets(targets, self.output, self.output_size, x.shape[0],
                                      x.shape[1], self.dtype, self.device))

    def _final(self, state, mixed=None):
        """The final states as ``return_state`` / ``last_hidden`` give them (in the model's
        dtype after a 16-bit step)."""
        states = self.cell.final_states(state)
        if mixed is not None:
            states = mixed.wide(states, self.dtype)
        if not self._pair_state:
            return states
        xp = get_array_module(states)
        R = self._hidden_width                                       # h's width: H or P
        return tuple(xp.ascontiguousarray(states[..., part])
                     for part in (slice(0, R), slice(R, None)))

    def _both_forward(self, inputs, h0=None, *, logits=False, return_state=False, mask=None):
        x = self._checked_inputs(inputs, h0, self.plan)
        m = as_mask(mask, x.shape[0], x.shape[1], self.dtype, self.device)
        state, hidden = self._pass(x, m, self.plan)
        y = output_forward(self.output, self._params["V"], self._params.get("c"),
                           _output_dropped(hidden, state.masks), logits=logits)
        if not return_state:
            return _time_major(y), _time_major(hidden)
        return _time_major(y), _time_major(hidden), self._final(state)

    def _both_loss(self, inputs, targets, *, weights=None, h0=None, reduction="mean",
                   return_state=False):
        reduction = check_reduction(reduction)
        x = self._checked_inputs(inputs, h0, self.plan)
        w = self._weights(weights, x.shape[0], x.shape[1])
        state, hidden = self._pass(x, w, self.plan)
        loss = output_loss(self.output, self._params["V"], self._params.get("c"),
                           _output_dropped(hidden, state.masks), self._targets(targets, x),
                           None if w is None else _time_major(w))
        if reduction == "mean":
            loss /= (float(w.sum()) if w is not None else x.shape[0] * x.shape[1]) or 1.0
        return (loss, self._final(state)) if return_state else loss

    def _both_loss_and_grads(self, inputs, targets, *, truncate=None, mask=None, h0=None,
                             reduction="mean", memory_budget=None, checkpoint_every=None,
                             precision=None, loss_scale=1.0) -> LossAndGrads:
        if truncate is not None:
            raise ValueError("truncate=k is refused for a bidirectional model: truncation "
                             "cuts the error k steps back in time, but the reverse "
                             "direction's error flows forward; it trains with full BPTT")
        reduction = check_reduction(reduction)
        plan = self.plan.replace(memory_budget=memory_budget, checkpoint_every=checkpoint_every,
                                 precision=precision)
        x = self._checked_inputs(inputs, h0, plan)
        m = as_mask(mask, x.shape[0], x.shape[1], self.dtype, self.device)
        scale = 1.0
        if reduction == "mean":
            counted = float(m.sum()) if m is not None else float(x.shape[0] * x.shape[1])
            scale = 1.0 / max(1.0, counted)
        loss_scale = float(loss_scale)
        if loss_scale != 1.0:                            # (1: the float32 arithmetic exactly)
            scale *= loss_scale
        # Mixed precision as in the one-recurrence step: both directions of every layer on
        # the 16-bit weight copy, the output layer in float32 on the states and V upcast.
        mixed = mixed_policy(plan, self)
        with tf32_mode(plan.precision, self._params["V"]):
            state, hidden = self._pass(x, m, plan, mixed)
            masks, V, c = state.masks, state.params["V"], state.params.get("c")
            if mixed is not None:
                hidden, V, c = mixed.wide(hidden), mixed.wide(V), mixed.wide(c)
            out = output_loss_and_grads(self.output, V, c, _output_dropped(hidden, masks),
                                        self._targets(targets, x),
                                        None if m is None else _time_major(m), scale,
                                        self.cell.workspace, plan=plan)
            dhidden = out.dstates
            if masks is not None and masks.output is not None:
                dhidden *= masks.output                  # the output layer read h ⊙ m
            if mixed is not None:
                dhidden = mixed.store(dhidden)           # the sweeps run in the storage type
            grads = self.cell.backward(state.params, state, dhidden)
        if mixed is not None:                            # float32 for the master weights
            grads = {name: mixed.wide(value, self.dtype) for name, value in grads.items()}
        if masks is not None:
            masks.mask_weight_grads(grads)
        grads["V"] = out.dV
        if self.bias:
            grads["c"] = out.dc
        loss, grads = _unscaled(out.loss, {name: grads[name] for name in self._params},
                                loss_scale)
        return LossAndGrads(loss, grads, self._final(state, mixed))
