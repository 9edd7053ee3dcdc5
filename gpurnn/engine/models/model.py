"""The models users build: the Elman RNN of seeds 000/002/004 and the linear RNN of seed 001.

Both put a cell (:mod:`gpurnn.cells`) on the BPTT engine (:mod:`gpurnn.bptt`). The public
arrays are batch-major, (batch, time, ...); internally everything is time-major.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy

from ..sweeps import bptt, recompute
from ..recurrences.activations import OUTPUTS, check_activation
from ..arrays.backend import get_array_module, get_device, host_rng, is_device_array, to_device
from ..recurrences.cells import ElmanCell
from .losses import (LOGIT_BLOCK_ELEMENTS, output_forward, output_loss,
                     output_loss_and_grads)
from ..plan import Plan
from ..arrays.precision import MIXED_PRECISIONS, mixed_policy, tf32_mode
from .parameters import ELMAN_ALIASES, Parameters, check_memory
from .torch_interop import TorchInterop
from ..arrays.validation import (as_float_array, as_inputs, as_mask, as_state, as_targets,
                         check_reduction, check_size, check_truncate, resolve_dtype)

__all__ = ["LossAndGrads", "RecurrentModel", "ElmanRNN", "LinearRNN", "evaluating"]


class LossAndGrads(NamedTuple):
    loss: float        # mean (or, with reduction="sum", summed) loss over unmasked steps
    grads: dict        # keyed like ``model.params``
    last_hidden: object  # (batch, hidden): each sequence's state after its last real step


def _time_major(array):
    """A C-contiguous copy with the first two axes swapped (never a view: the engine's
    arrays live in reused buffers, and neither callers nor the engine may alias them)."""
    return array.swapaxes(0, 1).copy()


class _ParamsMixin:
    """Parameters as attributes named like the seeds and as the dict ``params``."""

    _param_names: tuple  # every parameter name the class knows, present or not
    _param_shapes: dict  # name -> shape of the parameters this instance has

    @property
    def params(self) -> dict:
        """The live parameter dict (name -> array); optimizers update it in place."""
        return self._params

    _aliases: dict = {}  # other names of parameters: the seeds' U, W, b of an Elman model

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        name = self._aliases.get(name, name)
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name, value):
        key = self._aliases.get(name, name)
        if key in self._param_names:
            label = name if key == name else f"{name} ({key})"   # what the user typed
            if key not in self._param_shapes:
                self._checked_param(key, value, label)  # raises: no such parameter here
            dict.__setitem__(self._params, key, self._checked_param(key, value, label))
        else:
            object.__setattr__(self, name, value)

    def check_finite(self) -> None:
        """Raise ValueError naming the first parameter that holds NaN or Inf (after an
        in-place edit, say); the engine itself does not look, to keep steps fast."""
        for name, value in self._params.items():
            if not bool(get_array_module(value).isfinite(value).all()):
                raise ValueError(f"parameter {name} holds NaN or Inf")

    def _checked_param(self, name, value, label=None):
        label = label or name
        if name not in self._param_shapes:
            raise AttributeError(f"{type(self).__name__} has no parameter {label!r} "
                                 f"(it was built with bias=False)")
        array = as_float_array(value, label, self.dtype, self.device)
        expected = self._param_shapes[name]
        if tuple(array.shape) != expected:
            raise ValueError(f"{label} must have shape {expected}, got {tuple(array.shape)}")
        return get_array_module(array).array(array, copy=True)


class RecurrentModel(_ParamsMixin):
    """A recurrent cell under an output layer y_t = g(V h_t + c), trained by BPTT.

    Subclasses call ``_setup`` and ``_draw_params`` and set ``self.cell``; a cell whose
    state holds more than h (an LSTM's (h, c)) overrides the four state hooks below.
    """

    def _setup(self, input_size, hidden_size, output_size, output, bias, dtype, device):
        sizes = (check_size(input_size, "input_size"), check_size(hidden_size, "hidden_size"),
                 check_size(output_size, "output_size"))
        self.input_size, self.hidden_size, self.output_size = sizes
        self.output = check_activation(output, argument="output", choices=OUTPUTS)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {type(bias).__name__}")
        self.bias = bias
        self.dtype = resolve_dtype(dtype)
        self.device = get_device(device)
        # How steps are computed (kernels, memory budget): see gpurnn.engine.plan.
        self.plan = Plan()

    def _draw_params(self, specs: dict, seed):
        """Parameters from ``specs`` {name: (shape, init)}, init ("uniform", bound),
        ("normal", std), ("zeros",) or ("ones",); drawn on the host in the order of ``specs`` (so a
        seed gives the same numbers on every device), then moved."""
        self._param_shapes = {name: shape for name, (shape, _) in specs.items()}
        check_memory(f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                     f"{self.output_size})",
                     8 * sum(int(numpy.prod(shape, dtype=object)) for shape in
                             self._param_shapes.values()))
        rng = host_rng(seed)
        host = {}
        for name, (shape, init) in specs.items():
            if init[0] == "uniform":
                host[name] = rng.uniform(-init[1], init[1], shape)
            elif init[0] == "normal":
                host[name] = rng.normal(0.0, init[1], shape)
            elif init[0] == "ones":
                host[name] = numpy.ones(shape)
            else:
                host[name] = numpy.zeros(shape)
        self._params = Parameters({name: to_device(value, self.device, self.dtype)
                                   for name, value in host.items()}, self._checked_param,
                                  self._aliases)

    @property
    def config(self) -> dict:
        """Constructor arguments (without the seed): enough to rebuild the model."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    output_size=self.output_size, output=self.output, bias=self.bias,
                    dtype=self.dtype.name)

    def copy(self, *, dtype=None, device=None):
        """A copy with the same parameters, optionally cast or moved."""
        config = self.config
        if dtype is not None:
            config["dtype"] = dtype
        clone = type(self)(**config, device=device if device is not None else self.device)
        for name, value in self._params.items():
            setattr(clone, name, value)
        clone.plan, clone.training = self.plan, self.training
        return clone

    def __repr__(self):
        config = self.config
        sizes = ", ".join(str(config.pop(k)) for k in ("input_size", "hidden_size", "output_size"))
        options = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({sizes}, {options}, device={str(self.device)!r})"

    # --- state hooks: the state is h itself unless a subclass says otherwise ------------
    def _initial_state(self, h0, batch):
        """The cell's initial state (batch, state) from the user's ``h0`` (zeros if None),
        (batch, hidden) or PyTorch's (1, batch, hidden)."""
        if h0 is not None and numpy.ndim(h0) == 3 and len(h0) == 1:
            h0 = h0[0]
        return as_state(h0, batch, self.hidden_size, self.dtype, self.device)

    def _hidden(self, states):
        """h_t, what the output layer reads, from the cell's states (time, batch, state)."""
        return states

    def _state_grads(self, dhidden, states):
        """The gradient on the cell's states from the gradient on h_t."""
        return dhidden

    def _final_state(self, state):
        """What ``last_hidden`` returns for a (batch, state) array: feeds back as ``h0``."""
        return state

    def pack_state(self, state):
        """A state as ``h0`` takes it (an array, or an LSTM's (h, c)) packed into one
        (batch, size) array, one row per sequence: what a checkpoint stores."""
        first = state[0] if isinstance(state, tuple) else state
        return self._initial_state(state, first.shape[-2])

    def unpack_state(self, rows):
        """The inverse of :meth:`pack_state`."""
        return self._final_state(rows)

    # --- dropout: training and evaluation modes ------------------------------------
    training = True  # PyTorch's default; dropout (where a model has it) applies in training

    def train(self, mode: bool = True):
        """Training mode (``mode=True``, the default) or evaluation mode; returns the model.
        Dropout applies in training mode only (see :mod:`gpurnn.engine.layers.dropout`)."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be True or False, got {type(mode).__name__}")
        self.training = mode
        return self

    def eval(self):
        """Evaluation mode: no dropout; the same as ``train(False)``. Returns the model."""
        return self.train(False)

    def _call_params(self, x):
        """The parameters and dropout masks of one call on inputs ``x`` (batch, time, ...):
        ``(params, masks)``; a model without dropout runs its parameters, no masks."""
        return self._params, None

    def _dropout_bytes(self, batch, steps) -> int:
        """Bytes the masks of a call on (batch, steps) hold (none without dropout)."""
        return 0

    # --- running ---------------------------------------------------------------------
    def _run(self, inputs, h0):
        """(x_tm, xin, h0, states) of a forward pass; see :meth:`_forward_pass`."""
        return self._forward_pass(inputs, h0)[:4]

    def _forward_pass(self, inputs, h0):
        """The forward pass over the whole sequence: the time-major inputs, the cell's
        projected inputs, the initial state, the states and the call's dropout masks."""
        x = as_inputs(inputs, self.input_size, self.dtype, self.device)
        batch, steps = x.shape[:2]
        h0 = self._initial_state(h0, batch)
        x_tm = _time_major(x)
        params, masks = self._call_params(x)
        self.cell.plan = self.plan
        xin, states = bptt.forward(self.cell, params, x_tm, h0, steps)
        return x_tm, xin, h0, states, masks

    def forward(self, inputs, h0=None, *, logits=False, return_state=False):
        """Outputs (batch, time, output_size) and hidden states (batch, time, hidden_size).

        Args:
            inputs: int token ids (batch, time) or floats (batch, time, input_size).
            h0: initial state, zeros if None (see :meth:`__call__` for its shapes).
            logits: the output layer's z_t = V h_t + c instead of y_t = g(z_t)
                (for softmax models: unnormalised log-probabilities).
            return_state: also return the state after the last step (what ``h0`` takes).
        """
        _, _, _, states, masks = self._forward_pass(inputs, h0)
        hidden = self._hidden(states)
        y = output_forward(self.output, self._params["V"], self._params.get("c"),
                           _output_dropped(hidden, masks), logits=logits)
        if not return_state:
            return _time_major(y), _time_major(hidden)
        return _time_major(y), _time_major(hidden), self._final_state(states[-1].copy())

    def __call__(self, inputs, h0=None):
        """``(out, state)`` like a PyTorch module: ``out`` (batch, time, output_size) holds
        the logits of a softmax model (what a cross-entropy takes) and the outputs
        y_t = g(V h_t + c) of the others; ``state`` is the state after the last step, in
        the shape ``h0`` takes: (batch, hidden) for one layer, (num_layers, batch, hidden)
        for a stack, and a pair (h, c) of those for an LSTM. Given an ``h0`` in PyTorch's
        layout, (num_layers, batch, hidden) even for one layer, ``state`` comes back in it."""
        out, _, state = self.forward(inputs, h0, logits=self.output == "softmax",
                                     return_state=True)
        first = h0[0] if isinstance(h0, (tuple, list)) and len(h0) == 2 else h0
        if first is not None and numpy.ndim(first) == 3:             # PyTorch's layout asked
            state = _layered(state)
        return out, state

    def loss(self, inputs, targets, *, weights=None, h0=None, reduction="mean",
             return_state=False):
        """The loss alone (no BPTT): for evaluation.

        Args:
            weights: (batch, time) of non-negative numbers, default all ones; unlike a
                ``mask`` they need not be right-padded.
            reduction: "mean", Σ w_t · loss_t / Σ w_t (per step, as ``loss_and_grads``),
                or "sum", Σ w_t · loss_t.
            return_state: also return the state after the last step (what ``h0`` takes).
        """
        reduction = check_reduction(reduction)
        if self.plan.memory_budget is not None or self.plan.checkpoint_every is not None:
            loss, last, w, rows = self._blocked_loss(inputs, targets, weights, h0)
        else:
            _, _, h0, states, masks = self._forward_pass(inputs, h0)
            steps, batch = states.shape[:2]
            y = as_targets(targets, self.output, self.output_size, batch, steps, self.dtype,
                           self.device)
            w = self._weights(weights, batch, steps)
            loss = output_loss(self.output, self._params["V"], self._params.get("c"),
                               _output_dropped(self._hidden(states), masks), _time_major(y),
                               None if w is None else _time_major(w))
            last, rows = states[-1], batch * steps
        if reduction == "mean":                          # (the sum of weights: one sync)
            loss /= (float(w.sum()) if w is not None else rows) or 1.0   # no weight: loss 0
        if not return_state:
            return loss
        return loss, self._final_state(last.copy())

    def _weights(self, weights, batch, steps):
        if weights is None:
            return None
        w = as_float_array(weights, "weights", self.dtype, self.device)
        if w.shape != (batch, steps):
            raise ValueError(f"weights must have shape (batch, time) = {(batch, steps)}, "
                             f"got {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise ValueError("weights must be >= 0")
        return w

    def _blocked_loss(self, inputs, targets, weights, h0):
        """The summed loss one block of the plan's grid at a time, in one working cache (what
        evaluation on a long sequence holds in a memory budget), with the last state, the
        checked weights and the number of steps (batch · time)."""
        x = as_inputs(inputs, self.input_size, self.dtype, self.device)
        batch, steps = x.shape[:2]
        h0 = self._initial_state(h0, batch)
        y = as_targets(targets, self.output, self.output_size, batch, steps, self.dtype,
                       self.device)
        w = self._weights(weights, batch, steps)
        block = recompute.block_steps(batch, steps, self.plan.checkpoint_every,
                                      self.plan.block_steps)
        schedule = recompute.Schedule(steps, block, 0, 0, "forward", -(-steps // block))
        loss, last = 0.0, None
        params, masks = self._call_params(x)
        self.cell.plan = self.plan
        for a, states in bptt.forward_blocks(self.cell, params,
                                             lambda a, b: _time_major(x[:, a:b]), h0, schedule):
            b = a + states.shape[0]
            loss += output_loss(self.output, self._params["V"], self._params.get("c"),
                                _output_dropped(self._hidden(states), masks),
                                _time_major(y[:, a:b]),
                                None if w is None else _time_major(w[:, a:b]))
            last = states[-1]
        return loss, last, w, batch * steps

    def loss_and_grads(self, inputs, targets, *, truncate=None, mask=None, h0=None,
                       reduction="mean", memory_budget=None,
                       checkpoint_every=None, precision=None,
                       loss_scale=1.0, loss_on_device=False) -> LossAndGrads:
        """Loss and its gradients by BPTT.

        Args:
            inputs: int token ids (batch, time) or floats (batch, time, input_size).
            targets: int ids (batch, time) for softmax, else floats (batch, time, output_size).
            truncate: None for full BPTT; k for the seeds' ``bptt_truncate``: the error of
                output t reaches steps t, ..., max(0, t − k) and no further.
            mask: (batch, time) of 0/1 for right-padded ragged batches.
            h0: initial state (batch, hidden); no gradient flows into it, so feeding the
                previous chunk's ``last_hidden`` gives chunked truncated BPTT.
            reduction: "mean" over unmasked steps (as PyTorch and the trainer), or
                "sum" over time and batch as the seeds' loops do.
            memory_budget: bytes (int, or a string like "64MB") the step may hold; the
                engine keeps what fits and recomputes the rest, with the same gradients.
                Overrides ``model.plan.memory_budget`` (see :mod:`gpurnn.engine.plan`).
            checkpoint_every: instead of a budget, keep the state every k steps and
                recompute each k-step block once; "sqrt" for k = ⌈√T⌉.
            precision: "float32", "tf32", "bf16-mixed" or "fp16-mixed"; overrides
                ``model.plan.precision`` (:mod:`gpurnn.engine.arrays.precision`).
            loss_scale: the loss is multiplied by it before the backward sweep and the
                gradients divided by it after (float16 loss scaling); the returned loss and
                gradients are unscaled, and non-finite where the scaled sweep overflowed.
            loss_on_device: return the loss as a 0-d array on the model's device, never
                read back (the captured step of :mod:`gpurnn.engine.gpu.graphs`).
        """
        truncate = check_truncate(truncate)
        reduction = check_reduction(reduction)
        plan = self.plan.replace(memory_budget=memory_budget, checkpoint_every=checkpoint_every,
                                 precision=precision)
        x = as_inputs(inputs, self.input_size, self.dtype, self.device)
        batch, steps = x.shape[:2]
        h0 = self._initial_state(h0, batch)
        y = as_targets(targets, self.output, self.output_size, batch, steps, self.dtype,
                       self.device)
        m = as_mask(mask, batch, steps, self.dtype, self.device)
        scale = 1.0
        if reduction == "mean":
            scale = 1.0 / max(1.0, float(m.sum()) if m is not None else float(batch * steps))
        loss_scale = float(loss_scale)
        if loss_scale != 1.0:                            # (1: today's arithmetic exactly)
            scale *= loss_scale
        schedule = self._schedule(plan, x, y, h0, truncate, m is not None)
        params, masks = self._call_params(x)
        V, c = self._params["V"], self._params.get("c")
        # Mixed precision (gpurnn.engine.arrays.precision): the step runs on a 16-bit copy of the
        # weights, its inputs and states in the storage type; the output layer computes in
        # float32 on the 16-bit states and weights upcast. None: the model's dtype throughout.
        mixed = mixed_policy(plan, self)
        if mixed is not None:
            params = mixed.weights(params)
            V, c = mixed.wide(params["V"]), mixed.wide(params.get("c"))
            h0 = mixed.store(h0)
            # the fused cell kernels take the 16-bit arrays (float32 maths inside), the
            # softmax kernel the float32 output layer; the persistent ones decline (plan)

        def inputs(a, b):                                # the inputs of steps a … b − 1
            block = x[:, a:b]
            if mixed is not None:
                # rounded to the storage type block by block, as the engine reads them: a
                # 16-bit copy of the whole sequence would grow with T, outside the budget
                block = mixed.store(block)
            return _time_major(block)
        workspace = self.cell.workspace
        out = {"loss": 0.0, "dV": None, "dc": None}
        output_mask = None if masks is None else masks.output

        def head(a, b, states):                          # the output layer of steps a … b − 1
            hidden = self._hidden(states)
            if mixed is not None:
                hidden = mixed.wide(hidden)
            block = output_loss_and_grads(self.output, V, c,
                                          _output_dropped(hidden, masks),
                                          _time_major(y[:, a:b]),
                                          None if m is None else _time_major(m[:, a:b]),
                                          scale, workspace, plan=plan,
                                          keep_loss=loss_on_device)
            dhidden = block.dstates
            if output_mask is not None:
                dhidden *= output_mask                   # the output layer read h ⊙ m
            if mixed is not None:
                dhidden = mixed.store(dhidden)           # the sweep runs in the storage type
            out["loss"] += block.loss
            if out["dV"] is None:
                out["dV"], out["dc"] = block.dV, block.dc
            else:
                out["dV"] += block.dV
                if c is not None:
                    out["dc"] += block.dc
            return self._state_grads(dhidden, states)

        last = _LastStates(m, h0)
        self.cell.plan = plan                            # kernels: see gpurnn.engine.plan
        with tf32_mode(plan.precision, h0):
            grads, final = bptt.run(self.cell, params, inputs, h0, schedule, head, truncate,
                                    last.see)
        final = final if m is None else last.states
        if mixed is not None:                            # float32 for the master weights
            grads = {name: mixed.wide(value, self.dtype) for name, value in grads.items()}
            final = mixed.wide(final, self.dtype)
        if masks is not None:
            masks.mask_weight_grads(grads)
        grads["V"] = out["dV"]
        if self.bias:
            grads["c"] = out["dc"]
        loss, grads = _unscaled(out["loss"], {name: grads[name] for name in self._params},
                                loss_scale)
        return LossAndGrads(loss, grads, self._final_state(final))

    def schedule(self, inputs, targets, *, truncate=None, mask=None, h0=None,
                 memory_budget=None, checkpoint_every=None) -> recompute.Schedule:
        """What ``loss_and_grads`` with these arguments would keep and recompute: a
        :class:`gpurnn.engine.sweeps.recompute.Schedule` with the estimated peak bytes. Raises
        ValueError, as the step would, when the budget cannot be met."""
        truncate = check_truncate(truncate)
        plan = self.plan.replace(memory_budget=memory_budget, checkpoint_every=checkpoint_every)
        x = as_inputs(inputs, self.input_size, self.dtype, self.device)
        batch, steps = x.shape[:2]
        y = as_targets(targets, self.output, self.output_size, batch, steps, self.dtype,
                       self.device)
        m = as_mask(mask, batch, steps, self.dtype, self.device)
        return self._schedule(plan, x, y, self._initial_state(h0, batch), truncate,
                              m is not None)

    def _schedule(self, plan, x, y, h0, truncate, masked):
        batch, steps = x.shape[:2]
        block = recompute.block_steps(batch, steps, plan.checkpoint_every, plan.block_steps)
        if plan.memory_budget is not None and plan.block_steps is None \
                and plan.checkpoint_every is None:
            # the default grid's block does not fit: shorter ones (a grid the user chose
            # is kept as chosen, and refused if it cannot fit)
            block = recompute.fitting_block(
                block, plan.memory_budget,
                lambda b: self._footprint(x, y, h0, b, truncate, masked, plan.precision))
        footprint = self._footprint(x, y, h0, block, truncate, masked, plan.precision)
        return recompute.make_schedule(steps, block, plan.memory_budget, footprint,
                                       every=plan.checkpoint_every is not None)

    def _footprint(self, x, y, h0, block, truncate, masked,
                   precision="float32") -> recompute.Footprint:
        """Bytes a step allocates, by block (see :class:`gpurnn.engine.sweeps.recompute.Footprint`).
        The caller's arrays are not counted; everything the engine makes is, estimated
        from the shapes: the blocks of inputs, targets and mask it copies, the cell's
        cache (:meth:`gpurnn.engine.recurrences.cells.Cell.cache_bytes`), the output layer's row
        blocks, the sweep's deltas and window, the gradients. Under a 16-bit
        ``precision`` the cache, states, deltas and dense inputs take the storage type's
        bytes (the output layer and the gradients stay float32), plus the weight copy and,
        on NumPy, the emulation's float32 copies (``_emulation_bytes``)."""
        batch, S = h0.shape
        H, O = self.hidden_size, self.output_size
        item = self.dtype.itemsize
        mixed = precision in MIXED_PRECISIONS
        store = 2 if mixed else item                     # bytes of a stored element
        rows = block * batch
        cell_forward, cell_backward = self.cell.cache_bytes(self._params, batch, block, S,
                                                            store)
        x_bytes = x[:1, :1].nbytes if x.dtype.kind in "iu" or not mixed else x.shape[2] * store
        forward = cell_forward + x_bytes * rows + 2 * batch * S * store
        out_rows = min(rows, LOGIT_BLOCK_ELEMENTS // O)
        if self.output == "softmax":                     # logits; [h, 1], E V, h r; gathers
            output = out_rows * (O + 5 * (H + 1) + 8) * item
        else:                                            # z, y − t, g', (y − t)²
            output = out_rows * 4 * O * item
        output += rows * (H + 4) * item                  # the shift bound and scatter rows
        backward = (cell_backward + y[:1, :1].nbytes * rows + masked * rows * item
                    + rows * (H + S) * store             # dL/dh_t, the deltas
                    + output)
        window = truncate + 1 if truncate is not None and truncate < x.shape[1] - 1 else 1
        if mixed:                                        # the float32 h and dL/dh of a block
            backward += 2 * rows * H * item
            if not is_device_array(x):                   # MixedArrays: their float32 copies
                backward += self._emulation_bytes(x, rows, window * batch, S)
        if S != H:                                       # h read out of [h, c] / layers
            backward += rows * (H + S) * store
        params = sum(value.nbytes for value in self._params.values())
        fixed = (4 * params + 6 * O * (H + 1) * item     # gradients, weight copies, output
                 + 6 * window * batch * S * store         # carried states and errors
                 + (params * store // item if mixed else 0)   # the step's 16-bit weight copy
                 + self._dropout_bytes(batch, x.shape[1]))
        return recompute.Footprint(forward, backward, batch * S * store, fixed)

    def _emulation_bytes(self, x, rows, origins, S) -> int:
        """The float32 working set of a 16-bit step on NumPy, beyond its arrays: there every
        operation on 16-bit arrays (:class:`gpurnn.engine.arrays.precision.MixedArray`)
        computes on float32 copies of its 16-bit operands into a float32 result, all freed
        when it returns, so at most three float32 arrays (two operands, the result) are
        alive at once. Each is at most the widest array the step computes on: a block's
        ``rows`` (steps · batch) of the cell's widest row or of the dense inputs, the state
        of a step's window ``origins`` (window · batch, for truncated BPTT), or a parameter
        of the cell (the GEMMs with the weights, the float32 sum of a scatter-add). CuPy
        computes on 16-bit arrays without such copies."""
        width = self.cell.row_width(self._params, S)
        if x.dtype.kind not in "iu":                     # dense inputs (batch, time, input)
            width = max(width, x.shape[2])
        largest = max(value.size for name, value in self._params.items()
                      if name not in ("V", "c"))         # the output layer runs in float32
        return 3 * self.dtype.itemsize * max(rows * width, origins * max(width, S), largest)


@contextlib.contextmanager
def evaluating(model):
    """A context in which ``model`` is in evaluation mode (no dropout), its mode restored
    on leaving: how sampling and evaluation run a model, whatever mode it is in."""
    before = getattr(model, "training", None)
    if before is None:                                   # LinearRNN: no modes
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train(before)


def _output_dropped(hidden, masks):
    """h_t as the output layer reads it: times dropout_output's locked mask, if any."""
    if masks is None or masks.output is None:
        return hidden
    return hidden * masks.output


def _unscaled(loss, grads, loss_scale):
    """The loss and gradients of a step whose loss was multiplied by ``loss_scale``,
    divided back (in float32: the gradients are the master weights' dtype by then)."""
    if loss_scale == 1.0:
        return loss, grads
    return loss / loss_scale, {name: value / loss_scale for name, value in grads.items()}


def _layered(state):
    """A state (or an LSTM's pair) with one-layer (batch, hidden) parts as (1, batch, hidden)."""
    if isinstance(state, tuple):
        return tuple(_layered(part) for part in state)
    return state[None] if state.ndim == 2 else state


class _LastStates:
    """Each sequence's state after its last real step, picked block by block on the first
    forward (``see``) from a right-padded mask; h0 where a sequence has no step."""

    def __init__(self, mask, h0):
        self.states = None
        if mask is not None:
            self.lengths = mask.sum(axis=1).astype(numpy.int64)     # (B,)
            self.states = h0.copy()

    def see(self, a, states):
        if self.states is None:
            return
        xp = get_array_module(states)
        steps, batch = states.shape[:2]
        last = self.lengths - 1 - a                                  # row in this block
        inside = (last >= 0) & (last < steps)
        picked = states[xp.clip(last, 0, steps - 1), xp.arange(batch)]
        self.states = xp.where(inside[:, None], picked, self.states)


class ElmanRNN(TorchInterop, RecurrentModel):
    """An Elman RNN: h_t = f(U x_t + W h_{t-1} + b), y_t = g(V h_t + c).

    Args:
        input_size: vocabulary size for token inputs, features for dense inputs.
        hidden_size: size of the state h.
        output_size: classes (``output="softmax"``) or output features.
        activation: f, one of tanh | relu | sigmoid | identity.
        output: g, one of softmax (cross-entropy loss) | identity | sigmoid | tanh
            (squared-error loss ½Σ(y − t)², seed 004).
        bias: with b (hidden,) and c (output,); without, the tutorial's U, V, W only.
        dtype: float32 (training) or float64 (checks).
        device: "cpu", "cuda", "cuda:N" or "auto".
        seed: initialisation seed; weights are uniform in ±1/sqrt(fan-in) as in the
            tutorial (U: input_size, W and V: hidden_size), biases zero.

    Parameters (``params`` keys, PyTorch's names, and the seeds' names as attributes):
    weight_ih = U (hidden, input), weight_hh = W (hidden, hidden), bias_ih = b (hidden,),
    V (output, hidden), c (output,). ``model.U`` and ``model.weight_ih`` are one array.
    """

    _param_names = ("weight_ih", "weight_hh", "bias_ih", "V", "c")
    _aliases = ELMAN_ALIASES
    cell_type = "elman"
    single_layer = True  # for from_torch: a stack or an embedding is a StackedElmanRNN

    def __init__(self, input_size, hidden_size, output_size, *, activation="tanh",
                 output="softmax", bias=True, dtype="float32", device="cpu", seed=0):
        self._setup(input_size, hidden_size, output_size, output, bias, dtype, device)
        self.activation = check_activation(activation)
        self.cell = ElmanCell(activation, bias)
        I, H, O = self.input_size, self.hidden_size, self.output_size
        # The tutorial's initialisation: uniform in ±1/sqrt(fan-in); biases start at zero.
        specs = {"weight_ih": ((H, I), ("uniform", 1 / numpy.sqrt(I))),
                 "weight_hh": ((H, H), ("uniform", 1 / numpy.sqrt(H))),
                 "V": ((O, H), ("uniform", 1 / numpy.sqrt(H)))}
        if bias:
            specs.update(bias_ih=((H,), ("zeros",)), c=((O,), ("zeros",)))
        self._draw_params(specs, seed)

    @property
    def config(self) -> dict:
        return {**super().config, "activation": self.activation}


class LinearRNN(_ParamsMixin):
    """Seed 001's linear RNN: S_k = S_{k-1}·wRec + X_k·wx, S_0 = 0, loss on the last state.

    It is the Elman cell with hidden size 1, identity activation and no bias, U = [[wx]]
    and W = [[wRec]], on the same engine; the loss is mean over samples of (S_n − t)².
    """

    _param_names = ("wx", "wRec")

    def __init__(self, wx=0.5, wRec=0.5, *, dtype="float64", device="cpu"):
        self.dtype = resolve_dtype(dtype)
        self.device = get_device(device)
        self.cell = ElmanCell("identity", bias=False)
        self._param_shapes = {"wx": (), "wRec": ()}
        self._params = Parameters({}, self._checked_param)
        for name, value in (("wx", wx), ("wRec", wRec)):
            dict.__setitem__(self._params, name, self._checked_param(name, value))

    def _cell_params(self):
        # (1, 1) views of the scalars, so in-place optimizer updates are seen here.
        return {"weight_ih": self.wx.reshape(1, 1), "weight_hh": self.wRec.reshape(1, 1)}

    def _run(self, X):
        x = as_float_array(X, "X", self.dtype, self.device)
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"X must have shape (samples, time) with at least one of each, "
                             f"got {tuple(x.shape)}")
        x_tm = _time_major(x)[:, :, None]                            # (T, B, 1)
        h0 = as_state(None, x.shape[0], 1, self.dtype, self.device)
        xin, states = bptt.forward(self.cell, self._cell_params(), x_tm, h0, x.shape[1])
        return x_tm, xin, h0, states

    def forward(self, X):
        """States S_1..S_n, shape (samples, time)."""
        return _time_major(self._run(X)[3][:, :, 0])

    def loss_and_grads(self, X, targets, *, truncate=None, reduction="mean") -> LossAndGrads:
        """mean((S_n − t)²) over samples and its gradients {"wx", "wRec"} (seed 001's
        backward_gradient); ``reduction="sum"`` for Σ (S_n − t)²."""
        truncate = check_truncate(truncate)
        reduction = check_reduction(reduction)
        x_tm, xin, h0, states = self._run(X)
        samples = states.shape[1]
        t = as_float_array(targets, "targets", self.dtype, self.device)
        if t.shape != (samples,):
            raise ValueError(f"targets must have shape (samples,) = ({samples},), "
                             f"got {tuple(t.shape)}")
        xp = get_array_module(states)
        diff = states[-1, :, 0] - t
        dstates = xp.zeros_like(states)
        scale = 1.0 / samples if reduction == "mean" else 1.0
        dstates[-1, :, 0] = 2.0 * scale * diff                       # d mean(diff²) / dS_n
        grads = bptt.backward(self.cell, self._cell_params(), x_tm, xin, h0, states,
                              dstates, truncate)
        return LossAndGrads(scale * float((diff * diff).sum()),
                            {"wx": grads["weight_ih"].reshape(()),
                             "wRec": grads["weight_hh"].reshape(())},
                            states[-1, :, 0].copy())
