"""``gpurnn selftest --device cuda``: what only a GPU can show, in one command of a few minutes.

Four stages, each bounded in time so the whole fits in under 8 minutes on one H100/H200:

1. **suite** — the CuPy half of the test suite (``pytest -k cuda``: every test body that
   runs on NumPy and CuPy, the fused kernels on the GPU included), when the tests are there;
2. **exactness** — every cell (Elman with each activation, GRU, LSTM, a stack) in float64,
   loss and gradients on CuPy, plain and fused, against NumPy; full BPTT through the plan
   with the persistent kernels (``persistent=True``) and with ``kernels="auto"`` (the paths
   each ran are recorded); the plan's occupancy arithmetic against the driver's count;
3. **fused** — fused against plain on the GPU in float32; one step under bf16-mixed (plain
   and fused) and tf32 against float64 within the unit round-off bound, beside PyTorch's
   (cuDNN) step under ``torch.autocast`` (bfloat16) and TF32 against its own float64 step;
   the persistent Elman, GRU and
   LSTM forward and backward against the per-step ones (Elman's also captured in one CUDA
   graph and replayed); a whole training step captured by
   :class:`gpurnn.engine.gpu.graphs.StepGraph` and replayed against the uncaptured steps (a
   refusal is recorded with its reason); the optimizer kernels against their NumPy updates;
   the diagonal cells' scan kernels against the loops, and timed against the array-op scan
   and the loop;
4. **sweep** (:mod:`gpurnn.tools.gpu_sweep`) — training throughput (forward, BPTT, SGD
   update; tokens/s) against the sequence length T, gpurnn plain and fused beside PyTorch's
   cuDNN ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` on the same sizes, with peak GPU memory,
   TF32 off and on (matched: ``CUPY_TF32`` and ``Plan(precision="tf32")`` for gpurnn,
   ``torch.backends.{cudnn,cuda.matmul}.allow_tf32`` for PyTorch), each TF32 setting in its
   own process, and in bf16-mixed against ``torch.autocast(dtype=torch.bfloat16)``; plus
   each cell's recurrence alone (forward and backward sweep) at a small batch, per-step
   launches against the persistent kernels.

It writes ``selftest.json``, ``sweep.json`` and ``sweep.png`` under ``--output``
(default ``benchmarks/results/gpu``) and prints one summary table; the exit status is 0
only when every check passed. Without a usable GPU it stops at once with one line. Stages
2–4 run in worker processes that record each result as it completes: a hang or a crash
costs the rest of that stage only, and is reported. ``--dry-run`` runs every stage on the
CPU with the kernels emulated and tiny sizes, writing under ``gpurnn-selftest-dry-run/`` in
the current folder unless ``--output`` says where; its timings are the host emulation's and
say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy

from ..engine.arrays import backend
from ..engine.arrays.precision import unit_roundoff
from ..engine.sweeps import bptt
from ..engine.gpu import fused, persistent
from ..engine.models.factory import make_model
from ..engine.plan import Plan
from ..training.optim import make_optimizer
from .arguments import UsageError
from .gpu_sweep import LENGTHS, SWEEP, plot_sweep, summary_table, sweep

__all__ = ["add_arguments", "execute", "run", "exactness_checks", "fused_checks",
           "precision_checks", "scan_checks", "suite", "step_graph_check", "main"]

DEFAULT_OUTPUT = pathlib.Path("benchmarks") / "results" / "gpu"
DRY_RUN_OUTPUT = pathlib.Path("gpurnn-selftest-dry-run")   # not the kept results
BUDGET_S = 450            # the whole command, startup excluded: under 8 minutes
SUITE_S = 170             # at most this for the test suite
EXACT = 1e-10             # float64, CuPy (cuBLAS, FMA) against NumPy: rounding only
FUSED32 = 1e-5            # float32, fused against plain on the GPU
MIXED_U = 8               # a 16-bit or TF32 step's gradients against float64, in units of u
                          # (normwise, the worst parameter: tests/engine/test_precision.py)


def _relative(got, expected) -> float:
    got = numpy.asarray(backend.to_host(got), numpy.float64)
    expected = numpy.asarray(backend.to_host(expected), numpy.float64)
    return float(numpy.abs(got - expected).max() / max(numpy.abs(expected).max(), 1e-300))


def _rows(state):
    return numpy.concatenate([backend.to_host(s) for s in state], axis=-1) \
        if isinstance(state, tuple) else backend.to_host(state)


# ------------------------------------------------------------------------ checks
CELLS = [("elman", {"activation": a}) for a in ("tanh", "relu", "sigmoid", "identity")] + [
    ("gru", {}), ("lstm", {}), ("lstm", {"num_layers": 2, "embedding_size": 6})]


def _loss_and_grads(cell, kw, dtype, device, kernels, data, truncate=3, plan=None,
                    paths=None):
    """The model's loss and gradients; ``paths`` (a list), if given, receives what each
    phase ran as ("forward persistent", ...)."""
    model = make_model(cell, 13, 8, 13, dtype=dtype, device=device, seed=1, **kw)
    model.plan = plan or Plan(kernels=kernels)
    x, y, mask = data
    result = model.loss_and_grads(x, y, truncate=truncate, mask=mask)
    if paths is not None:
        paths.extend(sorted({f"{phase} {choice.path}" for c in getattr(model.cell, "cells",
                                                                       [model.cell])
                             for phase, choice in getattr(c, "last_choice", {}).items()}))
    return result


# Through the plan, full BPTT in blocks of 5 steps (the carry crosses blocks): the persistent
# kernels wherever they fit, and the cost model's choice.
PLANNED = (("persistent", Plan(kernels="fused", persistent=True, block_steps=5)),
           ("auto", Plan(kernels="auto", block_steps=5)))


def _data(rng):
    mask = numpy.ones((4, 12))
    mask[1, 9:] = 0
    return rng.integers(0, 13, (4, 12)), rng.integers(0, 13, (4, 12)), mask


def _compare(name, got, expected, tolerance) -> dict:
    errors = [_relative(got.loss, expected.loss), _relative(_rows(got.last_hidden),
                                                           _rows(expected.last_hidden))]
    errors += [_relative(got.grads[k], v) for k, v in expected.grads.items()]
    worst = max(errors)
    return {"check": name, "error": worst, "tolerance": tolerance, "passed": worst <= tolerance}


def exactness_checks(device="cuda"):
    """float64 loss, gradients and last state of every cell on ``device``, plain and fused,
    against NumPy; yields one verdict per check as it completes."""
    rng = numpy.random.default_rng(0)
    for cell, kw in CELLS:
        data = _data(rng)
        expected = _loss_and_grads(cell, kw, "float64", "cpu", "plain", data)
        for kernels in ("plain", "fused"):
            got = _loss_and_grads(cell, kw, "float64", device, kernels, data)
            yield _compare(f"float64 {cell} {kw or ''} {kernels} vs NumPy".replace("  ", " "),
                           got, expected, EXACT)
        full = _loss_and_grads(cell, kw, "float64", "cpu", "plain", data, truncate=None)
        for name, plan in PLANNED:
            paths = []
            got = _loss_and_grads(cell, kw, "float64", device, None, data, None, plan, paths)
            verdict = _compare(f"float64 {cell} {kw or ''} full BPTT {name} plan vs NumPy"
                               .replace("  ", " "), got, full, EXACT)
            verdict["paths"] = paths                     # what the plan ran, per phase
            yield verdict
    if backend.get_device(device).kind == "cuda":
        yield from occupancy_checks()


def occupancy_checks(hidden_sizes=(64, 256, 1024), batches=(1, 64)):
    """The plan's occupancy arithmetic (gpurnn.engine.gpu.launches) against the driver's count
    of resident blocks, for every persistent kernel the plan could launch on this GPU."""
    from ..engine.gpu import launches
    from ..engine.plan import device_of_launcher

    launch = fused.launcher_for(Plan(kernels="fused"), backend.get_device("cuda").xp.zeros(1))
    spec = device_of_launcher(launch)
    for (family, phase), kernel in launches.PERSISTENT_KERNELS.items():
        for dtype in ("float32", "float64"):
            for hidden in hidden_sizes:
                for batch in batches:
                    predicted = launches.persistent_launch(kernel, dtype, hidden, batch, spec,
                                                           launch.block_size)
                    if not predicted.fits:
                        continue
                    driver = launch.max_cooperative_blocks(kernel, numpy.dtype(dtype),
                                                           predicted.block, predicted.shared)
                    ours = predicted.occupancy.blocks_per_sm * spec.sms
                    yield {"check": f"occupancy {kernel} {dtype} H={hidden} B={batch}: plan "
                                    f"{ours} resident blocks, driver {driver}",
                           "error": None, "passed": ours == driver and driver >= predicted.grid}


PERSISTENT_SHAPES = ((50, 8, 256), (20, 3, 1024))  # (steps, batch, hidden) checked


def fused_checks(device="cuda", persistent_shapes=None):
    """float32 fused against plain on ``device``; the persistent Elman, GRU and LSTM forward
    and backward against the per-step ones for each (steps, batch, hidden); the optimizer
    kernels against NumPy (float64); yields one verdict per check as it completes."""
    rng = numpy.random.default_rng(1)
    for cell, kw in CELLS:
        data = _data(rng)
        plain = _loss_and_grads(cell, kw, "float32", device, "plain", data)
        got = _loss_and_grads(cell, kw, "float32", device, "fused", data)
        yield _compare(f"float32 {cell} {kw or ''} fused vs plain".replace("  ", " "), got,
                       plain, FUSED32)
    xp = backend.get_device(device).xp
    for dtype, tolerance in (("float64", EXACT), ("float32", FUSED32)):
        for shape in persistent_shapes or PERSISTENT_SHAPES:
            for check in (_persistent_elman, _persistent_gru, _persistent_lstm):
                try:
                    yield from check(xp, rng, dtype, tolerance, *shape)
                except ValueError as error:  # W's slices do not fit on this GPU's chip
                    yield {"check": f"{dtype} {check.__name__[1:]} {shape}", "passed": True,
                           "error": None, "skipped": str(error)}
    if backend.get_device(device).kind == "cuda":   # graph capture needs a GPU
        yield _graph_check(rng)
        yield step_graph_check(device)
    for name in fused.OPTIMIZERS:
        start = rng.standard_normal((64, 33))
        grads = [rng.standard_normal(start.shape) for _ in range(3)]
        finals = []
        for dev, kernels in (("cpu", "plain"), (device, "fused")):
            param = {"p": backend.to_device(start, dev)}
            opt = make_optimizer(name, 0.01)
            opt.plan = Plan(kernels=kernels)
            for g in grads:
                opt.step(param, {"p": backend.to_device(g, dev)})
            finals.append(param["p"])
        error = _relative(finals[1], finals[0])
        yield {"check": f"float64 {name} update, fused vs NumPy", "error": error,
               "tolerance": EXACT, "passed": error <= EXACT}


PRECISION_STEPS = (("bf16-mixed", "plain"), ("bf16-mixed", "fused"), ("tf32", "plain"))


def _normwise(got, exact) -> float:
    """The worst parameter's ‖g̃ − g‖ / ‖g‖ (parameters with a zero gradient left out)."""
    errors = [numpy.linalg.norm(numpy.asarray(backend.to_host(got[k]), numpy.float64) - g)
              / numpy.linalg.norm(g) for k, g in exact.items() if numpy.linalg.norm(g) > 0]
    return float(max(errors))


def precision_checks(device="cuda", with_torch=True, cells=("elman", "gru", "lstm"),
                     steps=PRECISION_STEPS):
    """One training step of each cell (embedding 16, H 32, B 8, T 24: the sizes of
    tests/engine/test_precision.py) under bf16-mixed, plain and fused, and tf32, against a
    float64 model with the same weights: the worst parameter's normwise gradient error in
    units of the precision's u (2^-8, 2^-11), within :data:`MIXED_U`. Beside it, as
    ``torch_error`` (recorded, not judged), PyTorch's step on the same weights under
    ``torch.autocast`` with bfloat16 or with TF32 allowed, against its own float64 step
    (cuDNN on a GPU). On the CPU tf32 is float32 in both (an error far under u).
    ``steps``: the (precision, kernels) pairs to run."""
    rng = numpy.random.default_rng(2)
    B, T, V, H = 8, 24, 30, 32
    x, y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    for cell in cells:
        model = make_model(cell, V, H, V, embedding_size=16, seed=1, device=device)
        reference = model.copy(dtype="float64", device="cpu")      # the same weights
        exact = reference.loss_and_grads(x, y).grads
        torch_errors = _torch_precision_errors(reference, x, y, device) if with_torch else {}
        for precision, kernels in steps:
            model.plan = Plan(kernels=kernels, precision=precision)
            got = model.loss_and_grads(backend.to_device(x, device),
                                       backend.to_device(y, device))
            error = _normwise(got.grads, exact) / unit_roundoff(precision)
            record = {"check": f"{precision} {cell} {kernels} step vs float64 (in u)",
                      "error": error, "tolerance": MIXED_U, "passed": error <= MIXED_U}
            if precision in torch_errors:
                record["torch_error"] = torch_errors[precision]
            yield record


def _torch_precision_errors(reference, x, y, device) -> dict:
    """{precision: PyTorch's worst normwise gradient error in u} for bf16-mixed (autocast)
    and tf32 (``allow_tf32``), each against PyTorch's float64 step on ``reference``'s
    weights; {} without PyTorch (or without its CUDA build on a GPU)."""
    try:
        import torch
    except ImportError:
        return {}
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        return {}
    dev = torch.device("cuda" if on_gpu else "cpu")
    modules = [m for m in reference.to_torch() if m is not None]   # rnn, linear, embedding
    tokens, targets = (torch.as_tensor(a, device=dev) for a in (x, y))

    def grads(dtype, autocast):
        rnn, linear, embedding = (m.to(dev, dtype) for m in modules)    # (in place)
        for m in (rnn, linear, embedding):
            m.zero_grad(set_to_none=True)
        with autocast:
            out = linear(rnn(embedding(tokens))[0])
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                                     targets.reshape(-1))
        loss.backward()
        return {f"{i}.{n}": p.grad.double().cpu().numpy()
                for i, m in enumerate((rnn, linear, embedding)) for n, p in m.named_parameters()}

    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [flag.allow_tf32 for flag in flags]
    errors = {}
    try:
        for flag in flags:
            flag.allow_tf32 = False
        exact = grads(torch.float64, contextlib.nullcontext())
        for precision, tf32, autocast in (
                ("bf16-mixed", False, lambda: torch.autocast(dev.type, dtype=torch.bfloat16)),
                ("tf32", True, contextlib.nullcontext)):
            for flag in flags:
                flag.allow_tf32 = tf32
            try:   # (cuDNN may lack a bfloat16 RNN): the reason, and gpurnn's check goes on
                errors[precision] = (_normwise(grads(torch.float32, autocast()), exact)
                                     / unit_roundoff(precision))
            except Exception as error:
                errors[precision] = f"{type(error).__name__}: {error}"
    finally:
        for flag, value in zip(flags, before):
            flag.allow_tf32 = value
    return errors


SCAN_SHAPE = (1024, 8, 256)   # (steps, batch, hidden) of the scan kernels' check


def scan_checks(device="cuda", shape=SCAN_SHAPE, repeats=5):
    """The diagonal cells' scan kernels (:mod:`gpurnn.engine.gpu.scan`) against the loops in
    float64 and float32 (forward within their rounding bound, the adjoint to EXACT/FUSED32),
    then the forward timed against the array-op scan and the loop (float32, medians of
    ``repeats`` interleaved rounds); yields one verdict per check."""
    from ..engine.gpu import scan as gpu_scan
    from ..engine.sweeps import scan

    xp = backend.get_device(device).xp
    rng = numpy.random.default_rng(5)
    where = "T={} B={} H={}".format(*shape)
    for dtype, tolerance in (("float64", EXACT), ("float32", FUSED32)):
        a = xp.asarray(rng.uniform(-1, 1, shape), dtype=dtype)
        b, d = (xp.asarray(rng.standard_normal(shape), dtype=dtype) for _ in range(2))
        h0 = xp.asarray(rng.standard_normal(shape[1:]), dtype=dtype)
        launch = fused.launcher_for(Plan(kernels="fused"), b)
        bound = gpu_scan.BOUND_FACTOR * scan.rounding_bound(a, b, h0, numpy.finfo(dtype).eps / 2)
        got = gpu_scan.linear_scan(a, b, h0, launch=launch)
        excess = float((xp.abs(got - scan.linear_loop(a, b, h0)) / bound).max())
        yield {"check": f"{dtype} scan kernels forward {where}, error / bound", "error": excess,
               "tolerance": 1.0, "passed": excess <= 1.0}
        G, before = gpu_scan.reverse_scan(a, d, h0, launch=launch)
        G_loop, before_loop = scan.reverse_loop(a, d, h0)
        error = max(_relative(G, G_loop), _relative(before, before_loop))
        yield {"check": f"{dtype} scan kernels adjoint {where} vs loop", "error": error,
               "tolerance": tolerance, "passed": error <= tolerance}
    runs = {"kernels": lambda: gpu_scan.linear_scan(a, b, h0, launch=launch),
            "array scan": lambda: scan.linear_scan(a, b, h0),
            "loop": lambda: scan.linear_loop(a, b, h0)}
    medians = _interleaved_medians(device, runs, repeats)
    yield {"check": f"float32 scan forward {where}: kernels "
                    f"{medians['kernels'] * 1e3:.3g} ms, array scan "
                    f"{medians['array scan'] * 1e3:.3g}, loop {medians['loop'] * 1e3:.3g}",
           "error": None, "passed": True, "seconds": medians}
    yield from _paragru_checks(device, shape, repeats)


def _interleaved_medians(device, runs, repeats) -> dict:
    """Median seconds of each of ``runs`` {name: callable}, timed in ``repeats`` interleaved
    rounds after one untimed round (which compiles and allocates), synchronised."""
    seconds = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name, run in runs.items():
            backend.synchronize(device)
            start = time.perf_counter()
            run()
            backend.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: float(numpy.median(times[1:])) for name, times in seconds.items()}


def _paragru_checks(device, shape, repeats):
    """The ParaGRU's step with its forward by Newton in time on the scan kernels (fused
    plan) against the loop (plain plan), float64, and the float32 forward timed both ways;
    the verdicts carry the Newton iterations."""
    from ..engine.recurrences.paragru import ParaGRU
    steps, batch, hidden = shape[0], shape[1], min(shape[2], 64)
    rng = numpy.random.default_rng(6)
    xp = backend.get_device(device).xp
    x = rng.standard_normal((batch, steps, 16))
    y = rng.standard_normal((batch, steps, 16))
    where = f"T={steps} B={batch} H={hidden}"
    models = {}
    for dtype in ("float64", "float32"):
        model = ParaGRU(16, hidden, 16, output="identity", dtype=dtype, device=device, seed=4)
        models[dtype] = (model, xp.asarray(x, dtype=dtype), xp.asarray(y, dtype=dtype))
    model, xd, yd = models["float64"]
    newton, loop = Plan(time="scan", kernels="fused"), Plan(time="loop")
    model.plan = newton
    fast = model.loss_and_grads(xd, yd)
    model.plan = loop
    plain = model.loss_and_grads(xd, yd)
    error = max(_relative(fast.grads[name], plain.grads[name]) for name in plain.grads)
    log = model.newton_log
    yield {"check": f"float64 ParaGRU Newton (scan kernels) {where} vs loop, "
                    f"{min(log.iterations)}-{max(log.iterations)} iterations",
           "error": error, "tolerance": EXACT, "passed": error <= EXACT and not log.fallbacks,
           "iterations": list(log.iterations), "fallbacks": log.fallbacks}
    model, xs, _ = models["float32"]

    def forward(plan):
        model.plan = plan
        model.forward(xs)

    runs = {"Newton": lambda: forward(newton), "loop": lambda: forward(loop)}
    medians = _interleaved_medians(device, runs, repeats)
    yield {"check": f"float32 ParaGRU forward {where}: Newton {medians['Newton'] * 1e3:.3g} ms "
                    f"({max(model.newton_log.iterations)} iterations), loop "
                    f"{medians['loop'] * 1e3:.3g}",
           "error": None, "passed": True, "seconds": medians}


def _verdicts(name, dtype, tolerance, steps, batch, hidden, errors) -> list:
    return [{"check": f"{dtype} persistent {name} {part} T={steps} B={batch} H={hidden}",
             "error": error, "tolerance": tolerance, "passed": error <= tolerance}
            for part, error in errors]


def _persistent_elman(xp, rng, dtype, tolerance, steps, batch, hidden) -> list:
    """The persistent Elman forward and backward against the per-step ones."""
    from ..engine.recurrences.cells import ElmanCell
    params = {"weight_hh": xp.asarray(rng.standard_normal((hidden, hidden)) / hidden ** 0.5,
                                      dtype=dtype)}
    xin = xp.asarray(rng.standard_normal((steps, batch, hidden)), dtype=dtype)
    h0 = xp.asarray(rng.standard_normal((batch, hidden)), dtype=dtype)
    dstates = xp.asarray(rng.standard_normal(xin.shape), dtype=dtype)
    cell = ElmanCell("tanh")
    expected = cell.forward(params, xin, h0, steps).copy()
    deltas = bptt.sweep(cell.backward_stepper(params, xin, h0, expected), dstates)
    launch = fused.launcher_for(Plan(kernels="fused"), xin)
    got = persistent.elman_forward(params, xin, h0, "tanh", launch)
    got_deltas = persistent.elman_backward(params, expected, dstates, "tanh", launch)
    return _verdicts("Elman", dtype, tolerance, steps, batch, hidden,
                     [("forward", _relative(got, expected)),
                      ("backward", _relative(got_deltas, deltas))])


def _persistent_gated(cell_name, xp, rng, dtype, tolerance, steps, batch, hidden) -> list:
    """The persistent GRU or LSTM forward and backward (with the plain weight gradients
    after them) against the per-step path."""
    from ..engine.recurrences.gated import GRUCell, LSTMCell
    cell_class, G, S = (GRUCell, 3, 1) if cell_name == "gru" else (LSTMCell, 4, 2)

    def draw(*shape, scale=1.0):
        return xp.asarray(rng.standard_normal(shape) * scale, dtype=dtype)

    params = {"weight_ih": draw(G * hidden, 16), "bias_ih": draw(G * hidden),
              "weight_hh": draw(G * hidden, hidden, scale=hidden ** -0.5),
              "bias_hh": draw(G * hidden)}
    inputs, h0 = draw(steps, batch, 16), draw(batch, S * hidden)
    dstates = draw(steps, batch, S * hidden)
    launch = fused.launcher_for(Plan(kernels="fused"), h0)
    results = []
    for one_launch in (False, True):
        cell = cell_class()
        xin = cell.project_inputs(params, inputs)
        if one_launch:
            states = getattr(persistent, f"{cell_name}_forward")(cell, params, xin, h0,
                                                                       launch)
            deltas = getattr(persistent, f"{cell_name}_backward")(
                cell, params, xin, h0, states, dstates, launch)
        else:
            states = cell.forward(params, xin, h0, steps)
            deltas = bptt.sweep(cell.backward_stepper(params, xin, h0, states), dstates)
        grads = cell.param_grads(params, inputs, xin, h0, states, deltas)
        results.append((states.copy(), grads["weight_hh"]))
    return _verdicts(cell_name.upper(), dtype, tolerance, steps, batch, hidden,
                     [("forward", _relative(results[1][0], results[0][0])),
                      ("backward (dW_hh)", _relative(results[1][1], results[0][1]))])


def _persistent_gru(*args) -> list:
    return _persistent_gated("gru", *args)


def _persistent_lstm(*args) -> list:
    return _persistent_gated("lstm", *args)


def _graph_check(rng, steps=40, batch=8, hidden=256) -> dict:
    """The persistent forward and backward captured in one CUDA graph (no cuBLAS inside:
    CuPy refuses it during capture), replayed, and compared with the plain path."""
    cupy = backend.cupy
    from ..engine.recurrences.cells import ElmanCell
    name = f"float64 persistent forward+backward in a CUDA graph T={steps} B={batch} H={hidden}"
    try:
        W = rng.standard_normal((hidden, hidden)) / hidden ** 0.5
        params = {"weight_hh": cupy.asarray(W)}
        xin = cupy.asarray(rng.standard_normal((steps, batch, hidden)))
        dstates = cupy.asarray(rng.standard_normal((steps, batch, hidden)))
        h0 = cupy.asarray(rng.standard_normal((batch, hidden)))
        cell = ElmanCell("tanh")
        expected = cell.forward(params, xin, h0, steps).copy()
        expected_deltas = bptt.sweep(cell.backward_stepper(params, xin, h0, expected), dstates)
        launch = fused.launcher_for(Plan(kernels="fused"), xin)
        states, deltas = cupy.empty_like(xin), cupy.empty_like(xin)
        g, barrier = cupy.empty_like(h0), cupy.zeros(2, dtype=cupy.uint32)

        def run():
            persistent.elman_forward(params, xin, h0, "tanh", launch, out=states,
                                           barrier=barrier)
            persistent.elman_backward(params, states, dstates, "tanh", launch,
                                            out=deltas, g=g, barrier=barrier)
        run()                                                   # compiled before capture
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            run()
            graph = stream.end_capture()
        states.fill(0)
        deltas.fill(0)
        cupy.cuda.Device().synchronize()                        # the fills, on another stream
        graph.launch(stream=stream)
        stream.synchronize()
        error = max(_relative(states, expected), _relative(deltas, expected_deltas))
    except Exception as failure:  # capture refused, launch failed: report it
        return {"check": name, "passed": False, "error": None,
                "detail": f"{type(failure).__name__}: {failure}"}
    return {"check": name, "error": error, "tolerance": EXACT, "passed": error <= EXACT}


def step_graph_check(device="cuda", cell="gru", steps=5, batch=4, hidden=64) -> dict:
    """A whole training step (loss, gradients, fused SGD) captured by
    :class:`gpurnn.engine.gpu.graphs.StepGraph` and replayed, against the same steps uncaptured
    (float64). A refusal (CuPy refusing cuBLAS during capture, say) is reported with its
    reason as a skip, never raised."""
    from ..engine.gpu import graphs

    name = f"float64 {cell} training step in a CUDA graph, replayed vs uncaptured"
    try:
        plan = Plan(kernels="fused", persistent=True, graph=True)
        pair = []
        for _ in range(2):
            model = make_model(cell, 11, hidden, 11, dtype="float64", seed=3, device=device)
            model.plan = plan
            opt = make_optimizer("sgd", 0.1)
            opt.plan = plan
            pair.append((model, opt))
        (m1, o1), (m2, o2) = pair
        step = graphs.StepGraph(m2, o2)
        rng = numpy.random.default_rng(4)
        modes, worst = [], 0.0
        for _ in range(4):
            x, y = (backend.to_device(rng.integers(0, 11, (batch, steps)), device)
                    for _ in range(2))
            expected = m1.loss_and_grads(x, y)
            o1.step(m1.params, expected.grads)
            got = step(x, y)
            modes.append(got.mode)
            worst = max(worst, abs(got.loss - expected.loss) / abs(expected.loss))
        worst = max([worst] + [_relative(m2.params[k], v) for k, v in m1.params.items()])
    except Exception as failure:  # a launch failed: report it
        return {"check": name, "passed": False, "error": None,
                "detail": f"{type(failure).__name__}: {failure}"}
    record = {"check": name, "error": worst, "tolerance": EXACT, "modes": modes,
              "passed": worst <= EXACT}
    if "replay" not in modes:      # refused or failed: the steps ran eager, and say why
        record["skipped"] = step.reason
    return record


def suite(timeout, require_ran=True) -> dict:
    """The CuPy half of the test suite (``pytest -k cuda``), where the tests are present;
    with ``require_ran``, a run in which more tests were skipped than passed (CuPy unusable
    in the test process) fails too."""
    root = pathlib.Path(__file__).resolve().parents[2]
    if not (root / "tests").is_dir():
        return {"check": "pytest -k cuda", "passed": False, "error": None,
                "detail": f"no tests/ next to the package ({root}): run from a checkout"}
    command = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider",
               "-m", "not slow", "tests"]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        output = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else \
            stopped.stdout or ""
        return {"check": "pytest -k cuda", "passed": False, "error": None,
                "detail": f"did not finish in {timeout:.0f} s", "output_tail": output[-4000:]}
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {**_suite_verdict(done.returncode, last, require_ran),
            "output_tail": done.stdout[-4000:] + done.stderr[-2000:]}


def _suite_verdict(returncode, summary, require_ran) -> dict:
    """pytest's exit status and summary line as a check (see :func:`suite`)."""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|skipped)", summary)}
    ran = counts.get("passed", 0) > counts.get("skipped", 0)   # mostly run, not skipped
    passed = returncode == 0 and (ran or not require_ran)
    detail = summary if ran or not require_ran else f"mostly skipped (no GPU?): {summary}"
    return {"check": "pytest -k cuda", "passed": passed, "error": None, "detail": detail}


# ---------------------------------------------------------------------- command
# --dry-run: every stage on the CPU, kernels emulated (gpurnn.engine.gpu.kernels.host), tiny sizes:
# the command's own plumbing checked before a GPU is spent on it.
DRY_RUN = dict(persistent_shapes=((4, 2, 7),), scan_shape=(10, 2, 3), lengths=(3, 5),
               repeats=1, with_torch=False,
               sizes=dict(vocab=9, hidden=4, batch=2, small_batch=1))
CHECKS_S = 150            # at most this for the exactness and fused checks
DRY_RUN_NOTE = ("dry run: every tokens/s and ratio here is the CPU emulating the kernels at "
                "tiny sizes and says nothing about GPU speed (emulated, fused runs far slower "
                "than plain); gpurnn selftest --device cuda on a GPU measures it")


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--device", default="cuda", metavar="DEVICE",
                        help="the GPU to check: cuda or cuda:N (default: cuda)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help=f"folder for the JSON results and the plot (default: "
                             f"{DEFAULT_OUTPUT}, or {DRY_RUN_OUTPUT} in the current folder "
                             f"with --dry-run)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="SECONDS",
                        help=f"seconds for the whole command (default: {BUDGET_S})")
    parser.add_argument("--no-suite", action="store_true", help="skip the pytest stage")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every stage on the CPU with the kernels emulated and tiny "
                             "sizes: checks the command itself; its timings say nothing "
                             "about a GPU")


def _worker(argv, name, output, timeout, env=None):
    """Run a stage in a fresh process (``python -m gpurnn.tools.selftest --NAME-worker``),
    which records each result as it completes: a hang or crash costs only the rest of that
    stage. Returns (records, problem or None)."""
    out = output / f"{name}.part.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "gpurnn.tools.selftest", f"--{name}-worker", *argv,
               str(out)]
    problem = None
    try:
        subprocess.run(command, env=env, check=True, timeout=max(10.0, timeout))
    except subprocess.TimeoutExpired:
        problem = (f"{name} process stopped after {timeout:.0f} s: the item after the last "
                   f"one recorded did not finish")
    except (subprocess.SubprocessError, OSError) as error:
        problem = f"{name} process failed: {error}"
    records = json.loads(out.read_text()) if out.exists() else []
    out.unlink(missing_ok=True)
    return records, problem


def execute(args) -> int:
    if args.dry_run:
        output = pathlib.Path(args.output or DRY_RUN_OUTPUT)
        _refuse_gpu_results(output)
        return run(backend.Device("cpu"), output, args.budget, with_suite=not args.no_suite,
                   dry_run=True)
    hint = "run gpurnn selftest --dry-run to check the command on the CPU"
    wants_gpu = re.fullmatch(r"cuda(:\d+)?|auto", args.device.strip().lower())
    problem = backend.cuda_unavailable_reason()
    if wants_gpu and problem is not None:
        raise UsageError(f"no usable GPU: {problem}; {hint}")
    try:
        device = backend.get_device(args.device)
    except ValueError as error:                     # cuda:N beyond the GPUs visible
        raise UsageError(f"{error}; {hint}") from None
    if device.kind != "cuda":
        raise UsageError(f"selftest checks the GPU path: give --device cuda or cuda:N, or "
                         f"{hint}")
    return run(device, pathlib.Path(args.output or DEFAULT_OUTPUT), args.budget,
               with_suite=not args.no_suite)


def _refuse_gpu_results(output):
    """A dry run never overwrites the results of a run on a GPU."""
    try:
        machine = json.loads((output / "selftest.json").read_text())["machine"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not machine.get("dry_run", True):
        raise UsageError(f"--output {output} holds the results of a run on a GPU; a dry run "
                         f"writes elsewhere (default: {DRY_RUN_OUTPUT})")


def run(device, output, budget=BUDGET_S, with_suite=True, dry_run=False) -> int:
    """Every stage on ``device`` (a :class:`gpurnn.engine.arrays.backend.Device`); writes the
    results under ``output`` (after each stage, so an interrupted run keeps what it did),
    prints the table, returns the exit status."""
    start = time.time()
    from .bench import machine_info

    output.mkdir(parents=True, exist_ok=True)
    budget_end = start + budget
    info = {**machine_info(), "device": str(device), "dry_run": dry_run,
            "sweep_sizes": DRY_RUN["sizes"] if dry_run else SWEEP,
            "lengths": DRY_RUN["lengths"] if dry_run else LENGTHS,
            "CUPY_TF32 (checks)": os.environ.get("CUPY_TF32", "unset")}
    if dry_run:
        info["note"] = DRY_RUN_NOTE
    checks, rows = [], []

    def save():
        info["seconds"] = round(time.time() - start, 1)
        (output / "selftest.json").write_text(json.dumps({"machine": info, "checks": checks},
                                                         indent=1) + "\n")
        (output / "sweep.json").write_text(json.dumps({"machine": info, "rows": rows},
                                                      indent=1) + "\n")

    if with_suite:
        checks.append(suite(min(SUITE_S, budget / 3), require_ran=not dry_run))
        save()
    records, problem = _worker([str(device), str(int(dry_run))], "checks", output,
                               min(CHECKS_S, budget / 3))
    checks += records
    if problem:
        checks.append({"check": "checks", "passed": False, "error": None, "detail": problem})
    save()
    for index, tf32 in enumerate((False, True)):
        deadline = time.time() + (budget_end - time.time()) / (2 - index) - 20
        records, problem = _worker([str(device), str(int(tf32)), str(deadline),
                                    str(int(dry_run))], "sweep", output,
                                   deadline - time.time() + 60,
                                   env={**os.environ, "CUPY_TF32": str(int(tf32))})
        rows += records
        if problem:
            rows.append({"cell": "-", "T": 0, "B": 0, "H": 0, "system": "sweep", "tf32": tf32,
                         "step": "train", "error": problem})
        save()
    plot = plot_sweep(rows, output / "sweep.png", title=DRY_RUN_NOTE if dry_run else None)
    if dry_run:
        print(DRY_RUN_NOTE)
    print(summary_table(checks, rows))
    if dry_run:
        print(DRY_RUN_NOTE)
    print(f"wrote {output / 'selftest.json'}, {output / 'sweep.json'}"
          + (f", {plot}" if plot else "") + f" in {time.time() - start:.0f} s")
    return 0 if all(c["passed"] for c in checks) else 1


def _emulation(dry_run):
    """Under --dry-run, fused plans run through the host emulation of the kernels."""
    if not dry_run:
        return contextlib.nullcontext()
    from ..engine.gpu.kernels.host import HostLauncher
    return fused.emulate_on_host(HostLauncher(block_size=8))


def main(argv=None) -> int:
    """The entry of the stages' worker processes (``python -m gpurnn.tools.selftest
    --NAME-worker ...``), which write their records to the last argument as they go."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--checks-worker"]:
        device, dry, out = argv[1], bool(int(argv[2])), pathlib.Path(argv[3])
        records = []
        shapes = DRY_RUN["persistent_shapes"] if dry else None
        scan_shape = DRY_RUN["scan_shape"] if dry else SCAN_SHAPE
        with backend.get_device(device).use(), _emulation(dry):
            for stage in (exactness_checks(device), fused_checks(device, shapes),
                          precision_checks(device), scan_checks(device, scan_shape)):
                try:
                    for record in stage:
                        records.append(record)
                        out.write_text(json.dumps(records))
                except Exception as error:  # report it as a failed check, go on
                    records.append({"check": "checks", "passed": False, "error": None,
                                    "detail": f"{type(error).__name__}: {error}"})
                    out.write_text(json.dumps(records))
        return 0
    if argv[:1] == ["--sweep-worker"]:
        device, tf32, deadline, dry, out = argv[1:6]
        dry = bool(int(dry))
        sizes = ({k: DRY_RUN[k] for k in ("lengths", "sizes", "repeats", "with_torch")}
                 if dry else {})
        with backend.get_device(device).use(), _emulation(dry):
            sweep(device, tf32=bool(int(tf32)), deadline=float(deadline),
                  progress=lambda rows: pathlib.Path(out).write_text(json.dumps(rows)),
                  **sizes)
        return 0
    # Anything else is the command itself, which the gpurnn command parses.
    print("gpurnn selftest is run as `gpurnn selftest ...` or `python -m gpurnn selftest ...`",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
