"""Stacked layers and token embeddings on the one BPTT engine.

A stack of L layers is one recurrence whose state is the concatenation of the layers'
states, [s⁰, s¹, …, s^{L−1}] (each layer's s is h, or [h, c] for an LSTM), so the engine's
sweeps run on it unchanged. Layer l reads layer l−1's h_t at the same step; with an
embedding E (input_size, embedding_size) token x_t enters layer 0 as the row E[x_t]
instead of a column of layer 0's input weights.

Forward is layer by layer: each layer's input projection is one GEMM over batch·time rows
(the layer below has finished all its steps), then that layer's time loop. The backward
step handles all layers at step t, top down: the gradient a layer sends to its input,
δ_t W_ih, joins the state gradient of the layer below at the same step.

Truncation on a stack: ``truncate=k`` lets the error of output t reach steps t … t − k in
every layer (the window is on the stacked state, exactly as for one layer), and chunked
truncation carries every layer's state. Full BPTT is unaffected by the definition.

Parameters of layer 0 keep the single-layer names (weight_ih, weight_hh, bias_ih and, for
GRU/LSTM, bias_hh); layer l ≥ 1 appends ``_l{l}`` as PyTorch does.
"""
from __future__ import annotations

import functools

import numpy

from ..sweeps import scan
from ..recurrences.activations import check_activation
from ..arrays.backend import get_array_module, to_device
from .bidirectional import BidirectionalModel, BidirectionalStack, direction_name
from ..recurrences.cells import Cell, ElmanCell
from .dropout import (DropoutRates, DropoutStream, Masks, dropped_input_grads,
                      dropped_inputs)
from .embedding import embed, embedding_grad
from ..models.model import RecurrentModel
from ..models.parameters import elman_aliases, is_recurrent_weight, layer_name
from ..models.torch_interop import TorchInterop
from ..arrays.validation import as_float_array, as_state, check_size

__all__ = ["StackedCell", "LayeredRNN", "StackedElmanRNN", "layer_name"]


class _StackWork:
    """The stack's workspace (its ``xin``): per layer, the inputs, the cell's own workspace,
    the initial state and the states, filled by ``project_inputs`` and ``forward``; the
    block's first step and the masks of the call."""

    def __init__(self, layers: int, start: int, masks):
        self.start, self.masks = start, masks
        self.inputs = [None] * layers
        self.xin = [None] * layers
        self.h0 = [None] * layers
        self.states = [None] * layers


class StackedCell(Cell):
    """``num_layers`` copies of ``cell`` stacked, optionally over an embedding ``E``.

    Args:
        cells: one cell per layer (bottom first), each with ``state_size``, ``delta_size``
            and ``input_grads`` (Elman, GRU, LSTM); separate objects, since a cell keeps
            its scratch buffers in its own workspace.
        names: the cells' parameter names (layer 0's); layer l's are ``layer_name(n, l)``.
        hidden_size: H of every layer; a layer's h is the first ``hidden_width(H)`` entries
            of its state (H, or an LSTM's proj_size).
        embedding: True to look token ids up in ``params["E"]`` (input_size, embedding_size).
    """

    def __init__(self, cells, names, hidden_size: int, embedding: bool = False):
        self.cells = list(cells)
        self.num_layers = len(self.cells)
        self.names = tuple(names)
        self.hidden = self.cells[0].hidden_width(hidden_size)        # width of h
        self.embedding = bool(embedding)
        self.state_width = self.cells[0].state_size(hidden_size)     # S per layer
        self.delta_width = self.cells[0].delta_size(hidden_size)     # D per layer
        self.masks, self._start = None, 0

    def set_masks(self, masks) -> None:
        """The dropout masks of the next calls (a :class:`gpurnn.engine.layers.dropout.Masks`, or
        None for none): the state masks go to the layers' cells, the others apply here."""
        self.masks = masks
        for layer, cell in enumerate(self.cells):
            cell.state_mask = (None if masks is None or masks.state is None
                               else masks.state[layer])

    def enter_block(self, start: int) -> None:
        self._start = start                           # where the block's between-masks begin

    def _between(self, work, layer, steps):
        """The dropout mask on the input of ``layer`` ≥ 1 over the block's ``steps`` steps
        (steps, batch, H), or None without one."""
        masks = work.masks
        if masks is None or masks.between is None:
            return None
        return masks.between[layer - 1][work.start:work.start + steps]

    def use_workspace(self, workspace):
        previous = super().use_workspace(workspace)
        for layer, cell in enumerate(self.cells):                    # one child per layer
            cell.use_workspace(workspace.child(("layer", layer)))
        return previous

    def cache_bytes(self, params, batch, steps, state_size, itemsize):
        rows = steps * batch * itemsize
        H, S = self.hidden, self.state_width
        forward = backward = 0
        for layer, cell in enumerate(self.cells):
            f, b = cell.cache_bytes(self.layer_params(params, layer), batch, steps, S, itemsize)
            forward, backward = forward + f, backward + b
        forward += rows * state_size                                  # the concatenated states
        forward += rows * H * (self.num_layers - 1) * (S != H)        # h of the layers below
        # param_grads: one layer's deltas made contiguous, the input gradients of layer 0
        # (gate gradients and dL/dx) for an embedding.
        backward += rows * self.delta_width
        if self.embedding:
            width = params["E"].shape[1]
            forward += rows * width                                   # the rows E[x_t]
            backward += rows * (width + 4 * S)
        return forward, backward

    def row_width(self, params, state_size) -> int:
        # each layer works on its own arrays (the concatenated state is only copied), and
        # layer 0 on the embedded rows E[x_t]
        width = max(cell.row_width(self.layer_params(params, layer), self.state_width)
                    for layer, cell in enumerate(self.cells))
        return max(width, params["E"].shape[1]) if self.embedding else width

    @property
    def plan(self):
        return self.cells[0].plan

    @plan.setter
    def plan(self, plan):  # every layer runs under the model's plan
        for cell in self.cells:
            cell.plan = plan

    def layer_params(self, params, layer):
        return {n: params[layer_name(n, layer)] for n in self.names
                if layer_name(n, layer) in params}

    def _slice(self, layer, width):
        return slice(layer * width, (layer + 1) * width)

    def project_inputs(self, params, inputs):
        work = _StackWork(self.num_layers, self._start, self.masks)
        tokens = inputs
        if self.embedding:
            inputs = embed(params["E"], inputs)                      # rows E[x_t], (T, B, D)
        inputs = dropped_inputs(inputs, self.masks, tokens)
        work.inputs[0] = inputs
        work.xin[0] = self.cells[0].project_inputs(self.layer_params(params, 0), inputs)
        return work

    def forward(self, params, work, h0, steps):
        xp = get_array_module(h0)
        H, S = self.hidden, self.state_width
        for layer in range(self.num_layers):
            p = self.layer_params(params, layer)
            if layer > 0:
                below = work.states[layer - 1]
                below = below if S == H else xp.ascontiguousarray(below[..., :H])
                mask = self._between(work, layer, steps)
                work.inputs[layer] = below if mask is None else below * mask
                work.xin[layer] = self.cells[layer].project_inputs(p, work.inputs[layer])
            work.h0[layer] = xp.ascontiguousarray(h0[:, self._slice(layer, S)])
            work.states[layer] = self.cells[layer].forward(p, work.xin[layer], work.h0[layer],
                                                           steps)
        return xp.concatenate(work.states, axis=-1)                  # (T, B, L·S)

    def backward_stepper(self, params, work, h0, states):
        xp = get_array_module(states)
        H, S = self.hidden, self.state_width
        layers = [self.layer_params(params, layer) for layer in range(self.num_layers)]
        backs = [self.cells[layer].backward_stepper(layers[layer], work.xin[layer],
                                                    work.h0[layer], work.states[layer])
                 for layer in range(self.num_layers)]
        between = [None] + [self._between(work, layer, states.shape[0])
                            for layer in range(1, self.num_layers)]

        def back(t, g):
            deltas, g_prev = [None] * self.num_layers, [None] * self.num_layers
            dx = None
            for layer in reversed(range(self.num_layers)):
                g_layer = g[..., self._slice(layer, S)]
                if dx is not None:                                   # from the layer above at t
                    g_layer = g_layer.copy()
                    g_layer[..., :H] += dx
                deltas[layer], g_prev[layer] = backs[layer](t, g_layer)
                if layer > 0:
                    dx = self.cells[layer].input_grads(layers[layer], work.xin[layer],
                                                       deltas[layer], t)
                    if between[layer] is not None:
                        dx *= between[layer][t]                      # the dropout between
            return xp.concatenate(deltas, axis=-1), xp.concatenate(g_prev, axis=-1)

        # Layers whose steppers each solve a whole block (diagonal cells' reverse scans):
        # the stack's block is then solved top layer down, each layer's input gradients for
        # all steps joining the layer below (gpurnn.engine.sweeps.scan.stacked_sweep).
        whole = [getattr(b, "sweep_block", None) for b in backs]
        if all(w is not None for w in whole):
            back.sweep_block = functools.partial(
                scan.stacked_sweep, whole, [functools.partial(
                    self.cells[layer].input_grads, layers[layer], work.xin[layer])
                    for layer in range(self.num_layers)], between, S, H)
        return back

    def backward_sweep(self, params, work, h0, states, dstates, carry, window):
        """The engine's whole-sweep hook for a stack (:meth:`Cell.backward_sweep`): where
        some layer's plan chooses the persistent kernels for full BPTT, the block is swept
        layer by layer, top down, each layer's whole sweep at once (persistent, or its own
        steps where it declines) and its input gradients for all steps (one GEMM) joining
        the state gradients of the layer below; the same sums as the step-by-step sweep,
        which runs otherwise (None)."""
        if window is not None:
            return None
        layers = [self.layer_params(params, layer) for layer in range(self.num_layers)]
        if not any(cell.sweep_choice(layers[layer], work.states[layer])[0].path ==
                   "persistent" for layer, cell in enumerate(self.cells)):
            return None
        from ..sweeps.bptt import _sweep_block                               # (bptt imports cells)

        xp = get_array_module(states)
        H, S, D = self.hidden, self.state_width, self.delta_width
        steps = states.shape[0]
        deltas = self.workspace.empty("stack_deltas", states.shape[:-1] + (D * self.num_layers,),
                                      states.dtype, xp)
        dx = None
        for layer in reversed(range(self.num_layers)):
            cell, p = self.cells[layer], layers[layer]
            ws = self.workspace.child(("layer_sweep", layer))
            d = ws.empty("dstates", dstates.shape[:-1] + (S,), dstates.dtype, xp)
            d[...] = dstates[..., self._slice(layer, S)]
            if dx is not None:
                d[..., :H] += dx                                     # from the layer above
            g = ws.empty("carry", carry.shape[:-1] + (S,), carry.dtype, xp)
            g[...] = carry[..., self._slice(layer, S)]
            got = cell.backward_sweep(p, work.xin[layer], work.h0[layer], work.states[layer],
                                      d, g, None)
            if got is None:
                back = cell.backward_stepper(p, work.xin[layer], work.h0[layer],
                                             work.states[layer])
                got, g = _sweep_block(back, d, None, ws, 0, g)
            carry[..., self._slice(layer, S)] = g
            deltas[..., self._slice(layer, D)] = got
            if layer > 0:
                dx = cell.input_grads(p, work.xin[layer], got)
                between = self._between(work, layer, steps)
                if between is not None:
                    dx *= between                                    # the dropout between
        return deltas

    def param_grads(self, params, inputs, work, h0, states, deltas):
        xp = get_array_module(deltas)
        grads = {}
        for layer in range(self.num_layers):
            p = self.layer_params(params, layer)
            d = xp.ascontiguousarray(deltas[..., self._slice(layer, self.delta_width)])
            layer_grads = self.cells[layer].param_grads(p, work.inputs[layer], work.xin[layer],
                                                        work.h0[layer], work.states[layer], d)
            grads.update({layer_name(n, layer): v for n, v in layer_grads.items()})
            if layer == 0 and self.embedding:
                masks = work.masks
                dx = dropped_input_grads(self.cells[0].input_grads(p, work.xin[0], d), masks)
                grads["E"] = embedding_grad(params["E"], inputs, dx,     # (T, B, D) → dE
                                            None if masks is None else masks.embedding)
        return grads

    def layers(self, params, work):
        """(cell, params, xin, states) of each layer after ``forward``, bottom first."""
        return [(self.cells[layer], self.layer_params(params, layer), work.xin[layer],
                 work.states[layer]) for layer in range(self.num_layers)]


class LayeredRNN(BidirectionalModel, RecurrentModel):
    """A cell type in ``num_layers`` stacked layers, optionally on an embedding, under the
    output layer y_t = g(V h_t + c) of the top layer; subclasses name the cell. With
    ``bidirectional`` every layer also runs over each sequence reversed
    (:mod:`gpurnn.engine.layers.bidirectional`).

    ``h0`` and ``last_hidden``: (batch, hidden) for one layer, (num_layers, batch, hidden)
    for several; an LSTM's are pairs (h, c) of those (h with proj_size columns where the
    LSTM projects). Subclasses define ``cell_type``, ``_make_cell()`` and
    ``_layer_specs(layer_input_size, bias)`` (name -> (shape, init)).
    """

    cell_type = ""
    _param_names: tuple = ()  # set per instance: the names depend on the layers

    def _build(self, input_size, hidden_size, output_size, *, num_layers, embedding_size,
               output, bias, dtype, device, seed, dropout, bidirectional=False):
        self._setup(input_size, hidden_size, output_size, output, bias, dtype, device)
        self.num_layers = check_size(num_layers, "num_layers")
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False, "
                            f"got {type(bidirectional).__name__}")
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        if embedding_size is not None:
            embedding_size = check_size(embedding_size, "embedding_size")
        self.embedding_size = embedding_size
        self.dropout = DropoutRates.from_options(type(self).__name__, dropout)
        self._check_dropout()
        self.dropout_stream = DropoutStream(seed)
        layer_cell = self._make_cell()
        H = self.hidden_size
        R = layer_cell.hidden_width(H)                               # h, read above and by V
        width = directions * R                                       # what layers above read
        def all_specs(bias):
            specs = {}
            if embedding_size is not None:
                specs["E"] = ((self.input_size, embedding_size), ("normal", 1.0))
            for layer in range(self.num_layers):
                fan_in = width if layer else (embedding_size or self.input_size)
                for direction in range(directions):              # PyTorch's order
                    for name, spec in self._layer_specs(fan_in, bias).items():
                        specs[direction_name(layer_name(name, layer), direction)] = spec
            specs["V"] = ((self.output_size, width),
                          ("uniform", 1 / numpy.sqrt(directions * H)))
            if bias:
                specs["c"] = ((self.output_size,), ("zeros",))
            return specs

        # Every name the model knows, so that setting a bias of a bias=False model is refused.
        object.__setattr__(self, "_param_names", tuple(all_specs(True)))
        self._draw_params(all_specs(bias), seed)
        self._layer_names = tuple(self._layer_specs(1, True))
        self._state_width = layer_cell.state_size(H)                 # S per layer
        self._hidden_width = R
        if bidirectional:
            cells = [(layer_cell if layer == 0 else self._make_cell(), self._make_cell())
                     for layer in range(self.num_layers)]
            self.cell = BidirectionalStack(cells, self._layer_names, H,
                                           embedding=embedding_size is not None)
        elif self.num_layers == 1 and embedding_size is None and not self.dropout.active:
            self.cell = layer_cell
        else:
            cells = [layer_cell] + [self._make_cell() for _ in range(1, self.num_layers)]
            self.cell = StackedCell(cells, self._layer_names, H,
                                    embedding=embedding_size is not None)

    @property
    def config(self) -> dict:
        config = {**super().config, "num_layers": self.num_layers,
                  "embedding_size": self.embedding_size, **self.dropout.nonzero()}
        if self.bidirectional:  # (only then: the configs of other models stay as they were)
            config["bidirectional"] = True
        return config

    def copy(self, *, dtype=None, device=None):
        clone = super().copy(dtype=dtype, device=device)
        clone.dropout_stream.load_state_dict(self.dropout_stream.state_dict())  # same masks
        return clone

    # --- dropout (gpurnn.engine.layers.dropout) --------------------------------------------
    def _check_dropout(self):
        rates = self.dropout
        if rates.dropout > 0 and self.num_layers == 1:
            raise ValueError("dropout acts between stacked layers and this model has one; "
                             "use num_layers >= 2, or dropout_output for the top layer's output")
        if rates.dropout_embedding > 0 and self.embedding_size is None:
            raise ValueError("dropout_embedding drops rows of an embedding and this model has "
                             "none; give embedding_size=...")

    def fixed_dropout(self):
        """A context in which every call draws the same dropout masks (for gradient
        checks, which compare several calls); see :class:`gpurnn.engine.layers.dropout.DropoutStream`."""
        return self.dropout_stream.fixed()

    def _call_params(self, x):
        cell = self.cell
        if not (self.training and self.dropout.active):
            if hasattr(cell, "set_masks"):                   # a stack: no masks this call
                cell.set_masks(None)
            return self._params, None
        batch, steps = x.shape[:2]
        recurrent = {name: value.shape for name, value in self._params.items()
                     if is_recurrent_weight(name)}
        masks = Masks(self.dropout, self.dropout_stream.next_draw(self.device), self.dtype,
                      vocabulary=self.input_size if self.embedding_size else 0, batch=batch,
                      steps=steps, input_width=self.embedding_size or self.input_size,
                      hidden=self._hidden_width, layers=self.num_layers, recurrent=recurrent,
                      directions=2 if self.bidirectional else 1)
        cell.set_masks(masks)
        return masks.dropped_weights(self._params), masks

    def _dropout_bytes(self, batch, steps) -> int:
        if not (self.training and self.dropout.active):
            return 0
        rates, H = self.dropout, self._hidden_width * (2 if self.bidirectional else 1)
        count = (rates.dropout > 0) * (self.num_layers - 1) * steps * batch * H
        if rates.weight_drop > 0:                        # the masks and the masked copies
            count += 2 * sum(value.size for name, value in self._params.items()
                             if is_recurrent_weight(name))
        count += batch * (self.embedding_size or self.input_size) + 2 * self.num_layers * batch * H
        return count * self.dtype.itemsize

    # --- state hooks ----------------------------------------------------------------
    @property
    def _pair_state(self) -> bool:
        return self._state_width != self.hidden_size                # LSTM: [h, c]

    def _layer_states(self, value, batch, name, width=None):
        """(num_layers, batch, hidden) from the user's value, or (batch, hidden) for one layer;
        ``width`` in place of hidden where it differs (a projected LSTM's h)."""
        L, H = self.num_layers, width or self.hidden_size
        if value is None:
            return to_device(numpy.zeros((L, batch, H)), self.device, self.dtype)
        if L == 1 and numpy.ndim(value) != 3:
            return as_state(value, batch, H, self.dtype, self.device, name=name)[None]
        s = as_float_array(value, name, self.dtype, self.device)
        if s.shape != (L, batch, H):
            one = f"(batch, hidden) = {(batch, H)} or " if L == 1 else ""
            raise ValueError(f"{name} must have shape {one}(num_layers, batch, hidden) = "
                             f"{(L, batch, H)}, got {tuple(s.shape)}")
        return s

    def _initial_state(self, h0, batch):
        xp = get_array_module(self.V)
        if self._pair_state:
            if h0 is None:
                h0 = (None, None)
            if not isinstance(h0, (tuple, list)) or len(h0) != 2:
                raise TypeError(f"h0 for an LSTM must be a pair (h, c) or None, "
                                f"got {type(h0).__name__}")
            h = self._layer_states(h0[0], batch, "h0[0] (h)", self._hidden_width)
            c = self._layer_states(h0[1], batch, "h0[1] (c)")
            layered = xp.concatenate([h, c], axis=-1)                # (L, B, S)
        else:
            layered = self._layer_states(h0, batch, "h0")            # (L, B, H)
        return xp.ascontiguousarray(layered.transpose(1, 0, 2)).reshape(batch, -1)

    def _top(self):
        start = (self.num_layers - 1) * self._state_width
        return slice(start, start + self._hidden_width)

    def _hidden(self, states):
        if states.shape[-1] == self.hidden_size:
            return states
        return states[..., self._top()]

    def _state_grads(self, dhidden, states):
        if states.shape[-1] == self.hidden_size:
            return dhidden
        out = get_array_module(states).zeros_like(states)
        out[..., self._top()] = dhidden
        return out

    def _final_state(self, state):
        xp = get_array_module(state)
        L, R = self.num_layers, self._hidden_width
        layered = state.reshape(state.shape[0], L, -1).transpose(1, 0, 2)   # (L, B, S)
        if self._pair_state:
            h, c = (xp.ascontiguousarray(layered[..., part]) for part in
                    (slice(0, R), slice(R, None)))
            return (h[0], c[0]) if L == 1 else (h, c)
        return state if L == 1 else xp.ascontiguousarray(layered)


class StackedElmanRNN(TorchInterop, LayeredRNN):
    """Elman layers h^l_t = f(U_l h^{l−1}_t + W_l h^l_{t−1} + b_l) under y_t = g(V h_t + c).

    The stacked (and embedded) form of :class:`gpurnn.ElmanRNN`; with one layer and no
    embedding it is the same model (same parameters, same initialisation for a seed).
    Parameters weight_ih, weight_hh, bias_ih (layer 0; the seeds' U, W, b as aliases),
    weight_ih_l1, … (U_l1, …) above, V, c, and E (input_size, embedding_size) with
    ``embedding_size``. Weights uniform in ±1/sqrt(fan-in), biases zero, E ~ N(0, 1).
    ``bidirectional=True`` adds each layer's reverse direction (weight_ih_reverse, …; see
    :mod:`gpurnn.engine.layers.bidirectional`). The dropout rates (``dropout``, ``dropout_input``,
    …) are those of :class:`gpurnn.GRU` (:mod:`gpurnn.engine.layers.dropout`).
    """

    cell_type = "elman"

    def __init__(self, input_size, hidden_size, output_size, *, num_layers=1,
                 embedding_size=None, activation="tanh", output="softmax", bias=True,
                 dtype="float32", device="cpu", seed=0, bidirectional=False, **dropout):
        self.activation = check_activation(activation)
        object.__setattr__(self, "_aliases", elman_aliases(check_size(num_layers, "num_layers")))
        self._build(input_size, hidden_size, output_size, num_layers=num_layers,
                    embedding_size=embedding_size, output=output, bias=bias, dtype=dtype,
                    device=device, seed=seed, bidirectional=bidirectional, dropout=dropout)

    def _make_cell(self):
        return ElmanCell(self.activation, self.bias)

    def _layer_specs(self, fan_in, bias):
        H = self.hidden_size
        specs = {"weight_ih": ((H, fan_in), ("uniform", 1 / numpy.sqrt(fan_in))),
                 "weight_hh": ((H, H), ("uniform", 1 / numpy.sqrt(H)))}
        if bias:
            specs["bias_ih"] = ((H,), ("zeros",))
        return specs

    @property
    def config(self) -> dict:
        return {**super().config, "activation": self.activation}
