"""The GPU throughput sweep of ``gpurnn selftest``, and its table and plot.

Training throughput (forward, BPTT, SGD update; tokens/s) against the sequence length T:
gpurnn plain and fused beside PyTorch's cuDNN ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` on the
same sizes (an embedding, the recurrent layer, a linear layer and the cross-entropy), with
peak GPU memory; plus each cell's recurrence alone at a small batch, per-step launches
against the persistent kernels. One call measures one TF32 setting: the process's
``CUPY_TF32`` (read by CuPy at import) must match ``tf32``, which sets PyTorch's; with TF32
on, gpurnn's steps run ``Plan(precision="tf32")``. With TF32 off the training steps are also
measured in mixed precision, gpurnn's ``Plan(precision="bf16-mixed")`` beside the same
PyTorch modules under ``torch.autocast(dtype=torch.bfloat16)``; each row says its
``precision``. On the CPU the same code runs with PyTorch's CPU modules (what the tests use).
"""
from __future__ import annotations

import sys
import time

import numpy

from ..engine.arrays import backend
from ..engine.sweeps import bptt
from ..engine.gpu import fused, persistent
from ..engine.models.factory import make_model
from ..engine.plan import Plan
from ..training.optim import make_optimizer

__all__ = ["LENGTHS", "SWEEP", "sweep", "summary_table", "plot_sweep"]

LENGTHS = (64, 256, 1024)
SWEEP = dict(vocab=1024, hidden=256, batch=64, small_batch=8)


def _gpurnn_step(cell, steps, batch, kernels, device, sizes, precision="float32"):
    model = make_model(cell, sizes["vocab"], sizes["hidden"], sizes["vocab"],
                       embedding_size=sizes["hidden"], dtype="float32", device=device)
    model.plan = Plan(kernels=kernels, precision=precision)
    optimizer = make_optimizer("sgd", 1e-4)
    optimizer.plan = model.plan
    rng = numpy.random.default_rng(0)
    x, y = (backend.to_device(rng.integers(0, sizes["vocab"], (batch, steps)), device)
            for _ in range(2))

    def step():
        result = model.loss_and_grads(x, y)
        optimizer.step(model.params, result.grads)
    return step


def _torch_step(cell, steps, batch, device, sizes, precision="float32"):
    """One PyTorch training step; under ``"bf16-mixed"`` its forward and loss run in
    ``torch.autocast`` with bfloat16 (float32 weights and SGD update, as gpurnn's), under
    the other precisions as the process's TF32 flags say."""
    import contextlib
    import torch
    torch.manual_seed(0)
    dev = torch.device(device)
    layer = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    embed = torch.nn.Embedding(sizes["vocab"], sizes["hidden"]).to(dev)
    rnn = layer(sizes["hidden"], sizes["hidden"]).to(dev)                 # time-major
    head = torch.nn.Linear(sizes["hidden"], sizes["vocab"]).to(dev)
    params = [p for m in (embed, rnn, head) for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    x = torch.randint(0, sizes["vocab"], (steps, batch), device=dev)
    y = torch.randint(0, sizes["vocab"], (steps, batch), device=dev)

    def autocast():
        if precision != "bf16-mixed":
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=torch.bfloat16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = head(rnn(embed(x))[0])
            loss = loss_fn(out.reshape(-1, sizes["vocab"]), y.reshape(-1))
        loss.backward()
        optimizer.step()
    return step


def _recurrence(cell_name, steps, batch, device, sizes, one_launch):
    """A recurrence alone (no input projection, output layer or weight gradients): forward
    and full backward sweep, per-step launches (the plain path) or the two persistent
    kernels. Elman, GRU or LSTM, float32."""
    from ..engine.recurrences.cells import ElmanCell
    from ..engine.recurrences.gated import GRUCell, LSTMCell
    xp = backend.get_device(device).xp
    rng = numpy.random.default_rng(0)
    H = sizes["hidden"]

    def draw(*shape, scale=1.0):
        return xp.asarray(rng.standard_normal(shape) * scale, dtype="float32")

    width = {"elman": 1, "gru": 1, "lstm": 2}[cell_name] * H               # the state's
    dstates, h0 = draw(steps, batch, width), xp.zeros((batch, width), dtype="float32")
    launch = fused.launcher_for(Plan(kernels="fused"), h0)
    if cell_name == "elman":
        cell, params = ElmanCell("tanh"), {"weight_hh": draw(H, H, scale=H ** -0.5)}
        xin = draw(steps, batch, H)

        def plain():
            states = cell.forward(params, xin, h0, steps)
            bptt.sweep(cell.backward_stepper(params, xin, h0, states), dstates)

        def persistent_kernels():
            states = persistent.elman_forward(params, xin, h0, "tanh", launch)
            persistent.elman_backward(params, states, dstates, "tanh", launch)
        return persistent_kernels if one_launch else plain
    cell_class, G = (GRUCell, 3) if cell_name == "gru" else (LSTMCell, 4)
    cell = cell_class()
    params = {"weight_ih": draw(G * H, 1), "weight_hh": draw(G * H, H, scale=H ** -0.5),
              "bias_ih": draw(G * H), "bias_hh": draw(G * H)}
    xin = cell.project_inputs(params, draw(steps, batch, 1))
    projected = xin.gates.copy()            # the forward turns the gate buffer into gates
    forward = getattr(persistent, f"{cell_name}_forward")
    backward = getattr(persistent, f"{cell_name}_backward")

    def gated_plain():
        xin.gates[...] = projected
        states = cell.forward(params, xin, h0, steps)
        bptt.sweep(cell.backward_stepper(params, xin, h0, states), dstates)

    def gated_persistent():
        xin.gates[...] = projected
        states = forward(cell, params, xin, h0, launch)
        backward(cell, params, xin, h0, states, dstates, launch)
    return gated_persistent if one_launch else gated_plain


class _Memory:
    """Peak device memory of a measurement: CuPy's pool (reserved bytes, which the pool
    keeps at its high-water mark) or PyTorch's ``max_memory_reserved``."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def reset(self):
        if self.cuda:
            backend.cupy.get_default_memory_pool().free_all_blocks()
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

    def peak(self, system) -> int | None:
        if not self.cuda:
            return None
        if system.startswith("torch"):
            return int(sys.modules["torch"].cuda.max_memory_reserved())
        return int(backend.cupy.get_default_memory_pool().total_bytes())


def sweep(device="cuda", tf32=False, lengths=LENGTHS, sizes=None, deadline=None,
          repeats=5, cells=("elman", "gru", "lstm"), progress=None, with_torch=True) -> list:
    """Rows {cell, T, B, H, step, system, tf32, precision, tokens_per_s, seconds (median),
    min_s, max_s, peak_bytes} of the sweep; a row has ``error`` or ``skipped`` instead where
    a system failed or the ``deadline`` (time.time()) had passed. The training steps run
    in ``"tf32"`` with ``tf32``, else in ``"float32"`` and then ``"bf16-mixed"`` (the
    recurrence alone: float32 or TF32 only).

    Per configuration, each system's peak memory is taken alone (one step after a reset);
    then the systems' timed steps are interleaved, ``repeats`` rounds, so that a change in
    the machine's state hits them alike. Runs in a process whose CUPY_TF32 matches ``tf32``.
    ``progress(rows)`` is called after each configuration; ``with_torch=False`` leaves
    PyTorch out.
    """
    sizes = {**SWEEP, **(sizes or {})}
    torch_ok = False
    if with_torch:
        try:
            import torch
            torch_ok = torch.cuda.is_available() if device.startswith("cuda") else True
            if torch_ok and device.startswith("cuda"):
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
        except ImportError:
            pass
    torch_name = "torch-cudnn" if device.startswith("cuda") else "torch"
    memory = _Memory(device)
    H, B = sizes["hidden"], sizes["batch"]
    configs = [(cell, T, B, H) for T in lengths for cell in cells]       # short T first
    configs += [(cell, lengths[len(lengths) // 2], sizes["small_batch"], H) for cell in cells]
    configs += [(cell, lengths[len(lengths) // 2], B, 2 * H) for cell in cells]
    precisions = ("tf32",) if tf32 else ("float32", "bf16-mixed")
    rows = []
    for precision in precisions:             # all of float32's rows before bf16's
        for cell, T, batch, hidden in configs:
            size = {**sizes, "hidden": hidden}
            makers = {f"gpurnn-{k}": (lambda k=k: _gpurnn_step(cell, T, batch, k, device,
                                                               size, precision))
                      for k in ("plain", "fused")}
            if torch_ok:
                makers[torch_name] = lambda: _torch_step(cell, T, batch, device, size,
                                                         precision)
            rows += _measure({"cell": cell, "T": T, "B": batch, "H": hidden, "tf32": tf32,
                              "precision": precision, "step": "train"}, makers, device,
                             memory, repeats, deadline)
            if progress:
                progress(rows)
    for T in lengths[1:]:  # the recurrence alone, small batch: per-step launches or none
        for cell in ("elman", "gru", "lstm"):
            makers = {name: (lambda p=one_launch: _recurrence(cell, T, sizes["small_batch"],
                                                              device, sizes, p))
                      for name, one_launch in (("gpurnn-plain", False),
                                               ("gpurnn-persistent", True))}
            rows += _measure({"cell": cell, "T": T, "B": sizes["small_batch"], "H": H,
                              "tf32": tf32, "precision": precisions[0],
                              "step": "recurrence"}, makers, device, memory, repeats,
                             deadline)
            if progress:
                progress(rows)
    return rows


def _measure(base, makers, device, memory, repeats, deadline) -> list:
    from .bench import _sync

    if deadline is not None and time.time() > deadline:
        return [{**base, "system": name, "skipped": "time budget"} for name in makers]
    failed, peaks = {}, {}
    for name, make in makers.items():                     # peak memory, one system at a time
        try:
            memory.reset()
            make()()
            _sync(device)
            peaks[name] = memory.peak(name)
        except Exception as error:  # one failing system must not hide the others' figures
            failed[name] = f"{type(error).__name__}: {error}"
    steps = {name: make() for name, make in makers.items() if name not in failed}
    times = {name: [] for name in steps}
    for name, step in steps.items():                      # warm-up (the first step allocates)
        step()
    _sync(device)
    for _ in range(repeats):                              # interleaved timed rounds
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    rows = [{**base, "system": name, "error": error} for name, error in failed.items()]
    for name, seconds in times.items():
        median = float(numpy.median(seconds))
        rows.append({**base, "system": name, "seconds": median, "min_s": min(seconds),
                     "max_s": max(seconds), "peak_bytes": peaks[name],
                     "tokens_per_s": base["B"] * base["T"] / median})
    return rows


# ----------------------------------------------------------------------- reports
def summary_table(checks, rows) -> str:
    """The one table the command prints: checks, then throughput and its ratio to the
    reference (cuDNN for training steps, the per-step plain path for the recurrence)."""
    lines = ["check                                                     error      result"]
    for c in checks:
        error = "" if c.get("error") is None else f"{c['error']:.1e}"
        verdict = ("skipped: " + c["skipped"] if "skipped" in c else
                   "pass" if c["passed"] else "FAIL " + str(c.get("detail", "")))
        lines.append(f"{c['check'][:56]:<57} {error:<10} {verdict}")
    measured = [r for r in rows if "tokens_per_s" in r]
    if measured:
        lines.append("")
        lines.append("step       cell   T     B   H     precision   system              "
                     "tokens/s    peak MiB  vs ref   (ref: cuDNN in the same precision for "
                     "train, gpurnn-plain for recurrence)")
        key = ("cell", "T", "B", "H", "tf32", "precision", "step")
        reference = {tuple(r[k] for k in key): r["tokens_per_s"] for r in measured
                     if r["system"].startswith("torch") or
                     (r["step"] == "recurrence" and r["system"] == "gpurnn-plain")}
        for r in measured:
            ref = reference.get(tuple(r[k] for k in key))
            ratio = f"{r['tokens_per_s'] / ref:.2f}x" if ref else "-"
            peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.0f}"
            lines.append(f"{r['step']:<10} {r['cell']:<6} {r['T']:<5} {r['B']:<3} {r['H']:<5} "
                         f"{r['precision']:<11} {r['system']:<19} "
                         f"{r['tokens_per_s']:>10.0f}  {peak:>8}  {ratio}")
    failed = [r for r in rows if "error" in r or "skipped" in r]
    for r in failed:
        lines.append(f"not measured: {r['cell']} T={r['T']} B={r['B']} H={r.get('H')} "
                     f"{r['system']} {r.get('precision', '')}: "
                     f"{r.get('error') or r.get('skipped')}")
    return "\n".join(lines)


def plot_sweep(rows, path, title=None) -> str | None:
    """tokens/s against T, one panel per cell, a line per system and precision (float32,
    tf32, bf16-mixed); ``title`` above the panels (the dry run's note that its figures are
    no GPU speeds)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in rows if "tokens_per_s" in r and r["step"] == "train"]
    batch = max((r["B"] for r in train), default=0)  # the sweep's batch, not the small one
    hidden = min((r["H"] for r in train), default=0)  # and its hidden size
    measured = [r for r in train if r["B"] == batch and r["H"] == hidden]
    cells = sorted({r["cell"] for r in measured})
    if not cells:
        return None
    figure, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 4), squeeze=False)
    for axis, cell in zip(axes[0], cells):
        for system in sorted({r["system"] for r in measured}):
            for precision, style in (("float32", "--"), ("tf32", "-"), ("bf16-mixed", ":")):
                points = sorted((r["T"], r["tokens_per_s"]) for r in measured
                                if r["cell"] == cell and r["system"] == system
                                and r["precision"] == precision)
                if points:
                    axis.plot(*zip(*points), marker="o", linestyle=style,
                              label=f"{system}, {precision}")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(cell)
        axis.set_xlabel("T (time steps)")
        axis.set_ylabel("training tokens/s")
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)
