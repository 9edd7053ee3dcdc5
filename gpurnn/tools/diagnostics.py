"""Gradient-flow diagnostics: why plain recurrent nets forget and gated ones remember.

The seeds end on the vanishing/exploding-gradient problem: the gradient that output t sends
to an earlier step k is a product of t − k per-step Jacobians,
∂L_t/∂h_k = ∂L_t/∂h_t · Π_{j=k+1..t} ∂h_j/∂h_{j−1}, so it grows or shrinks geometrically
with the lag t − k. This module measures that for any model on the engine:

* :func:`gradient_flow` — ‖∂L_t/∂h_k‖ for every output t and earlier step k (each output's
  error is carried back on its own, as windowed truncation does), and its mean per lag;
* :func:`recurrent_stats` — spectral radius and spectral norm of each recurrent matrix
  (Elman W; each gate block of a GRU's / LSTM's weight_hh);
* :func:`saturation` — the fraction of units (gates) whose activation derivative is below
  2 % of its maximum: where the Jacobians' diagonal factors vanish;
* :func:`linear_gradient_over_time` — seed 001's linear RNN, ∂ξ/∂S_k over k, the picture
  of explosion (|wRec| > 1) and vanishing (|wRec| < 1);
* :func:`plot_gradient_flow`, :func:`plot_seed001` — PNG pictures (matplotlib, optional);
* ``gpurnn diagnose`` — :func:`add_diagnose` registers the subcommand.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy

from ..engine.arrays.backend import get_array_module, host_rng, to_device, to_host
from ..engine.models.losses import output_loss_and_grads
from ..engine.models.model import LinearRNN, RecurrentModel
from ..engine.models.factory import make_model, model_spec
from ..engine.layers.stack import StackedCell, layer_name
from ..engine.arrays.validation import as_mask, as_targets
from .arguments import DEVICE_HELP, add_model_arguments, positive_int

__all__ = ["GradientFlow", "Diagnosis", "gradient_flow", "recurrent_stats", "saturation",
           "diagnose", "scale_recurrent", "linear_gradient_over_time", "SEED001_POINTS",
           "seed001_gradients", "plot_gradient_flow", "plot_seed001", "add_diagnose"]

# Seed 001's weight settings: (wx, wRec).
SEED001_POINTS = ((2, 1), (1, 2), (1, -2), (1, 0), (1, 0.5), (1, -0.5))

# A unit is saturated when f'(a) is below this fraction of f's largest slope
# (tanh: |h| > 0.99; sigmoid: σ outside about (0.005, 0.995); relu: h = 0).
SATURATION_FLOOR = 0.02


def _time_major(array):
    return array.swapaxes(0, 1).copy()


@dataclass
class GradientFlow:
    """‖∂L_t/∂h_k‖ per output t and earlier step k, averaged over the batch's sequences.

    ``norms`` (time, time): row t, column k ≤ t (NaN above the diagonal and beyond
    ``max_lag``); ``by_lag`` (max_lag + 1,): the mean over t of norms[t, t − lag].
    """

    norms: numpy.ndarray
    by_lag: numpy.ndarray

    def lags(self):
        """The lags worth printing: 0, 1, 2, 5, 10, 20, 50, … and the last one."""
        marks, scale = [], 1
        while scale < len(self.by_lag):
            marks += [m * scale for m in (1, 2, 5) if m * scale < len(self.by_lag)]
            scale *= 10
        return sorted(set([0] + marks + [len(self.by_lag) - 1]))

    def table(self) -> str:
        lines = ["  lag   mean ‖∂L_t/∂h_(t−lag)‖   / lag 0"]
        first = self.by_lag[0]
        for lag in self.lags():
            ratio = self.by_lag[lag] / first if first > 0 else float("nan")
            lines.append(f"  {lag:>4}   {self.by_lag[lag]:>20.3e}   {ratio:>8.1e}")
        return "\n".join(lines)


def _hidden_norms(model, g):
    """Per (origin, sequence) ‖h part of g‖ for g (origins, batch, state)."""
    xp = get_array_module(g)
    h = model._hidden(g) if isinstance(model, RecurrentModel) else g
    return xp.sqrt((h * h).sum(axis=-1))


def gradient_flow(model, inputs, targets=None, *, h0=None, mask=None, max_lag=None,
                  origins=None, seed=0) -> GradientFlow:
    """How much of each output's gradient reaches each earlier step.

    Args:
        model: an Elman, GRU or LSTM model (any layers; h is the top layer's).
        inputs: a batch as ``loss_and_grads`` takes it.
        targets: defines L_t; None puts a random unit vector (seeded) on each h_t instead,
            so the norms are those of the Jacobian products alone.
        mask: (batch, time); padded steps take no part.
        max_lag: follow each output back this many steps at most (default: to step 0).
        origins: the outputs t to follow (default: every step); rows of the others are NaN.
    Returns:
        :class:`GradientFlow` with norms[t, k] = mean over sequences of ‖∂L_t/∂h_k‖.
    """
    if not isinstance(model, RecurrentModel):
        raise TypeError(f"gradient_flow takes an Elman, GRU or LSTM model, got "
                        f"{type(model).__name__} (for seed 001's LinearRNN use "
                        f"linear_gradient_over_time)")
    x_tm, xin, h0s, states = model._run(inputs, h0)
    xp = get_array_module(states)
    steps, batch = states.shape[:2]
    max_lag = steps - 1 if max_lag is None else max(0, min(int(max_lag), steps - 1))
    m = as_mask(mask, batch, steps, model.dtype, model.device)
    m_tm = None if m is None else _time_major(m)
    hidden = model._hidden(states)
    if targets is None:
        u = host_rng(seed).normal(size=hidden.shape)
        u /= numpy.linalg.norm(u, axis=-1, keepdims=True)
        dhidden = to_device(u, model.device, model.dtype)
        if m_tm is not None:
            dhidden *= m_tm[..., None]
    else:
        y = as_targets(targets, model.output, model.output_size, batch, steps, model.dtype,
                       model.device)
        dhidden = output_loss_and_grads(model.output, model.params["V"], model.params.get("c"),
                                        xp.ascontiguousarray(hidden), _time_major(y),
                                        m_tm).dstates.copy()
    dstates = model._state_grads(dhidden, states)
    dstates = dstates.copy() if dstates is dhidden else dstates
    back = model.cell.backward_stepper(model.params, xin, h0s, states)
    norms = xp.full((steps, steps), xp.nan, dtype=states.dtype)
    weight = xp.ones((steps, batch), dtype=states.dtype) if m_tm is None else m_tm
    count = xp.maximum(weight.sum(axis=1), 1)                       # sequences alive at t
    if origins is None:
        # Every output: origins t … t + max_lag alive, origin o in slot o % (max_lag + 1),
        # as in the engine's windowed sweep.
        width = max_lag + 1
        slot_of = numpy.arange(steps) % width
    else:
        chosen = numpy.unique(numpy.asarray(origins, dtype=numpy.int64))
        if chosen.size == 0 or chosen[0] < 0 or chosen[-1] >= steps:
            raise ValueError(f"origins must be steps in [0, {steps}), got {origins!r}")
        width = len(chosen)
        slot_of = numpy.full(steps, -1)
        slot_of[chosen] = numpy.arange(width)
    live = xp.zeros((width,) + dstates.shape[1:], dtype=dstates.dtype)
    for t in reversed(range(steps)):
        if slot_of[t] >= 0:
            live[slot_of[t]] = dstates[t]                            # origin t enters
        alive = numpy.arange(t, min(steps, t + max_lag + 1))
        alive = alive[slot_of[alive] >= 0]
        per_seq = _hidden_norms(model, live[slot_of[alive]])         # (origins, B)
        norms[alive, t] = (per_seq * weight[alive]).sum(axis=1) / count[alive]
        _, g_prev = back(t, live)
        live[...] = g_prev
    norms = to_host(norms).astype(numpy.float64)
    by_lag = numpy.full(max_lag + 1, numpy.nan)
    for lag in range(max_lag + 1):
        diagonal = numpy.diagonal(norms, -lag)
        if numpy.isfinite(diagonal).any():
            by_lag[lag] = numpy.nanmean(diagonal)
    return GradientFlow(norms, by_lag)


def _blocks(model):
    """(label, square recurrent matrix) for every recurrent block of the model."""
    if isinstance(model, LinearRNN):
        return [("wRec", to_host(model.wRec).reshape(1, 1))]
    kind = getattr(model, "cell_type", "elman")
    layers = getattr(model, "num_layers", 1)
    H = model.hidden_size
    gates = {"gru": "rzn", "lstm": "ifgo"}.get(kind)
    out = []
    for layer in range(layers):
        prefix = f"layer {layer} " if layers > 1 else ""
        if gates is None:
            out.append((f"{prefix}W", to_host(model.params[layer_name("weight_hh", layer)])))
            continue
        W = to_host(model.params[layer_name("weight_hh", layer)])
        for k, gate in enumerate(gates):
            out.append((f"{prefix}weight_hh[{gate}]", W[k * H:(k + 1) * H]))
    return out


def recurrent_stats(model) -> list:
    """Spectral radius (largest |eigenvalue|) and spectral norm (largest singular value) of
    each recurrent matrix: dicts with ``block``, ``spectral_radius``, ``spectral_norm``.

    For a linear recurrence the radius decides: the gradient over a lag of n steps scales
    like radius^n. Through a nonlinearity each step also multiplies by f'(a) ≤ 1.
    """
    stats = []
    for label, W in _blocks(model):
        W = to_host(W).astype(numpy.float64)             # eigenvalues on the host, in float64
        stats.append({"block": label,
                      "spectral_radius": float(numpy.abs(numpy.linalg.eigvals(W)).max()),
                      "spectral_norm": float(numpy.linalg.norm(W, 2))})
    return stats


def scale_recurrent(model, radius: float) -> None:
    """Rescale the recurrent matrices in place so the largest spectral radius among each
    layer's blocks is ``radius`` (all of a layer's gate blocks by the same factor)."""
    if not radius > 0:
        raise ValueError(f"radius must be a positive number, got {radius!r}")
    kind = getattr(model, "cell_type", "elman")
    for layer in range(getattr(model, "num_layers", 1)):
        key = layer_name("weight_hh", layer)
        W = to_host(model.params[key]).astype(numpy.float64)
        H = W.shape[1]
        current = max(numpy.abs(numpy.linalg.eigvals(W[k:k + H])).max()
                      for k in range(0, W.shape[0], H))
        if current > 0:
            setattr(model, key, W * (radius / current))


def _layer_views(model, xin, states):
    if isinstance(model.cell, StackedCell):
        return model.cell.layers(model.params, xin)
    return [(model.cell, model.params, xin, states)]


def saturation(model, inputs, *, h0=None, mask=None, floor=SATURATION_FLOOR) -> dict:
    """Fraction of saturated units per activation over the batch's (unmasked) steps.

    Keys: ``h`` for an Elman layer (relu: the fraction of units at 0), ``r``, ``z``, ``n`` for
    a GRU, ``i``, ``f``, ``g``, ``o``, ``tanh(c)`` for an LSTM; ``layer k ·`` before them in
    a stack. A unit is saturated when its derivative is below ``floor`` × the largest.
    """
    x_tm, xin, h0s, states = model._run(inputs, h0)
    xp = get_array_module(states)
    steps, batch = states.shape[:2]
    m = as_mask(mask, batch, steps, model.dtype, model.device)
    weight = None if m is None else _time_major(m)[..., None]
    layers = _layer_views(model, xin, states)
    out = {}
    for index, (cell, _, xin_l, states_l) in enumerate(layers):
        if hasattr(cell, "activations"):
            acts = cell.activations(xin_l, states_l)
        else:
            acts = {"h": (states_l, cell.activation)}
        prefix = f"layer {index} " if len(layers) > 1 else ""
        for name, (y, kind) in acts.items():
            if kind == "tanh":
                flat = (1 - y * y) < floor
            elif kind == "sigmoid":
                flat = 4 * y * (1 - y) < floor
            elif kind == "relu":
                flat = y <= 0
            else:
                continue                                             # identity never saturates
            flat = flat.astype(states.dtype)
            if weight is None:
                fraction = flat.mean()
            else:
                fraction = (flat * weight).sum() / xp.maximum(weight.sum() * y.shape[-1], 1)
            out[prefix + name] = float(fraction)
    return out


@dataclass
class Diagnosis:
    """What ``gpurnn diagnose`` reports for one model and batch."""

    model: str
    flow: GradientFlow
    recurrent: list
    saturated: dict
    info: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = [self.model]
        if self.info:
            lines.append(", ".join(f"{k} {v}" for k, v in self.info.items()))
        lines += ["", "recurrent weights          spectral radius   spectral norm"]
        for s in self.recurrent:
            lines.append(f"  {s['block']:<24} {s['spectral_radius']:>15.3f} {s['spectral_norm']:>15.3f}")
        lines += ["", f"saturated units (derivative below {SATURATION_FLOOR:.0%} of its maximum)"]
        for name, fraction in self.saturated.items():
            lines.append(f"  {name:<24} {fraction:>15.1%}")
        lines += ["", "gradient reaching earlier steps, mean over outputs t and sequences",
                  self.flow.table()]
        return "\n".join(lines)

    def to_json(self) -> dict:
        def clean(values):
            return [None if not math.isfinite(v) else float(v) for v in values]
        return {"model": self.model, **self.info, "recurrent": self.recurrent,
                "saturated": self.saturated, "by_lag": clean(self.flow.by_lag),
                "norms": [clean(row) for row in self.flow.norms]}


def diagnose(model, inputs, targets=None, *, h0=None, mask=None, max_lag=None,
             seed=0) -> Diagnosis:
    """:func:`gradient_flow`, :func:`recurrent_stats` and :func:`saturation` together."""
    flow = gradient_flow(model, inputs, targets, h0=h0, mask=mask, max_lag=max_lag, seed=seed)
    return Diagnosis(repr(model), flow, recurrent_stats(model),
                     saturation(model, inputs, h0=h0, mask=mask))


# --------------------------------------------------------------------------- seed 001


def linear_gradient_over_time(X, targets, wx, wRec, *, device="cpu"):
    """Seed 001's ``grad_over_time`` through the engine: ∂ξ/∂S_k for k = 0 … n.

    ξ is the squared error (S_n − t)² of each sample (the seed's ``grad_out = 2 (y − t)``,
    before its division by the number of samples). X (samples, n), targets (samples,).
    Returns (samples, n + 1); column k is the gradient on the state S_k, S_0 the initial one.
    """
    model = LinearRNN(wx, wRec, dtype="float64", device=device)
    x_tm, xin, h0, states = model._run(X)
    xp = get_array_module(states)
    t = to_device(numpy.asarray(targets, dtype=numpy.float64), model.device)
    if t.shape != (states.shape[1],):
        raise ValueError(f"targets must have shape (samples,) = ({states.shape[1]},), "
                         f"got {tuple(t.shape)}")
    steps = states.shape[0]
    back = model.cell.backward_stepper(model._cell_params(), xin, h0, states)
    out = xp.zeros((steps + 1,) + states.shape[1:], dtype=states.dtype)
    g = 2.0 * (states[-1] - t[:, None])                              # ∂ξ/∂S_n
    for k in reversed(range(steps)):
        out[k + 1] = g
        _, g = back(k, g)
        g = g.copy()
    out[0] = g
    return to_host(out[..., 0].T)


def seed001_gradients(points=SEED001_POINTS, *, samples=20, length=10, seed=0) -> dict:
    """For each (wx, wRec): the mean over samples of |∂ξ/∂S_k|, k = 0 … length, and one
    sample's signed gradient, on seed 001's task (count the ones of binary sequences)."""
    rng = numpy.random.default_rng(seed)
    X = numpy.round(rng.random((samples, length)))
    t = X.sum(axis=1)
    out = {}
    for wx, wRec in points:
        grads = linear_gradient_over_time(X, t, wx, wRec)
        out[(wx, wRec)] = {"magnitude": numpy.abs(grads).mean(axis=0), "sample": grads[0]}
    return out


# --------------------------------------------------------------------------- pictures


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise RuntimeError("plotting needs matplotlib: pip install 'gpurnn[plot]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_seed001(gradients: dict, path) -> Path:
    """Seed 001's picture: |∂ξ/∂S_k| over k (log scale) per (wx, wRec), and one sample's
    signed gradient (symmetric log scale), written to ``path`` (PNG)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (wx, wRec), g in gradients.items():
        k = numpy.arange(len(g["magnitude"]))
        mag = numpy.where(g["magnitude"] > 0, g["magnitude"], numpy.nan)  # log scale: drop 0
        label = f"wx={wx:g}, wRec={wRec:g}"
        left.plot(k, mag, marker="o", label=label)
        right.plot(k, g["sample"], marker="o", label=label)
    left.set_yscale("log")
    left.set_xlabel("state S_k (S_n is the output)")
    left.set_ylabel("mean |∂ξ/∂S_k| over samples")
    left.set_title("gradient over time: |wRec| > 1 explodes, < 1 vanishes")
    left.legend(fontsize=8)
    right.set_yscale("symlog", linthresh=1e-2)
    right.set_xlabel("state S_k")
    right.set_ylabel("∂ξ/∂S_k, first sample")
    right.set_title("sign alternates for wRec < 0 (wRec = 0: nothing before S_n)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gradient_flow(flows: dict, path, title=None, heatmaps=None) -> Path:
    """Per-lag mean gradient norms of each named :class:`GradientFlow` (left, log scale)
    and heatmaps of log10 ‖∂L_t/∂h_k‖ over (k, t) for the names in ``heatmaps`` (default:
    all), written to ``path`` (PNG)."""
    plt = _pyplot()
    maps = {name: flow for name, flow in flows.items() if heatmaps is None or name in heatmaps}
    count = len(maps)
    fig, axes = plt.subplots(1, count + 1, figsize=(4.6 * (count + 1), 4.2), squeeze=False)
    axes = axes[0]
    for name, flow in flows.items():
        lag = numpy.arange(len(flow.by_lag))
        axes[0].plot(lag, numpy.where(flow.by_lag > 0, flow.by_lag, numpy.nan), label=name)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("lag t − k (steps back from the output)")
    axes[0].set_ylabel("mean ‖∂L_t/∂h_k‖")
    axes[0].set_title(title or "gradient reaching earlier steps")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for axis, (name, flow) in zip(axes[1:], maps.items()):
        with numpy.errstate(divide="ignore", invalid="ignore"):
            image = numpy.log10(flow.norms)
        image[~numpy.isfinite(image)] = numpy.nan
        shown = axis.imshow(image, origin="lower", aspect="auto", cmap="viridis")
        axis.set_xlabel("step k")
        axis.set_ylabel("output t")
        axis.set_title(f"{name}: log10 ‖∂L_t/∂h_k‖", fontsize=10)
        fig.colorbar(shown, ax=axis)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command


def add_diagnose(subparsers):
    """Register ``gpurnn diagnose`` on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "diagnose", help="gradient flow over time, spectral radius, saturated units, "
                         "of a trained or a random model",
        description="Report how much of each output's gradient reaches earlier steps "
                    "(‖∂L_t/∂h_k‖ per lag), the spectral radius and norm of the recurrent "
                    "weights and the fraction of saturated units, of the model in CHECKPOINT "
                    "(written by gpurnn train; run on a stretch of its training text) or of a "
                    "random model built from the flags (on a random batch). Writes the numbers "
                    "as JSON and the picture as PNG (--json, --plot; --no-save: neither). "
                    "--seed001 draws seed 001's exploding and vanishing gradients instead.")
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT",
                   help="a .npz written by gpurnn train (default: a random model)")
    add_model_arguments(p, hidden=32)
    p.add_argument("--input-size", type=positive_int, default=10,
                   help="vocabulary size (token inputs) or features (--dense); default 10")
    p.add_argument("--output-size", type=positive_int, default=None,
                   help="output size (default: the input size)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="sequences (default 16)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="time steps (default 60; 10 with --seed001, as in the seed)")
    p.add_argument("--dense", action="store_true", help="random float inputs, not token ids")
    p.add_argument("--spectral-radius", type=float, default=None,
                   help="rescale the recurrent weights to this spectral radius first")
    p.add_argument("--jacobian", action="store_true",
                   help="put a random unit vector on each h_t instead of a loss gradient: "
                        "the norms of the Jacobian products alone")
    p.add_argument("--max-lag", type=positive_int, default=None,
                   help="follow each output back at most this many steps (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed001", action="store_true",
                   help="seed 001's linear RNN at (wx, wRec) = (2, 1), (1, 2), (1, -2), "
                        "(1, 0), (1, 0.5), (1, -0.5) instead of a model")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="picture (default: CHECKPOINT-diagnose.png, or diagnose.png, or "
                        "seed001.png)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="numbers (default: the picture's name with .json; given alone, the "
                        "picture goes beside it with .png)")
    p.add_argument("--no-save", action="store_true", help="print only, write no file")
    p.set_defaults(handler=run_diagnose)


def _outputs(args, stem: str):
    """(json path, png path) to write, or (None, None) with --no-save; their folders must
    exist before anything is computed."""
    if args.no_save:
        return None, None
    if args.plot:    # one name given: the other file goes beside it
        png = Path(args.plot)
        paths = (Path(args.json) if args.json else png.with_suffix(".json"), png)
    elif args.json:
        paths = (Path(args.json), Path(args.json).with_suffix(".png"))
    else:
        paths = (Path(f"{stem}.json"), Path(f"{stem}.png"))
    for path in paths:
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {path.parent} for {path.name} does not exist")
    return paths


def _write(result_json, json_path, draw, png_path) -> None:
    if json_path is not None:
        json_path.write_text(json.dumps(result_json, indent=1))
        print(f"wrote {json_path}")
    if png_path is not None:
        try:
            draw(png_path)
            print(f"wrote {png_path}")
        except RuntimeError as error:  # no matplotlib: the numbers are written all the same
            print(f"no picture: {error}")


def _checkpoint_batch(args):
    """The checkpoint's model in float64 and a batch of its own training text (the warm-up
    stretch kept for sampling), else of random token ids."""
    from ..training.generate import load_language_model
    lm = load_language_model(args.checkpoint, device=args.device)
    model = lm.model.copy(dtype="float64")
    steps = args.seq_len or 60
    text = lm.warmup if lm.warmup is not None else numpy.zeros(0, dtype=numpy.int64)
    rows = min(args.batch_size, (len(text) - 1) // steps)
    if rows >= 1:
        ids = text[:rows * steps + 1]
        inputs = numpy.stack([ids[r * steps:(r + 1) * steps] for r in range(rows)])
        targets = numpy.stack([ids[r * steps + 1:(r + 1) * steps + 1] for r in range(rows)])
        source = "training text kept in the checkpoint"
    else:
        rng = numpy.random.default_rng(args.seed)
        inputs = rng.integers(0, len(lm.vocab), (args.batch_size, steps))
        targets = rng.integers(0, len(lm.vocab), (args.batch_size, steps))
        source = "random token ids"
    return model, inputs, targets, {"checkpoint": str(args.checkpoint), "step": lm.step,
                                    "inputs": source, "batch": len(inputs), "steps": steps}


def _random_batch(args):
    output_size = args.output_size or args.input_size
    model = make_model(args.cell, args.input_size, args.hidden, output_size,
                       num_layers=args.layers, activation=args.activation, dtype="float64",
                       device=args.device, seed=args.seed)
    rng = numpy.random.default_rng(args.seed)
    steps = args.seq_len or 60
    shape = (args.batch_size, steps)
    inputs = (rng.normal(size=shape + (args.input_size,)) if args.dense
              else rng.integers(0, args.input_size, shape))
    targets = (rng.integers(0, output_size, shape) if model.output == "softmax"
               else rng.normal(size=shape + (output_size,)))
    return model, inputs, targets, {"batch": args.batch_size, "steps": steps}


def run_diagnose(args) -> int:
    if args.seed001:
        return _run_seed001(args)
    stem = Path(args.checkpoint).stem + "-diagnose" if args.checkpoint else "diagnose"
    json_path, png_path = _outputs(args, stem)
    model, inputs, targets, info = (_checkpoint_batch if args.checkpoint else _random_batch)(args)
    if args.spectral_radius is not None:
        scale_recurrent(model, args.spectral_radius)
    result = diagnose(model, inputs, None if args.jacobian else targets, max_lag=args.max_lag,
                      seed=args.seed)
    result.info = {**info, "gradient": "random unit vectors" if args.jacobian else "loss"}
    print(result.table())
    name = model_spec(model)["cell"] if args.checkpoint else args.cell
    layers = model_spec(model)["num_layers"] if args.checkpoint else args.layers
    label = f"{name} ×{layers}" if layers > 1 else name
    _write(result.to_json(), json_path,
           lambda path: plot_gradient_flow({label: result.flow}, path), png_path)
    return 0


def _run_seed001(args) -> int:
    json_path, png_path = _outputs(args, "seed001")
    gradients = seed001_gradients(length=args.seq_len or 10, seed=args.seed)
    print("seed 001: linear RNN S_k = wRec S_(k-1) + wx X_k counting ones; mean |∂ξ/∂S_k|")
    length = len(next(iter(gradients.values()))["magnitude"]) - 1
    print(f"  {'wx':>4} {'wRec':>5}   {'at S_n':>10} {'at S_0':>10}   S_0 / S_n")
    for (wx, wRec), g in gradients.items():
        last, first = g["magnitude"][-1], g["magnitude"][0]
        print(f"  {wx:>4g} {wRec:>5g}   {last:>10.3e} {first:>10.3e}   "
              f"{first / last if last else float('nan'):>9.2e}")
    print(f"  ({length} steps: |wRec|^{length} of growth or decay)")
    _write([{"wx": wx, "wRec": wRec, "magnitude": g["magnitude"].tolist(),
             "sample": g["sample"].tolist()} for (wx, wRec), g in gradients.items()],
           json_path, lambda path: plot_seed001(gradients, path), png_path)
    return 0
