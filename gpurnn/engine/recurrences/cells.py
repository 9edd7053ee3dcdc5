"""Recurrent cells: what one time step computes, and its vector–Jacobian products.

The BPTT engine (:mod:`gpurnn.bptt`) owns the time loops; a cell only says what happens
inside one step, so Elman nets and user-defined recurrences share the same loops.

The cell protocol
-----------------
A recurrence S_t = f(params, x_t, S_{t-1}) over states of shape (batch, *state_shape).
To define one, subclass :class:`Cell` and implement three methods:

``step(params, x_t, s_prev) -> s_t``
    One step forward. ``x_t`` is the step's input (batch, ...) or None when the
    recurrence has no input.
``vjp_state(params, x_t, s_prev, s_t, g) -> g_prev``
    g · ∂S_t/∂S_{t-1}: the gradient reaching S_{t-1} from a gradient ``g`` on S_t.
    ``g`` may carry extra *leading* axes (windowed truncation sends all live window
    origins back together), so write it with broadcasting operations.
``vjp_params(params, x_t, s_prev, s_t, g) -> {name: gradient}``
    g · ∂S_t/∂params (the partial derivative, S_{t-1} held fixed), summed over the batch.

The engine then gives dS_T/dparams = Σ_i (dS_T/dS_i)(∂S_i/∂params) (seed 003) with
full, windowed or chunked truncation. Cells that can do better than a per-step loop
(the Elman cell) also override the batched hooks ``project_inputs``, ``forward``,
``backward_stepper`` and ``param_grads``; the per-step ``delta_t`` that
``backward_stepper`` hands the sweep must have the state's shape (the sweep stores them in
one (time, batch, ...) array). A cell keeps scratch buffers in its ``workspace`` between
calls, so one cell object serves one layer: a stack builds a cell per layer.
"""
from __future__ import annotations

import math

from ..gpu import fused, persistent
from .activations import apply, check_activation, derivative_from_output
from ..arrays.backend import get_array_module, scatter_add
from ..plan import Plan
from ..arrays.host_threads import small_products
from ..arrays.workspace import Workspace

__all__ = ["Cell", "ElmanCell", "FPRIME_CHUNK", "masked_previous"]

# Steps whose activation derivatives the Elman backward sweep computes in one operation.
FPRIME_CHUNK = 32


class Cell:
    """Base class of recurrent cells; see the module docstring for the protocol."""

    plan = Plan()  # how steps run (gpurnn.engine.plan); the model running the cell sets it
    # dropout_state's locked mask (batch, hidden) on h_{t-1} where it feeds weight_hh, or
    # None; set per call by the stack that owns the cell (gpurnn.engine.layers.dropout)
    state_mask = None

    # The family of CUDA kernels (gpurnn/engine/gpu/kernels) that run this cell's maths under a
    # fused or auto plan: "elman", "gru", "lstm", or None (always plain).
    kernel_family = None

    def launcher(self, array):
        """The fused kernels' launcher for ``array`` under the plan, or None for the plain
        path; the kernels have no state mask, so a masked call runs plain."""
        return None if self.state_mask is not None else fused.launcher_for(self.plan, array)

    def kernel_decline(self):
        """Why this cell's calls run plain whatever the plan, or None."""
        if self.kernel_family is None:
            return f"{type(self).__name__} has no kernels"
        if self.state_mask is not None:
            return "a dropout state mask is set (the kernels have none)"
        return None

    def choose(self, array, phase, steps, batch, hidden, window=None, allow_persistent=True):
        """The plan's :class:`gpurnn.engine.plan.Choice` for this block's ``phase``
        ("forward" or "backward"); ``choice.path`` is "plain", "step" or "persistent"
        (:meth:`gpurnn.engine.plan.Plan.choose`), and ``choice.launcher`` the launcher."""
        launch = self.launcher(array)
        choice = self.plan.choose(self.kernel_family, phase, array.dtype, steps, batch, hidden,
                                  launch, window=window, declined=self.kernel_decline(),
                                  allow_persistent=allow_persistent)
        self.last_choice = {**getattr(self, "last_choice", {}), phase: choice}
        return choice, launch

    def kernel_hidden(self, params, array) -> int:
        """H, the hidden units the kernels work on (the state's width by default)."""
        return array.shape[-1]

    def sweep_choice(self, params, states, window=None):
        """The plan's (choice, launcher) for this block's backward sweep."""
        return self.choose(states, "backward", states.shape[0], states.shape[1],
                           self.kernel_hidden(params, states), window)

    def backward_sweep(self, params, xin, h0, states, dstates, carry, window):
        """The engine's whole-sweep hook (:func:`gpurnn.engine.sweeps.bptt.run`): this block's
        deltas (what ``bptt`` sweeping ``backward_stepper`` would return) computed by the
        cell in one go, with ``carry`` (batch, ...) the gradient the next block left (zeros
        for the last block), updated in place to the gradient on the block's ``h0``; or
        None to let the engine sweep step by step. ``window``: None for full BPTT, else the
        live window origins (a cell that cannot carry them declines)."""
        return None

    def masked(self, h):
        """h as weight_hh sees it: times the state mask, if any."""
        return h if self.state_mask is None else h * self.state_mask

    def enter_block(self, start: int) -> None:
        """Called before ``project_inputs`` with the block's first step in the sequence (0
        for a whole sequence); a cell whose inputs vary with the step (the stack's dropout
        between layers) records it."""

    @property
    def workspace(self) -> Workspace:
        """Scratch buffers this cell and the engine reuse across calls (made on first use)."""
        if "_workspace" not in self.__dict__:
            self._workspace = Workspace()
        return self._workspace

    def use_workspace(self, workspace: Workspace) -> Workspace:
        """Make ``workspace`` this cell's scratch space; returns the one it replaces. The
        engine gives each block of a long sequence whose cache it keeps its own."""
        previous = self.workspace
        self._workspace = workspace
        return previous

    def cache_bytes(self, params, batch, steps, state_size, itemsize):
        """Estimated (forward, backward) bytes for ``steps`` steps: the cache ``forward``
        leaves for the backward sweep, and what ``backward_stepper``, the sweep's steps and
        ``param_grads`` add while they run (a memory budget's bookkeeping). This default
        counts two (time, batch, state) arrays (the per-step loops' list of states and its
        stacked copy; the Elman cell's xin and states) and four per-step buffers; a cell
        with larger intermediates should say so."""
        return 2 * steps * batch * state_size * itemsize, 4 * batch * state_size * itemsize

    def row_width(self, params, state_size) -> int:
        """Elements per step and batch entry of the widest arrays a block of this cell
        computes on: the state's, or the input projection's (``weight_ih``'s rows, G·H for a
        GRU or LSTM) where that is wider. A memory budget sizes by it the float32 copies
        that the NumPy emulation of a 16-bit step makes (:mod:`gpurnn.engine.arrays.precision`)."""
        W = params.get("weight_ih")
        return max(state_size, W.shape[0] if W is not None and W.ndim == 2 else 0)

    # --- the protocol a user implements -----------------------------------------------
    def step(self, params, x_t, s_prev):
        raise NotImplementedError

    def vjp_state(self, params, x_t, s_prev, s_t, g):
        raise NotImplementedError

    def vjp_params(self, params, x_t, s_prev, s_t, g):
        raise NotImplementedError

    # --- batched hooks the engine calls; the defaults loop over steps ----------------
    def project_inputs(self, params, inputs):
        """Work on the whole sequence that does not depend on the state.

        ``inputs`` is time-major (time, batch, ...) or None; returns what ``step``
        receives as x_t, indexable by t (None stays None for every step).
        """
        return inputs

    def forward(self, params, xin, h0, steps):
        """All states (time, batch, ...) from the initial state ``h0``."""
        xp = get_array_module(h0)
        states = []
        s = h0
        for t in range(steps):
            s = self.step(params, _at(xin, t), s)
            states.append(s)
        return xp.stack(states)

    def backward_stepper(self, params, xin, h0, states):
        """A function ``back(t, g) -> (delta_t, g_prev)`` for the backward sweep.

        ``g`` is dL/dS_t (possibly with extra leading axes); ``delta_t`` is what
        ``param_grads`` needs from step t (here g itself), ``g_prev`` is dL/dS_{t-1}.
        """
        def back(t, g):
            s_prev = h0 if t == 0 else states[t - 1]
            return g, self.vjp_state(params, _at(xin, t), s_prev, states[t], g)
        return back

    def param_grads(self, params, inputs, xin, h0, states, deltas):
        """Parameter gradients from the per-step ``deltas`` the sweep collected."""
        xp = get_array_module(h0)
        grads = {name: xp.zeros_like(value) for name, value in params.items()}
        for t in range(states.shape[0]):
            s_prev = h0 if t == 0 else states[t - 1]
            for name, value in self.vjp_params(params, _at(xin, t), s_prev, states[t],
                                               deltas[t]).items():
                grads[name] += value
        return grads

    def hidden_width(self, hidden: int) -> int:
        """Width of h, the leading part of the state that the layer above and the output
        layer read: ``hidden`` unless the cell projects it (an LSTM with ``proj_size``)."""
        return hidden

    def input_grads(self, params, xin, deltas, t=None):
        """dL/dx from the engine's ``deltas``: for all steps (time, batch, ...), or for step
        ``t`` only (..., batch, ...), after ``backward_stepper`` ran on ``xin``. What a layer
        stacked below this cell (or an embedding under it) receives; needed only for stacks."""
        raise NotImplementedError(f"{type(self).__name__} does not define input_grads, "
                                  f"so it cannot be stacked or put on an embedding")


def _at(xin, t):
    return None if xin is None else xin[t]


def masked_previous(mask, hprev, h0):
    """h_0 … h_{T−2} and h_{-1} as weight_hh saw them: times the state mask, if any (for
    the weight gradient Σ_t δʰ_tᵀ h_{t-1})."""
    if mask is None:
        return hprev, h0
    return hprev * mask, h0 * mask


class ElmanCell(Cell):
    """h_t = f(U x_t + W h_{t-1} + b) (seeds 000/002/004), batched over batch·time.

    Parameters, named as PyTorch names them: weight_ih = U (hidden, input), weight_hh = W
    (hidden, hidden) and, with ``bias``, bias_ih = b (hidden,).
    Token inputs (time, batch) select columns of U (a row gather of Uᵀ); dense inputs
    (time, batch, input) go through one GEMM for all steps. Only the recurrence
    W h_{t-1} and its transpose in the backward sweep run step by step.
    """

    kernel_family = "elman"

    def __init__(self, activation: str = "tanh", bias: bool = True):
        self.activation = check_activation(activation)
        self.bias = bool(bias)

    def step(self, params, x_t, s_prev):
        return apply(self.activation, x_t + self.masked(s_prev) @ params["weight_hh"].T)

    def project_inputs(self, params, inputs):
        xp = get_array_module(inputs)
        U = params["weight_ih"]
        steps, batch = inputs.shape[:2]
        xin = self.workspace.empty("xin", (steps, batch, U.shape[0]), U.dtype, xp)  # (T, B, H)
        if inputs.dtype.kind in "iu":
            xp.take(U.T, inputs, axis=0, out=xin)                    # columns of U
        else:
            xp.matmul(inputs.reshape(steps * batch, -1), U.T,
                      out=xin.reshape(steps * batch, -1))            # one GEMM for all steps
        if self.bias and self._forward_path(xin, steps)[0].path != "step":
            xin += params["bias_ih"]                                       # (step kernel: in it)
        return xin

    def _forward_path(self, xin, steps):
        return self.choose(xin, "forward", steps, xin.shape[1], xin.shape[2])

    def forward(self, params, xin, h0, steps):
        choice, launch = self._forward_path(xin, steps)
        if choice.path == "persistent":
            states = self.workspace.empty("states", xin.shape, xin.dtype, get_array_module(xin))
            return persistent.elman_forward(params, xin, h0, self.activation, launch,
                                            out=states)
        if choice.path == "step":
            return fused.elman_forward(self, params, xin, h0, steps, launch)
        xp = get_array_module(xin)
        WT = xp.ascontiguousarray(params["weight_hh"].T)             # (a view: slower GEMMs)
        states = self.workspace.empty("states", xin.shape, xin.dtype, xp)  # (T, B, H)
        h = h0
        batch, hidden = h0.shape
        m = self.state_mask
        hm = None if m is None else self.workspace.empty("masked_h", h0.shape, h0.dtype, xp)
        with small_products(xp, 2 * batch * hidden * hidden):       # see host_threads
            for t in range(steps):
                a = states[t]
                xp.matmul(h if m is None else xp.multiply(h, m, out=hm), WT, out=a)  # W h_{t-1}
                a += xin[t]                                          # + U x_t + b
                h = apply(self.activation, a, out=a)                 # h_t = f(a_t)
        return states

    def backward_sweep(self, params, xin, h0, states, dstates, carry, window):
        """The whole block's deltas as one persistent kernel where the plan chooses it."""
        choice, launch = self.sweep_choice(params, states, window)
        if choice.path != "persistent":
            return None
        xp = get_array_module(states)
        deltas = self.workspace.empty("persistent_deltas", states.shape, states.dtype, xp)
        return persistent.elman_backward(params, states, fused.contiguous(xp, dstates),
                                         self.activation, launch, out=deltas, carry=carry)

    def backward_stepper(self, params, xin, h0, states):
        choice, launch = self.choose(states, "backward", *states.shape,
                                     allow_persistent=False)
        if choice.path == "step":
            return fused.elman_backward_stepper(self, params, xin, h0, states, launch)
        xp = get_array_module(states)
        workspace = self.workspace
        # f'(a_t) for FPRIME_CHUNK steps at a time: two operations per chunk rather than
        # per step, and a (chunk, batch, hidden) buffer rather than a fifth (time, batch,
        # hidden) array.
        steps = states.shape[0]
        chunk = min(steps, FPRIME_CHUNK)
        fprime = workspace.empty("fprime", (chunk,) + states.shape[1:], states.dtype, xp)
        W = params["weight_hh"]
        hidden = W.shape[0]
        buffers = {}
        first = [steps]                         # fprime holds steps first .. first + chunk − 1

        def back(t, g):
            if not first[0] <= t < first[0] + chunk:
                first[0] = max(0, t - chunk + 1)                     # the sweep runs backwards
                span = min(chunk, steps - first[0])
                derivative_from_output(self.activation, states[first[0]:first[0] + span],
                                       out=fprime[:span])
            if g.shape not in buffers:
                buffers[g.shape] = [workspace.empty(name, g.shape, g.dtype, xp)
                                    for name in ("delta", ("g", 0), ("g", 1))]
            delta, *g_buffers = buffers[g.shape]
            xp.multiply(g, fprime[t - first[0]], out=delta)          # e_h(t) = f'(a_t) ⊙ dL/dh_t
            # dL/dh_{t-1} = e_h(t) W, into the buffer that g (from step t + 1) is not in.
            g_prev = g_buffers[t % 2]
            xp.matmul(delta.reshape(-1, hidden), W, out=g_prev.reshape(-1, hidden))
            if self.state_mask is not None:
                g_prev *= self.state_mask                            # h_{t-1} entered as h ⊙ m
            return delta, g_prev

        # The sweep enters this once around its loop: a BLAS limit set per step would cost
        # about as much as the step's product (7 µs against 9 µs at B = 32, H = 100).
        back.loop_context = lambda shape: small_products(xp, 2 * math.prod(shape) * hidden)
        return back

    def param_grads(self, params, inputs, xin, h0, states, deltas):
        xp = get_array_module(deltas)
        steps, batch, hidden = deltas.shape
        rows = deltas.reshape(steps * batch, hidden)                 # e_h(t) for all (t, b)
        # dW = Σ_t e_h(t)ᵀ h_{t-1}: h_{-1} = h0 separately, saving a concatenated copy.
        hprev, h0 = masked_previous(self.state_mask, states[:-1], h0)
        dW = rows[batch:].T @ hprev.reshape(-1, hidden) + deltas[0].T @ h0
        U = params["weight_ih"]
        if inputs.dtype.kind in "iu":
            dUT = xp.zeros(U.shape[::-1], dtype=U.dtype)             # (I, H)
            scatter_add(dUT, inputs.reshape(-1), rows)               # dU[:, x_t] += e_h(t)
            dU = xp.ascontiguousarray(dUT.T)
        else:
            dU = rows.T @ inputs.reshape(steps * batch, -1)          # Σ e_h(t) x_tᵀ
        grads = {"weight_ih": dU, "weight_hh": dW}
        if self.bias:
            grads["bias_ih"] = rows.sum(axis=0)
        return grads

    def input_grads(self, params, xin, deltas, t=None):
        """dL/dx_t = e_h(t) U for deltas e_h (..., batch, hidden), any step(s)."""
        U = params["weight_ih"]
        return (deltas.reshape(-1, U.shape[0]) @ U).reshape(deltas.shape[:-1] + (U.shape[1],))

    def state_size(self, hidden: int) -> int:
        return hidden

    def delta_size(self, hidden: int) -> int:
        return hidden

