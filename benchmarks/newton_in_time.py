"""Newton in time: the ParaGRU's iterations and the dense GRU's by quasi-DEER, and the time.

    python benchmarks/newton_in_time.py                 # T = 10^2 … 10^4, H = 64 (and 256)
    python benchmarks/newton_in_time.py --quick         # fewer rounds, H = 64 only
    python benchmarks/newton_in_time.py --plot          # the PNG from the JSON

A nonlinear recurrence h_t = f_t(h_{t−1}) solved by Newton's method in time
(:func:`gpurnn.engine.sweeps.newton.solve`: DEER, Lim et al. 2023), each iteration one
linear scan on the diagonal Jacobian J_t. Two sections:

* ``iterations`` (float64, batch 8, dense inputs of 16 features, h0 = 0, one solve over the
  whole sequence, no timing): how many iterations reach rounding (the default tolerance)
  and the largest |h_t − h_t^loop| against the step-by-step loop, for

  - ``paragru``: the ParaGRU (ParaRNN, Danieli et al. 2025) at its model initialisation,
    whose Jacobian is diagonal and exact: Newton proper, quadratic;
  - ``gru-quasi-deer``: the dense GRU (PyTorch's equations, written out below, weights
    from a ``gpurnn.GRU`` model) with only the diagonal of its dense Jacobian (quasi-DEER,
    Gonzalez et al. 2024): the same fixed point, linear convergence;
  - ``gru-quasi-deer-x2`` … ``-x4``: the same with weight_hh scaled by 2 … 4, larger
    recurrent weights such as training produces (up to ``--scaled-max`` steps);

  and the convergence curve, the error after each iteration k = 1 … K
  (``max_iterations=k``, a tolerance of 1e-300; recorded in one solve by a scan that
  measures each iterate, checked at T = 100 against separate solves). Every solve caps
  its iterations at min(T, ``--cap``) (T is always enough) and passes the states' bound
  max(1, |h0|).
* ``trained``: a character ParaGRU trained by ``recipes/char-paragru.toml`` for
  ``--trained-steps`` steps on the built-in corpus (320 units), then its ``forward`` by Newton
  on 8 streams of the held-out text, float32 and float64: the iterations of each solve
  (``model.newton_log``; a solve covers at most 1024 steps), the fallbacks, the largest
  difference from the loop, and the size of the trained diagonals |a_r|, |a_z|, |a_n|.
* ``timing`` (this CPU, one BLAS thread): a one-layer ParaGRU model (dense inputs of 16
  features, identity output of 16, squared error, H = 64, batch 8), float32 and float64,
  ``forward`` and ``loss_and_grads`` (forward + backward) with ``Plan(time="scan")``
  (Newton; ``loss_and_grads`` also in 1024-step blocks, ``scan-block1024``) against
  ``Plan(time="loop")``, interleaved round by round; medians with quartiles, the speed-up
  the median of the per-round ratios loop / scan, and the Newton iteration counts of the
  call (``model.newton_log``). ``forward`` runs the whole sequence as one block (Newton
  takes it in pieces of at most 1024 steps),
  ``loss_and_grads`` runs the engine's grid (128-step blocks at batch 8).

The JSON also records the machine, the versions, the date, the load average before and
after and the threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# parallel_time pins one BLAS thread before NumPy loads; its helpers are shared
from parallel_time import (BATCH, FEATURES, RESULTS, ROOT, interleaved, machine,  # noqa: E402
                           quartiles, rounds_for, speedup)

import numpy as np  # noqa: E402

import gpurnn  # noqa: E402
from gpurnn.engine.sweeps import newton, scan  # noqa: E402

JSON = RESULTS / "newton_in_time.json"
PNG = RESULTS / "newton_in_time.png"
SCALES = (2.0, 3.0, 4.0)          # weight_hh × s for the dense GRU's larger-weight cases
EXTRA = 5                         # iterations past convergence that the curve shows
FRONT = 1e-13                     # a step's error at most this: at rounding
TINY = 1e-300                     # the curve's tolerance: run all max_iterations


def sigmoid(a):
    return 0.5 * np.tanh(0.5 * a) + 0.5


def inputs(T, seed):
    """Dense inputs (batch, T, 16), float64."""
    return np.random.default_rng(1000 + seed).normal(size=(BATCH, T, FEATURES))


def projected(params, x):
    """W_ih x_t + b_ih for every step, time-major (T, batch, 3H)."""
    return np.swapaxes(x, 0, 1) @ params["weight_ih"].T + params["bias_ih"]


# --- the systems: (linearise, step, the model's own states or None) ------------------
def paragru_system(H, x, seed):
    model = gpurnn.ParaGRU(FEATURES, H, FEATURES, dtype="float64", seed=seed)
    cell, params = model.cell, model.params
    pre = projected(params, x)
    model.plan = gpurnn.Plan(time="loop")
    own = np.swapaxes(model.forward(x)[1], 0, 1)                     # (T, batch, H)
    return (lambda hprev: cell.linearise(params, pre, hprev)[:2],
            lambda t, h: cell.step(params, pre[t], h), own)


def gru_system(H, x, seed, scale=1.0):
    """The dense GRU, PyTorch's equations, weights from gpurnn.GRU (weight_hh × scale):

        r = σ(W_ir x + b_ir + W_hr h + b_hr)     z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))     h' = (1 − z) n + z h

    and the diagonal of its Jacobian ∂h'/∂h (D_g the diagonal of W_hg):

        z + (h − n) z (1 − z) D_z + (1 − z)(1 − n²) (r D_n + (W_hn h + b_hn) r (1 − r) D_r).
    """
    model = gpurnn.GRU(FEATURES, H, FEATURES, dtype="float64", seed=seed)
    params = dict(model.params)
    params["weight_hh"] = params["weight_hh"] * scale
    pre = projected(params, x)
    W, b = params["weight_hh"], params["bias_hh"]
    D = np.stack([np.diag(W[g * H:(g + 1) * H]) for g in range(3)])   # (3, H): r, z, n

    def gates(pre_t, h):
        hh = h @ W.T
        hh += b
        r = sigmoid(pre_t[..., :H] + hh[..., :H])
        z = sigmoid(pre_t[..., H:2 * H] + hh[..., H:2 * H])
        hn = hh[..., 2 * H:]
        n = np.tanh(pre_t[..., 2 * H:] + r * hn)
        return r, z, n, hn

    def linearise(hprev):                                            # hprev (T, batch, H)
        r, z, n, hn = gates(pre, hprev)
        F = n + z * (hprev - n)
        J = z + (hprev - n) * z * (1 - z) * D[1] + (1 - z) * (1 - n * n) * (
            r * D[2] + hn * r * (1 - r) * D[0])
        return F, J

    def step(t, h):
        r, z, n, _ = gates(pre[t], h)
        return n + z * (h - n)

    own = None
    if scale == 1.0:
        model.plan = gpurnn.Plan(time="loop")
        own = np.swapaxes(model.forward(x)[1], 0, 1)
    return linearise, step, own


def jacobian_check(linearise, T, H, seed):
    """The largest |J − central difference| of the diagonal at random states in ±1."""
    hprev = np.random.default_rng(seed).uniform(-1, 1, size=(T, BATCH, H))
    J = np.array(linearise(hprev)[1])
    e, worst = 1e-6, 0.0
    for j in range(H):
        plus, minus = hprev.copy(), hprev.copy()
        plus[..., j] += e
        minus[..., j] -= e
        d = (np.array(linearise(plus)[0][..., j]) - np.array(linearise(minus)[0][..., j]))
        worst = max(worst, float(np.abs(d / (2 * e) - J[..., j]).max()))
    return worst


def loop(step, h0, T):
    states, h = np.empty((T,) + h0.shape), h0
    for t in range(T):
        h = step(t, h)
        states[t] = h
    return states


def recording_scan(expected, bound, errors):
    """A scan for :func:`newton.solve` that also records each iterate's largest error.

    It clips to the bound as ``solve`` does after the scan (the same operations, which
    ``solve`` then repeats to no effect), so what it measures is the iterate."""
    def solve_linear(a, b, init, out):
        scan.linear_scan(a, b, init, out=out)
        np.nan_to_num(out, copy=False, nan=0.0, posinf=bound, neginf=-bound)
        np.clip(out, -bound, bound, out=out)
        errors.append(float(np.abs(out - expected).max()))
        return out
    return solve_linear


def trained_case(steps, lengths):
    """The ``trained`` section's rows: train, then solve the held-out text by Newton."""
    import subprocess
    import tempfile
    from gpurnn.engine.recurrences import paragru
    from gpurnn.training import data
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "paragru.npz"
        subprocess.run([sys.executable, "-m", "gpurnn", "train", "--config",
                        str(ROOT / "recipes" / "char-paragru.toml"), "--steps", str(steps),
                        "--eval-every", str(steps), "--checkpoint", str(checkpoint),
                        "--samples", "0", "--quiet"], check=True, cwd=folder)
        saved = gpurnn.load(checkpoint)
    _, valid = data.split_text(data.load_builtin_text(), 0.1)
    ids = np.asarray(saved.vocab.encode(list(valid)))
    T = min(max(lengths), len(ids) // BATCH)
    x = ids[:BATCH * T].reshape(BATCH, T)
    diagonals = np.abs(np.asarray(saved.model.params["weight_hh"], np.float64)).reshape(3, -1)
    for dtype in ("float32", "float64"):
        model = saved.model.copy(dtype=dtype)
        model.plan = gpurnn.Plan(time="loop")
        expected = np.asarray(model.forward(x)[1], np.float64)
        for length in sorted({t for t in lengths if t < T} | {T}):
            model.newton_log.clear()
            model.plan = gpurnn.Plan(time="scan")
            got = np.asarray(model.forward(x[:, :length])[1], np.float64)
            row = {"section": "trained", "training_steps": steps, "hidden": model.hidden_size,
                   "batch": BATCH, "T": length, "dtype": dtype,
                   "piece_steps": paragru.NEWTON_STEPS,
                   "iterations": list(model.newton_log.iterations),
                   "fallbacks": model.newton_log.fallbacks,
                   "max_abs_difference_vs_loop": float(np.abs(got - expected[:, :length]).max()),
                   "diagonal_abs_max": dict(zip("rzn", diagonals.max(axis=1).tolist())),
                   "diagonal_abs_mean": dict(zip("rzn", diagonals.mean(axis=1).tolist()))}
            rows.append(row)
            print(f"trained {dtype} T={length:5d}: iterations {row['iterations']}, "
                  f"{row['fallbacks']} fallbacks, difference "
                  f"{row['max_abs_difference_vs_loop']:.1e}", flush=True)
    return rows


def iterations_case(system, H, T, cap, seed=0):
    x = inputs(T, seed)
    if system == "paragru":
        linearise, step, own = paragru_system(H, x, seed)
        scale = None
    else:
        scale = float(system.rsplit("-x", 1)[1]) if "-x" in system else 1.0
        linearise, step, own = gru_system(H, x, seed, scale)
    h0 = np.zeros((BATCH, H))
    bound = max(1.0, float(np.abs(h0).max()))
    expected = loop(step, h0, T)
    limit = min(T, cap)
    errors = []
    solution = newton.solve(linearise, h0, T, max_iterations=limit, bound=bound,
                            scan=recording_scan(expected, bound, errors))
    per_step = np.abs(solution.states - expected).reshape(T, -1).max(axis=1)
    error = float(per_step.max())
    off = np.flatnonzero(per_step > FRONT)
    leading = int(off[0]) if off.size else T                         # steps 0 … leading−1
    K = min(limit, solution.iterations + EXTRA)
    curve = list(errors)
    if K > solution.iterations:                                      # run on past rounding
        curve = []
        newton.solve(linearise, h0, T, tol=TINY, max_iterations=K, bound=bound,
                     scan=recording_scan(expected, bound, curve))
    row = {"section": "iterations", "system": system, "hidden": H, "T": T, "batch": BATCH,
           "dtype": "float64", "jacobian": "exact" if system == "paragru" else "diagonal",
           "weight_hh_scale": scale, "max_iterations": limit,
           "iterations": solution.iterations, "converged": bool(solution.converged),
           "ran_t_iterations": solution.iterations >= T,
           "last_change": float(solution.change), "max_abs_error": error,
           "max_abs_state": float(np.abs(expected).max()),
           "leading_steps_within_1e-13": leading,
           "curve": curve,
           "curve_agrees_with_the_solve": curve[:len(errors)] == errors[:len(curve)]}
    if own is not None:
        row["loop_vs_model_forward"] = float(np.abs(expected - own).max())
    if T <= 100:
        # the recorded curve against separate solves with max_iterations=k
        worst = 0.0
        for k in range(1, min(len(curve), 8) + 1):
            states = newton.solve(linearise, h0, T, tol=TINY, max_iterations=k,
                                  bound=bound).states
            worst = max(worst, abs(float(np.abs(states - expected).max()) - curve[k - 1]))
        row["curve_vs_separate_solves"] = worst
        row["jacobian_vs_differences"] = jacobian_check(linearise, T, H, seed)
    print(f"iterations {system:18s} H={H:3d} T={T:6d}  {solution.iterations:4d} iterations "
          f"({'converged' if solution.converged else 'NOT converged'}), error {error:.1e}, "
          f"curve to k={len(curve)} ending {curve[-1]:.1e}", flush=True)
    return row


# --- timing -------------------------------------------------------------------------
def timing_cases(T, H, dtype, rng):
    model = gpurnn.ParaGRU(FEATURES, H, FEATURES, output="identity", dtype=dtype, seed=0)
    x = rng.normal(size=(BATCH, T, FEATURES)).astype(dtype)
    y = rng.normal(size=(BATCH, T, FEATURES)).astype(dtype)
    plans = {"scan": gpurnn.Plan(time="scan"), "loop": gpurnn.Plan(time="loop"),
             "scan-block1024": gpurnn.Plan(time="scan", block_steps=1024)}
    outputs = {}

    def run(name, what):
        def go():
            model.plan = plans[name]
            model.newton_log.clear()
            if what == "forward":
                outputs[name] = model.forward(x)[0]
            else:
                model.loss_and_grads(x, y)
            return list(model.newton_log.iterations), model.newton_log.fallbacks
        return go
    cases = {}
    for name in plans:
        for what in ("forward", "forward+backward"):
            if what == "forward" and name == "scan-block1024":
                continue                             # forward runs the sequence as one block
            cases[(name, what)] = run(name, what)
    return cases, outputs


def timing(T, H, dtype, quick, rng):
    cases, outputs = timing_cases(T, H, dtype, rng)
    logs = {}                                                        # each call's Newton counts
    times = interleaved(cases, rounds_for(T, quick), logs)
    difference = float(np.abs(outputs["scan"] - outputs["loop"]).max())
    rows = []
    for (variant, what), values in times.items():
        loop_times = times[("loop", what)]
        counts, fallbacks = logs[(variant, what)]
        row = {"section": "timing", "T": T, "hidden": H, "batch": BATCH, "dtype": dtype,
               "variant": variant, "what": what, "seconds": quartiles(values),
               "speedup_over_loop": speedup(loop_times, values),
               "newton": ({"solves": len(counts), "iterations_min": min(counts),
                           "iterations_median": statistics.median(counts),
                           "iterations_max": max(counts), "iterations_total": sum(counts),
                           "fallbacks": fallbacks} if counts else None)}
        if what == "forward" and variant == "scan":
            row["max_abs_output_difference_vs_loop"] = difference
        rows.append(row)
        its = (f"{row['newton']['iterations_min']}–{row['newton']['iterations_max']} it × "
               f"{row['newton']['solves']}" if counts else "")
        print(f"timing {dtype} T={T:6d} H={H:3d} {variant:15s} {what:17s} "
              f"{row['seconds']['median'] * 1e3:9.2f} ms  ×{row['speedup_over_loop']:.2f}  "
              f"{its}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="H of the iterations section (default 64 256; --quick: 64)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--cap", type=int, default=200,
                        help="max_iterations of every solve (and at most T)")
    parser.add_argument("--dense-max", type=int, default=1000,
                        help="the dense GRU at H > 64 only up to this T")
    parser.add_argument("--scaled-max", type=int, default=1000,
                        help="the scaled dense GRU only up to this T")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--trained-steps", type=int, default=600,
                        help="training steps of the trained section's model (0: skip it)")
    args = parser.parse_args(argv)
    if args.plot:
        plot()
        return
    hidden = args.hidden or ([64] if args.quick else [64, 256])
    load_before = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []

    def write():
        result = {"machine": machine(load_before), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv), "cap": args.cap,
                  "default_tolerance_float64": newton.rounding_tolerance(np.float64),
                  "rows": rows}
        JSON.write_text(json.dumps(result, indent=1))                # after every case
        return result

    for H in hidden:
        for T in args.lengths:
            systems = ["paragru"]
            if H <= 64 or T <= args.dense_max:
                systems.append("gru-quasi-deer")
            if H <= 64 and T <= args.scaled_max:
                systems += [f"gru-quasi-deer-x{s:g}" for s in SCALES]
            for system in systems:
                rows.append(iterations_case(system, H, T, args.cap))
                write()
    if args.trained_steps:
        rows += trained_case(args.trained_steps, [64, 256, 1024, 2048])
        write()
    if not args.skip_timing:
        rng = np.random.default_rng(0)
        for dtype in args.dtypes:
            for T in args.lengths:
                rows += timing(T, 64, dtype, args.quick, rng)
                write()
    result = write()
    print(f"wrote {JSON}; load {load_before} -> {result['machine']['load_after']}")
    plot()


def plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = json.loads(JSON.read_text())
    rows = data["rows"]
    its = [r for r in rows if r["section"] == "iterations"]
    hidden = sorted({r["hidden"] for r in its})
    fig, axes = plt.subplots(2, 2, figsize=(12, 10.5),
                             gridspec_kw={"height_ratios": [1.25, 1]})
    colors = {"paragru": "C0", "gru-quasi-deer": "C3", "gru-quasi-deer-x2": "C1",
              "gru-quasi-deer-x3": "C4", "gru-quasi-deer-x4": "C5"}
    lines = {100: ":", 1000: "--", 10000: "-", 100000: "-."}
    floor = 1e-17
    for ax, H in zip(axes[0], hidden[:2] + [None] * (2 - len(hidden[:2]))):
        if H is None:
            ax.axis("off")
            continue
        order = list(colors)
        for r in sorted(its, key=lambda r: (order.index(r["system"]) if r["system"] in order
                                            else len(order), r["T"])):
            if r["hidden"] != H:
                continue
            k = range(1, len(r["curve"]) + 1)
            ax.plot(k, [max(e, floor) for e in r["curve"]], color=colors.get(r["system"], "k"),
                    linestyle=lines.get(r["T"], "-"),
                    marker="o" if r["system"] == "paragru" else None, markersize=3,
                    label=f"{r['system']}, T={r['T']}")
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("Newton iteration k")
        ax.set_ylabel("max |h_t − h_t(loop)| after k iterations")
        ax.set_title(f"convergence, H={H}, float64, batch 8")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    timing_rows = [r for r in rows if r["section"] == "timing"]
    styles = {"scan": ("C0", "-"), "loop": ("C3", "--"), "scan-block1024": ("C2", ":")}
    for ax, what in zip(axes[1], ("forward", "forward+backward")):
        for dtype, marker in (("float32", "o"), ("float64", "s")):
            for variant, (color, line) in styles.items():
                sel = sorted((r for r in timing_rows if r["what"] == what
                              and r["dtype"] == dtype and r["variant"] == variant),
                             key=lambda r: r["T"])
                if not sel:
                    continue
                T = [r["T"] for r in sel]
                med = [r["seconds"]["median"] for r in sel]
                lo = [r["seconds"]["median"] - r["seconds"]["q1"] for r in sel]
                hi = [r["seconds"]["q3"] - r["seconds"]["median"] for r in sel]
                name = {"scan": "Newton" + (", one block" if what == "forward" else
                                            ", 128-step blocks"),
                        "scan-block1024": "Newton, 1024-step blocks"}.get(variant, variant)
                ax.errorbar(T, med, yerr=[lo, hi], color=color, linestyle=line,
                            marker=marker, label=f"{name}, {dtype}", capsize=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (steps), batch 8, H = 64")
        ax.set_ylabel("seconds (median, quartiles)")
        ax.set_title(f"ParaGRU model: {what}" + (" (loss_and_grads)" if what != "forward"
                                                  else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = data["machine"]
    fig.suptitle(f"Newton in time: ParaGRU (exact Jacobian), dense GRU (quasi-DEER); "
                 f"timings on {m['cpu_count']} CPU cores "
                 f"(load {m['load_before'][0]:.1f} → {m['load_after'][0]:.1f})")
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"wrote {PNG}")


if __name__ == "__main__":
    main()
