"""How the engine runs a step: the one place where kernels and schedules are chosen.

A :class:`Plan` says *how* a model computes, never *what*: every plan gives the same loss
and gradients (to the last bit where the same operations run in the same order, to
rounding otherwise), and tests hold every choice to the plain one. A model holds one plan
(``model.plan``); ``loss_and_grads`` takes per-call overrides of its fields. The time loops,
cells and output layer do not take flags of their own: they ask the plan they are handed.

Fields:

* ``kernels``: ``"plain"`` runs every step as array-module operations, the same code on
  NumPy and CuPy and the reference for everything else; ``"fused"`` runs the cells' maths,
  the softmax row blocks and the optimizer updates as the CUDA kernels under
  ``gpurnn/engine/gpu/kernels/`` where the arrays are CuPy's (NumPy arrays always run plain):
  per block of the time grid, a cell's forward and its backward sweep run either as the
  per-step fused kernels (one launch per step beside cuBLAS's GEMM) or as one persistent
  cooperative kernel (:mod:`gpurnn.engine.gpu.persistent`), whichever the cost model
  (:func:`gpurnn.engine.gpu.launches.sweep_costs`) estimates faster where the persistent launch
  fits the device; ``"auto"`` chooses the same way among plain, per-step and persistent.
  :meth:`Plan.choose` makes the choice, :meth:`Plan.explain` shows it.
* ``persistent``: None (the cost model decides), True (the persistent kernels wherever
  they apply and fit), False (never). They do not apply to windowed truncation
  (``truncate=k < T − 1``: the sweep carries k + 1 live window origins, the persistent
  backward one gradient), under a dropout state mask, to projected LSTMs, layer-normalised
  cells or user cells; those blocks run the per-step kernels or plain, and say why.
* ``memory_budget``: None keeps every state for the backward sweep; a byte count (an int,
  or a string such as ``"64MB"``) bounds what the engine holds during a step, and the sweep
  recomputes the states it did not keep, on the fastest schedule that fits
  (:mod:`gpurnn.engine.sweeps.recompute`: Chen et al.'s, or Gruslys et al.'s nested checkpoints).
* ``checkpoint_every``: the plain every-k policy instead of a budget: keep the state every
  k steps and recompute each k-step block once (one extra forward pass); ``"sqrt"`` takes
  k = ⌈√T⌉ (Chen et al.: memory ~ 2√T states).
* ``block_steps``: the time grid, steps per block (None: about 1024 batch·time rows). The
  engine projects, runs the output layer and reduces the gradients block by block, in the
  same order under every schedule, so a budget changes what is kept and never a bit of the
  gradients; recomputation works in whole blocks.
* ``time``: how a cell whose recurrence is linear and diagonal (minGRU, minLSTM, LRU:
  :mod:`gpurnn.engine.recurrences.diagonal`) crosses the steps of a block: ``"scan"`` by a parallel
  associative scan forward and a reverse scan back (:mod:`gpurnn.engine.sweeps.scan`), ``"loop"``
  step by step, ``"auto"`` (the default) the scan for blocks long enough that it is faster.
  Equal to rounding (bounded in :mod:`gpurnn.engine.sweeps.scan`). The ParaGRU
  (:mod:`gpurnn.engine.recurrences.paragru`), nonlinear with a diagonal Jacobian, takes
  ``"scan"`` as Newton's method in time (:mod:`gpurnn.engine.sweeps.newton`) for its forward
  and ``"auto"`` as Newton on a GPU and the loop on a CPU. Other cells always loop, and
  windowed truncation (``truncate=k``) sweeps back by the loop.
* ``graph``: True lets :class:`gpurnn.engine.gpu.graphs.StepGraph` capture a whole training
  step (forward, backward, optimizer update) as one CUDA graph and replay it while the
  shapes repeat; it refuses, with the reason, what cannot be captured. False (the default):
  every step runs as usual.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import re

from .arrays.precision import check_precision

__all__ = ["Plan", "KERNELS", "PATHS", "TIME", "Choice", "parse_bytes", "parse_steps"]

KERNELS = ("plain", "fused", "auto")
PATHS = ("plain", "step", "persistent")  # what a block's forward or backward sweep runs as
TIME = ("auto", "scan", "loop")  # the ``time`` field (diagonal cells: scan or loop per block)

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value, name: str = "memory_budget"):
    """None, or a positive byte count from an int or a string like ``"64MB"``/``"1.5GiB"``
    (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti powers of 1024)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be None, a number of bytes or a string like '64MB', "
                        f"got {value!r}")
    if isinstance(value, numbers.Integral):
        size = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{name} must be a number of bytes or a string like '64MB', "
                             f"'512KiB', '1.5GB'; got {value!r}")
        size = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise TypeError(f"{name} must be None, a number of bytes or a string like '64MB', "
                        f"got {type(value).__name__}")
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return size


def parse_steps(value, name: str, allow_sqrt: bool = False):
    """None, a positive int of steps, or (``allow_sqrt``) the string "sqrt"."""
    if value is None or (allow_sqrt and value == "sqrt"):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        choices = "a positive int or 'sqrt'" if allow_sqrt else "a positive int"
        raise ValueError(f"{name} must be None or {choices}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a model computes a step (see the module docstring).

    Args:
        kernels: "plain" (array-module operations, the reference), "fused" (CUDA kernels
            on CuPy arrays, per-step or persistent; NumPy arrays run plain) or "auto" (plain,
            per-step or persistent kernels by the cost model).
        memory_budget: None to keep every state, or bytes (int or "64MB") for the step.
        checkpoint_every: None, k steps (keep a state every k steps), or "sqrt".
        block_steps: None (about 1024 batch·time rows) or steps per block of the grid.
        precision: "float32", "tf32", "bf16-mixed" or "fp16-mixed"
            (:mod:`gpurnn.engine.arrays.precision`).
        time: "auto", "scan" or "loop": how diagonal cells cross a block's steps.
        persistent: None (the cost model decides), True or False: whether the persistent
            kernels run where they apply and fit (under "fused" or "auto").
        graph: whether :class:`gpurnn.engine.gpu.graphs.StepGraph` may capture the step.
    """

    kernels: str = "plain"
    memory_budget: object = None
    checkpoint_every: object = None
    block_steps: object = None
    precision: str = "float32"   # mixed precision: gpurnn.engine.arrays.precision
    time: str = "auto"
    persistent: object = None
    graph: bool = False

    def __post_init__(self):
        if self.time not in TIME:
            raise ValueError(f"unknown time {self.time!r}; expected one of "
                             f"{', '.join(map(repr, TIME))}")
        if self.kernels not in KERNELS:
            raise ValueError(f"unknown kernels {self.kernels!r}; expected one of "
                             f"{', '.join(map(repr, KERNELS))}")
        object.__setattr__(self, "memory_budget", parse_bytes(self.memory_budget))
        object.__setattr__(self, "checkpoint_every",
                           parse_steps(self.checkpoint_every, "checkpoint_every", True))
        object.__setattr__(self, "block_steps", parse_steps(self.block_steps, "block_steps"))
        check_precision(self.precision)
        if self.persistent not in (None, True, False):
            raise ValueError(f"persistent must be None, True or False, got {self.persistent!r}")
        if self.graph not in (True, False):
            raise ValueError(f"graph must be True or False, got {self.graph!r}")
        if self.memory_budget is not None and self.checkpoint_every is not None:
            raise ValueError("give memory_budget or checkpoint_every, not both: the budget "
                             "chooses where to checkpoint")

    def replace(self, **changes) -> "Plan":
        """This plan with some fields changed (``None`` values in ``changes`` are ignored,
        so per-call keywords that were not given leave the model's plan as it is)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        # The two memory policies exclude each other: the one given replaces the other.
        for given, other in (("memory_budget", "checkpoint_every"),
                             ("checkpoint_every", "memory_budget")):
            if given in changes and other not in changes:
                changes[other] = None
        return dataclasses.replace(self, **changes) if changes else self

    # --------------------------------------------------------------- kernel choices
    def choose(self, family, phase, dtype, steps, batch, hidden, launch=None, *,
               window=None, declined=None, allow_persistent=True) -> "Choice":
        """What one block's ``phase`` ("forward" or "backward") of a cell runs as: a
        :class:`Choice` of path ("plain", "step" or "persistent"), the reason, the launches
        and the estimated costs.

        Args:
            family: the cell's kernels ("elman", "gru", "lstm"), or None for none.
            launch: the kernel launcher (:func:`gpurnn.engine.gpu.fused.launcher_for`), None
                when the arrays run plain (NumPy without the host emulation).
            window: the sweep's live window origins (None for full BPTT).
            declined: why the cell's call runs plain whatever the plan (a state mask...).
            allow_persistent: False where the caller can only run steps (a stepper).
        """
        if self.kernels == "plain":
            return Choice("plain", "the plan's kernels are 'plain'")
        # the same question comes several times a block (inputs, forward, the sweep): the
        # answer depends only on these, so it is kept (a few µs instead of ~100)
        import numpy

        try:
            return _chosen(self, family, phase, numpy.dtype(dtype), steps, batch, hidden,
                           launch, window, declined, allow_persistent)
        except TypeError:                                # an unhashable launcher
            return self._choose(family, phase, dtype, steps, batch, hidden, launch,
                                window=window, declined=declined,
                                allow_persistent=allow_persistent)

    def _choose(self, family, phase, dtype, steps, batch, hidden, launch=None, *,
                window=None, declined=None, allow_persistent=True) -> "Choice":
        from .gpu import launches

        if self.kernels == "plain":
            return Choice("plain", "the plan's kernels are 'plain'")
        if family is None or declined:
            return Choice("plain", declined or "the cell has no kernels")
        if launch is None:
            return Choice("plain", "the arrays are not CuPy's (and no host emulation is on)")
        spec = device_of_launcher(launch)
        threads = getattr(launch, "block_size", 256)
        costs = launches.sweep_costs(family, phase, dtype, steps, batch, hidden, spec, threads)
        found = costs["launch"]
        why_not = ""
        if not allow_persistent:
            why_not = "the caller runs step by step"
        elif self.persistent is False:
            why_not = "the plan's persistent is False"
        elif phase == "backward" and window is not None:
            why_not = (f"windowed truncation keeps {window} live window origins; the "
                       f"persistent backward carries one gradient")
        elif not found.fits:
            why_not = found.reason
        elif not hasattr(launch, "max_cooperative_blocks"):
            why_not = "the launcher makes no cooperative launches"
        elif not isinstance(launch, _Named):                     # the driver's own count
            fit = launch.max_cooperative_blocks(found.kernel, dtype, found.block, found.shared)
            if fit < found.grid:
                why_not = (f"the device fits {fit} resident blocks of {found.kernel}, "
                           f"the grid needs {found.grid}")
        candidates = {"step": costs["step"]}
        if not why_not:
            candidates["persistent"] = costs["persistent"]
        if self.kernels == "auto":
            candidates["plain"] = costs["plain"]
        if self.persistent is True and "persistent" in candidates:
            path, reason = "persistent", "the plan's persistent is True"
        else:
            path = min(candidates, key=candidates.get)
            others = ", ".join(f"{name} {candidates[name] * 1e3:.3g} ms" for name in
                               sorted(candidates, key=candidates.get) if name != path)
            reason = (f"estimated {candidates[path] * 1e3:.3g} ms"
                      + (f" against {others}" if others else ""))
        if why_not and path != "persistent":
            reason += f"; persistent: {why_not}"
        return Choice(path, reason, found if path == "persistent" else None, costs, spec)

    def explain(self, model=None, *, cell=None, hidden=None, batch=1, steps=1, dtype=None,
                gpu=None, truncate=None, num_layers=None, proj_size=0, dropout_state=False):
        """What a training step of ``model`` (or of a ``cell`` "elman"/"gru"/"lstm" with
        ``hidden`` units) on (``batch``, ``steps``) would run on ``gpu`` ("a100", "h100",
        "h200"; None: the current CUDA device, else an H100): the block grid, per block the
        path of the forward and of the backward sweep with the reason, the launches (grid,
        block, dynamic shared memory, registers, resident blocks) and the estimated times
        of every path, and the memory the recurrence holds. Returns a :class:`LaunchPlan`
        (``print`` it)."""
        from .gpu import launches
        from .sweeps import recompute

        if model is not None:
            cell = cell or getattr(model, "cell_type", None) or "elman"
            hidden = hidden or model.hidden_size
            dtype = dtype or model.dtype
            num_layers = num_layers or getattr(model, "num_layers", 1)
            proj_size = proj_size or getattr(model, "proj_size", 0) or 0
        if cell not in launches.FAMILIES or hidden is None:
            raise ValueError(f"explain needs a model, or cell (one of "
                             f"{', '.join(launches.FAMILIES)}) and hidden")
        import numpy

        dtype = numpy.dtype(dtype or "float32")
        spec = _spec_for(gpu)
        launch = _Named(spec)
        block = recompute.block_steps(batch, steps, self.checkpoint_every, self.block_steps)
        window = None if truncate is None or truncate >= steps - 1 else truncate + 1
        declined = None
        if proj_size:
            declined = "an LSTM with proj_size runs plain (the kernels compute h = o ⊙ tanh(c))"
        elif dropout_state:
            declined = "a dropout state mask is set (the kernels have none)"
        sizes = sorted({block, steps - (steps // block) * block} - {0}, reverse=True)
        rows = []
        for size in sizes:
            for phase in ("forward", "backward"):
                choice = self.choose(cell, phase, dtype, size, batch, hidden, launch,
                                     window=window, declined=declined)
                rows.append((size, phase, choice))
        gates = {"elman": 1, "gru": 3, "lstm": 4}[cell]
        state = 2 * hidden if cell == "lstm" else hidden
        memory = {"W per layer": gates * hidden * hidden * dtype.itemsize,
                  "states per block": block * batch * state * dtype.itemsize,
                  "gate cache per block": block * batch * gates * hidden * dtype.itemsize
                  * (cell != "elman")}
        return LaunchPlan(self, cell, hidden, batch, steps, dtype.name, spec, block,
                          -(-steps // block), num_layers or 1, truncate, rows, memory)


@functools.lru_cache(maxsize=4096)
def _chosen(plan, family, phase, dtype, steps, batch, hidden, launch, window, declined,
            allow_persistent):
    import numpy

    return plan._choose(family, phase, numpy.dtype(dtype), steps, batch, hidden, launch,
                        window=window, declined=declined, allow_persistent=allow_persistent)


def device_of_launcher(launch):
    """The :class:`gpurnn.engine.gpu.launches.GpuSpec` a launcher runs on: its ``device``, that
    of its CUDA ``device_attributes`` (:class:`gpurnn.engine.gpu.kernels.CudaLauncher`), else an
    emulated device of its ``multiprocessors`` with an H100's limits (the host emulation)."""
    from .gpu import launches

    spec = getattr(launch, "device", None)
    if spec is None and getattr(launch, "device_attributes", None) is not None:
        spec = launch.device = launches.device_spec(launch.device_attributes,
                                                    getattr(launch, "device_name", "cuda"))
    if spec is None:
        spec = launches.emulated_spec(getattr(launch, "multiprocessors", 132))
    return spec


def _spec_for(gpu):
    from .gpu import launches

    if gpu is not None:
        return launches.gpu_spec(gpu)
    try:
        from .arrays.backend import cupy            # the shim's CuPy: None without it

        device = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        return launches.device_spec(device.attributes,
                                    name.decode() if isinstance(name, bytes) else name)
    except Exception:  # no CuPy, driver or GPU: a named one
        return launches.GPUS["h100"]


class _Named:
    """A launcher stand-in for a named GPU: its spec, CUDA's block size, no driver."""

    block_size = 256

    def max_cooperative_blocks(self, kernel, dtype, block, shared_mem):
        raise NotImplementedError  # never asked: the spec's occupancy arithmetic decides

    def __init__(self, spec):
        self.device, self.multiprocessors = spec, spec.sms


@dataclasses.dataclass(frozen=True)
class Choice:
    """A block phase's path ("plain", "step" or "persistent"), why, the persistent launch
    (a :class:`gpurnn.engine.gpu.launches.Launch`, when it runs), the cost estimates and the
    device they are for."""

    path: str
    reason: str
    launch: object = None
    costs: object = None
    device: object = None


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """What :meth:`Plan.explain` found; ``str()`` is the report ``gpurnn plan`` prints."""

    plan: Plan
    cell: str
    hidden: int
    batch: int
    steps: int
    dtype: str
    device: object
    block_steps: int
    blocks: int
    num_layers: int
    truncate: object
    rows: list
    memory: dict

    def paths(self) -> dict:
        """{(block steps, phase): path}."""
        return {(size, phase): choice.path for size, phase, choice in self.rows}

    def __str__(self):
        from .gpu import launches

        spec = self.device
        lines = [f"launch plan: {self.cell} hidden {self.hidden}, batch {self.batch}, "
                 f"{self.steps} steps, {self.dtype}, {self.num_layers} layer(s), kernels="
                 f"{self.plan.kernels!r}, truncate={self.truncate}",
                 f"device: {spec.name} ({spec.arch}, {spec.sms} SMs, "
                 f"{spec.shared_per_block_optin // 1024} KiB shared/block opt-in)",
                 f"time grid: {self.blocks} block(s) of {self.block_steps} steps"]
        for size, phase, choice in self.rows:
            lines.append(f"  block of {size} steps, {phase}: {choice.path} ({choice.reason})")
            costs = choice.costs
            if costs is not None:
                estimate = ", ".join(f"{name} {costs[name] * 1e3:.3g} ms" if costs[name]
                                     is not None else f"{name} -" for name in
                                     ("plain", "step", "persistent"))
                lines.append(f"    estimates: {estimate}")
                family = self.cell
                if choice.path == "persistent":
                    lines.append(f"    launch {choice.launch.describe()}")
                else:
                    for one in launches.step_launches(family, phase, self.dtype, self.hidden,
                                                      self.batch, spec):
                        if choice.path == "step":
                            lines.append(f"    per step: cuBLAS GEMM, then {one.describe()}")
                    persistent = costs["launch"]
                    shown = persistent.fits or persistent.reason in choice.reason
                    lines.append(f"    persistent would be: {persistent.describe()}"
                                 + ("" if shown else f" ({persistent.reason})"))
        lines.append("memory: " + ", ".join(f"{name} {value / 2**20:.3g} MiB"
                                            for name, value in self.memory.items() if value))
        return "\n".join(lines)
