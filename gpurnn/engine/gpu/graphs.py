"""One CUDA graph per training step: forward, backward and the optimizer update captured once
and replayed while the shapes repeat.

    model.plan = model.plan.replace(kernels="fused", persistent=True, graph=True)
    step = StepGraph(model, optimizer)
    for inputs, targets in batches:
        result = step(inputs, targets)          # a StepResult: loss (float), last_hidden
        print(result.loss, result.mode, result.reason)

A :class:`StepGraph` runs ``model.loss_and_grads`` and ``optimizer.step`` as one step. The
first step of a new *signature* (shapes and dtypes of inputs, targets and h0, the plan, the
truncation, the reduction, the optimizer and its hyperparameters, the parameters' buffers)
runs as usual ("eager"): it compiles the kernels and creates the optimizer's buffers. The
second step of the same signature is captured into a graph on a stream of its own, reading
its inputs from static buffers, and launched; every later one copies the batch into those
buffers and replays the graph ("replay"). A new signature is captured anew once it repeats.
The loss stays on the device inside the step (``loss_and_grads(..., loss_on_device=True)``)
and is read after the replay, once.

What cannot be captured is refused before capturing where it can be known, and runs eager
with the reason (:attr:`StepGraph.reason`, :attr:`StepResult.reason`): see
:func:`refusal`. Where a capture itself fails (CuPy raises, or the capture backend sees a
host synchronisation), the captured work is discarded (it never ran: capturing records,
it does not execute), the optimizer's step count is restored, that signature is refused
from then on with the error as the reason, and the step runs eager.

The capture is a backend object (:class:`CupyCapture` on a GPU): tests hand a
:class:`HostCapture`, which runs the captured region under
``gpurnn.engine.arrays.strict.transfer_guard("disallow")`` at capture and re-runs it at each
replay, so the bookkeeping and the no-synchronisation rule are checked on the CPU
(``cpu-strict`` with the kernels' host emulation). :func:`check_region` runs the region
once under the guard and raises on the first implicit transfer.
"""
from __future__ import annotations

import dataclasses
import inspect

from . import fused
from ..arrays import strict
from ..arrays.backend import device_of, get_array_module
from ..arrays.validation import values_checked

__all__ = ["StepGraph", "StepResult", "CupyCapture", "HostCapture", "refusal",
           "check_region", "CaptureRefused"]

# Optimizers whose fused kernel takes launch arguments that are the same every step (for a
# fixed lr): Adam's carry the bias corrections 1 − β^t, which a graph would freeze at the
# step it was captured at.
REPLAYABLE_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop")


class CaptureRefused(RuntimeError):
    """A capture that failed or was refused; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One step: the loss (a Python float, read after the step), each sequence's state
    after its last step, how it ran ("eager", "captured" or "replay") and, when eager,
    why it was not replayed."""

    loss: float
    last_hidden: object
    mode: str
    reason: str = ""


def refusal(model, optimizer, inputs, targets=None, *, h0=None, mask=None, truncate=None,
            plan=None, capture=None):
    """Why a step of ``model`` and ``optimizer`` on these arrays cannot be captured, or None
    when it can be: decided before capturing, from the plan, the arrays, the model and the
    optimizer (and the capture backend's own probe, e.g. whether CuPy accepts cuBLAS calls
    during capture)."""
    plan = plan if plan is not None else model.plan
    if not plan.graph:
        return "the plan's graph is False"
    if device_of(inputs).kind != "cuda" and not getattr(capture, "host", False):
        return "the arrays are not CuPy's: there is no CUDA graph to capture"
    if plan.kernels == "plain":
        return ("kernels='plain' runs the cells, the softmax and the update as array "
                "operations: only the fused and persistent kernels are planned for capture")
    if fused.launcher_for(plan, model.params[next(iter(model.params))]) is None:
        return "no kernel launcher for these arrays (no GPU and no host emulation)"
    if plan.precision not in ("float32", "tf32"):
        return f"precision {plan.precision!r} runs plain (the fused kernels are 32/64-bit)"
    if mask is not None:
        return "a mask: the mean divides by its token count, which is read on the host"
    rates = getattr(model, "dropout", None)
    if getattr(model, "training", True) and getattr(rates, "active", False):
        return ("dropout draws new masks each step (with cuRAND on a GPU, which CuPy "
                "refuses during capture)")
    if "loss_on_device" not in inspect.signature(model.loss_and_grads).parameters:
        return (f"{type(model).__name__}.loss_and_grads cannot keep the loss on the device "
                f"(reading it back is a host synchronisation)")
    name = getattr(optimizer, "name", "")
    if name not in REPLAYABLE_OPTIMIZERS:
        return (f"optimizer {name!r}: its update takes per-step launch arguments (Adam's "
                f"bias corrections 1 − β^t) that a replay would freeze"
                if name == "adam" else f"optimizer {name!r} has no fused kernel to capture")
    if getattr(optimizer, "eps_placement", "outside") != "outside":
        return "eps_placement='inside' runs the plain update (the kernels put eps outside)"
    if getattr(optimizer, "plan", None) is None or optimizer.plan.kernels == "plain":
        return "the optimizer's plan is 'plain': its update is not the fused kernel"
    if capture is not None:
        return capture.refusal()
    return None


def _signature(model, optimizer, plan, inputs, targets, h0, truncate, reduction):
    def shape(a):
        if isinstance(a, tuple):                         # an LSTM's (h, c)
            return tuple(shape(part) for part in a)
        return None if a is None else (tuple(a.shape), a.dtype.str)

    params = tuple((name, id(value), shape(value)) for name, value in model.params.items())
    hyper = tuple(sorted(optimizer.hyperparameters().items()))
    return (shape(inputs), shape(targets), shape(h0), plan, truncate, reduction,
            optimizer.name, hyper, params)


def region(model, optimizer, buffers, out, truncate=None, reduction="mean"):
    """The captured region: the loss and gradients from the static ``buffers`` with the
    loss kept on the device, then the optimizer's update in place; the results go in
    ``out`` (loss, last_hidden)."""
    with values_checked():
        result = model.loss_and_grads(buffers["inputs"], buffers["targets"],
                                      h0=buffers.get("h0"), truncate=truncate,
                                      reduction=reduction, loss_on_device=True)
        optimizer.step(model.params, result.grads)
    out["loss"], out["last_hidden"] = result.loss, result.last_hidden


def check_region(model, optimizer, inputs, targets, *, h0=None, truncate=None,
                 reduction="mean"):
    """Run the region once under ``transfer_guard("disallow")`` (meaningful on ``cpu-strict``
    arrays, with the kernels' host emulation for a fused plan): raises
    :class:`gpurnn.engine.arrays.strict.TransferGuardError` at the first implicit transfer or
    synchronisation. Updates the parameters, as a step does; returns the loss (read after
    the region)."""
    out = {}
    buffers = {"inputs": inputs, "targets": targets, "h0": h0}
    with strict.transfer_guard("disallow"):
        region(model, optimizer, buffers, out, truncate, reduction)
    return float(out["loss"])


class HostCapture:
    """A capture backend for the CPU: ``capture`` runs the region once under
    ``transfer_guard("disallow")`` (a host synchronisation fails the capture, as it would
    on a GPU) and returns a graph whose ``launch`` re-runs it. ``refuse`` makes every
    capture fail with that reason; ``calls`` records ("capture" | "launch")."""

    host = True

    def __init__(self, refuse=None):
        self.refuse, self.calls = refuse, []

    def refusal(self):
        return None

    def capture(self, run):
        self.calls.append("capture")
        if self.refuse:
            raise CaptureRefused(self.refuse)
        with strict.transfer_guard("disallow"):
            run()      # here the capture runs the step: its first launch is this run
        owner = self

        class Graph:
            ran = True

            def launch(self):
                owner.calls.append("launch")
                if self.ran:
                    self.ran = False
                else:
                    run()

        return Graph()

    def copy_in(self, buffer, value):
        buffer[...] = value

    def synchronize(self):
        pass


class CupyCapture:
    """Stream capture with CuPy (``cupy.cuda.Stream.begin_capture`` / ``end_capture``,
    relaxed mode, on a non-blocking stream of its own) into a private memory pool: what the
    graph allocates stays its own, so no later allocation outside it reuses those blocks."""

    host = False
    _probe = {}   # CuPy version -> the cuBLAS probe's answer

    def __init__(self):
        from ..arrays.backend import cupy            # the shim's CuPy (this class runs on a GPU only)

        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pool = cupy.cuda.MemoryPool()

    def refusal(self):
        """Whether this CuPy accepts a cuBLAS GEMM during capture (the step's input
        projections, the output layer and the per-step W h are cuBLAS): a 2×2 matmul is
        captured on a scratch stream once per process; CuPy 13 and 14 refuse it
        (NotImplementedError from ``cublas.setStream``)."""
        cupy = self.cupy
        version = cupy.__version__
        if version not in self._probe:
            stream = cupy.cuda.Stream(non_blocking=True)
            a = cupy.ones((2, 2), dtype=cupy.float32)
            answer = None
            with stream:
                stream.begin_capture()
                try:
                    cupy.matmul(a, a)
                except Exception as error:
                    answer = (f"CuPy {version} refuses cuBLAS during stream capture "
                              f"({type(error).__name__}: {error}); the step's GEMMs (input "
                              f"projections, output layer, W h) are cuBLAS calls")
                finally:
                    stream.end_capture()
            self._probe[version] = answer
        return self._probe[version]

    def capture(self, run):
        cupy = self.cupy
        self.stream.wait_event(cupy.cuda.get_current_stream().record())
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                run()
            except BaseException:
                self.stream.end_capture()        # discarded: nothing captured has run
                raise
            graph = self.stream.end_capture()
        stream = self.stream

        class Graph:
            def launch(self):
                stream.wait_event(cupy.cuda.get_current_stream().record())
                graph.launch(stream=stream)
                cupy.cuda.get_current_stream().wait_event(stream.record())

        return Graph()

    def copy_in(self, buffer, value):
        with self.stream:
            buffer[...] = value

    def synchronize(self):
        self.stream.synchronize()


class StepGraph:
    """One training step of ``model`` and ``optimizer``, captured once per signature and
    replayed (see the module docstring). ``capture``: the backend (None: a
    :class:`CupyCapture` when the arrays are CuPy's). After each call, ``mode``, ``reason``
    and the counts ``eager``, ``captures`` and ``replays`` say what ran."""

    def __init__(self, model, optimizer, *, truncate=None, reduction="mean", capture=None):
        self.model, self.optimizer = model, optimizer
        self.truncate, self.reduction = truncate, reduction
        self.capture = capture
        self.graph = self.key = None
        self.seen = None                   # the signature of the last eager step
        self.refused = {}                  # signature -> why its capture failed
        self.buffers, self.out = {}, {}
        self.mode, self.reason = None, ""
        self.eager = self.captures = self.replays = 0

    def __call__(self, inputs, targets, h0=None, mask=None) -> StepResult:
        model, optimizer = self.model, self.optimizer
        xp = get_array_module(model.params[next(iter(model.params))])
        inputs, targets = xp.asarray(inputs), xp.asarray(targets)
        if self.capture is None and device_of(inputs).kind == "cuda" and model.plan.graph:
            self.capture = CupyCapture()
        why = refusal(model, optimizer, inputs, targets, h0=h0, mask=mask,
                      truncate=self.truncate, capture=self.capture)
        if why is None:
            key = _signature(model, optimizer, model.plan, inputs, targets, h0,
                             self.truncate, self.reduction)
            why = self.refused.get(key)
            if why is None and key == self.key:
                return self._replay(inputs, targets, h0)
            if why is None and key == self.seen:
                return self._capture(key, inputs, targets, h0)
            if why is None:
                why = ("a new signature: this step runs eager and the next one of the same "
                       "shapes is captured")
                self.seen = key
        return self._eager(inputs, targets, h0, mask, why)

    # ------------------------------------------------------------------------ the paths
    def _eager(self, inputs, targets, h0, mask, why):
        result = self.model.loss_and_grads(inputs, targets, h0=h0, mask=mask,
                                           truncate=self.truncate, reduction=self.reduction)
        self.optimizer.step(self.model.params, result.grads)
        self.eager += 1
        self.mode, self.reason = "eager", why
        return StepResult(result.loss, result.last_hidden, "eager", why)

    def _checked(self, inputs, targets, h0):
        """The batch's value checks, outside the captured region (they read back)."""
        from ..arrays.validation import as_inputs, as_targets

        model = self.model
        as_inputs(inputs, model.input_size, model.dtype, model.device)
        as_targets(targets, model.output, model.output_size, *inputs.shape[:2], model.dtype,
                   model.device)
        if h0 is not None:
            state = h0 if not isinstance(h0, tuple) else h0[0]
            if not bool(get_array_module(state).isfinite(state).all()):
                raise ValueError("h0 contains NaN or Inf")

    def _capture(self, key, inputs, targets, h0):
        self._checked(inputs, targets, h0)
        buffers = {"inputs": inputs.copy(), "targets": targets.copy(),
                   "h0": None if h0 is None else (tuple(s.copy() for s in h0)
                                                  if isinstance(h0, tuple) else h0.copy())}
        out, t = {}, self.optimizer.t
        try:
            graph = self.capture.capture(
                lambda: region(self.model, self.optimizer, buffers, out, self.truncate,
                               self.reduction))
        except Exception as error:
            self.optimizer.t = t                 # the captured update never ran
            why = f"capture failed: {type(error).__name__}: {error}"
            self.refused[key] = why
            return self._eager(inputs, targets, h0, None, why)
        self.graph, self.key, self.buffers, self.out = graph, key, buffers, out
        self.captures += 1
        self.optimizer.t = t
        return self._launch("captured")

    def _replay(self, inputs, targets, h0):
        self._checked(inputs, targets, h0)
        copy = self.capture.copy_in
        copy(self.buffers["inputs"], inputs)
        copy(self.buffers["targets"], targets)
        if h0 is not None:
            for buffer, value in zip(*((self.buffers["h0"], h0) if isinstance(h0, tuple)
                                       else ((self.buffers["h0"],), (h0,)))):
                copy(buffer, value)
        self.replays += 1
        return self._launch("replay")

    def _launch(self, mode):
        t = self.optimizer.t
        self.graph.launch()
        self.capture.synchronize()
        self.optimizer.t = t + 1                 # the Python side of the update's count
        self.mode, self.reason = mode, ""
        last = self.out["last_hidden"]
        last = tuple(s.copy() for s in last) if isinstance(last, tuple) else last.copy()
        return StepResult(float(self.out["loss"]), last, mode)
