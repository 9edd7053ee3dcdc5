"""Linear recurrences over time solved by a parallel associative scan, and their adjoints.

A cell whose recurrence is linear in the state with an elementwise (diagonal) transition,

    h_t = a_t ⊙ h_{t−1} + b_t        (t = 0 … T−1, h_{−1} = h0),

with a_t, b_t computed from the inputs alone (minGRU, minLSTM, a diagonal linear RNN:
:mod:`gpurnn.engine.recurrences.diagonal`), is a prefix composition of the affine maps
f_t(h) = a_t h + b_t, and composition is associative:

    (a, b) ∘ (a', b') = (a' a, a' b + b')        (first (a, b), then (a', b')).

So the states are a scan (Blelloch 1990; Martin and Cundy 2018 for RNNs), and so is the
backward sweep: the adjoint G_t = dL/dh_t obeys the reverse linear recurrence

    G_t = d_t + a_{t+1} ⊙ G_{t+1},   G_{T−1} = d_{T−1} + carry,

(d_t the loss's gradient through output t alone, ``carry`` what the block after this one
sends back: a_T ⊙ G_T), the same scan over reversed time.

Three scans, each vectorised over (time, batch, hidden):

* ``method="chunked"`` — the host's default: time cut into chunks of C steps (about √T, 16 … 128),
  solved in three passes. (1) Every chunk's composition (its transition product and its
  state from a zero start) by a loop over the C positions, each operation over all chunks
  at once; (2) the states entering the chunks, a scan of those n = T/C compositions
  (Blelloch's, below); (3) every chunk re-run from its true entering state, again C
  operations over all chunks. About 5 T·B·H element operations, as Blelloch's, but every
  operation runs over contiguous (batch, hidden) rows of n chunks at once and the states
  are written once, not level by level: on a CPU that decides (benchmarks/parallel_time.py
  times it beside Blelloch's). Depth 2C + 2⌈log₂ n⌉ + 2: O(log T) for a fixed
  chunk, and C ≈ √T in practice.
* :func:`blelloch` — the work-efficient scan, written as odd–even recursive doubling
  (Blelloch's up-sweep pairs neighbours, the recursion solves the half-length problem,
  the down-sweep fills the even steps): 2⌈log₂ T⌉ levels, O(T) work. The default on a
  GPU without the scan kernel, where a level is a launch and depth decides; the chunked
  scan's scan of the chunk compositions.
* :func:`hillis_steele` — the step-efficient scan (Hillis and Steele 1986): ⌈log₂ T⌉
  levels, each on the whole (T, B, H) array, O(T log T) work. Fewer levels, so better
  where a level costs a launch and the work is spread over thousands of lanes (a GPU),
  worse on a CPU; kept as the third oracle and for the benchmark.

Rounding. Every method computes h_t = Σ_s (Π_{r=s+1..t} a_r) b_s + (Π_{r≤t} a_r) h0, only
associated differently. Write P_{s,t} = Π_{r=s+1..t} a_r and

    S_t = Σ_s |P_{s,t}| |b_s| + |P_{−1,t}| |h0|

(the same recurrence run on |a|, |b|, |h0|). Each term of the loop passes through at most
2(t − s) + 1 roundings; each term of a scan through at most k (Blelloch: one product and
one sum per level on the way up, one of each on the way down, k = 4⌈log₂ T⌉ + 2;
Hillis–Steele one of each per level; chunked: 2C in its own chunk, Blelloch's over the n
chunk compositions, 2C in the chunk it reaches, k = 4C + 4⌈log₂ n⌉ + 4). With u the unit
roundoff and γ_n = n u / (1 − n u),

    |h_t^loop − h_t| ≤ γ_{2T+1} S_t,   |h_t^scan − h_t| ≤ γ_k S_t,

so |scan − loop| ≤ (γ_{2T+1} + γ_k) S_t, k the largest of the methods';
:func:`rounding_bound` computes it, and
the tests hold the two to it. For |a_t| < 1 the products fade and only the last
1/(1 − |a|) steps matter, so in practice the difference is a few units in the last place
of S_t (float64: ≤ 1e-15 relative in the tests, far inside 1e-12). The adjoint is the same
recurrence reversed, with the same bound on the gradients G_t.
"""
from __future__ import annotations

import math

from ..arrays.backend import get_array_module, is_device_array

__all__ = ["TIME", "uses_scan", "AUTO_MIN_STEPS", "AUTO_MAX_ROW", "METHODS", "linear_scan",
           "reverse_scan", "linear_loop", "reverse_loop", "chunk_length",
           "default_method", "blelloch", "hillis_steele", "scan_depth", "rounding_bound", "scratch_shape",
           "stacked_sweep"]

METHODS = ("chunked", "blelloch", "hillis_steele")
TIME = ("auto", "scan", "loop")   # the plan's ``time`` field (gpurnn.engine.plan)

# ``time="auto"`` on the host: the scan from this many steps in a block, and only while a
# step's row (batch · hidden elements) is at most AUTO_MAX_ROW; below, the loop's two
# small operations a step cost less than the scan's passes over the block (measured by
# benchmarks/parallel_time.py on a 2-core AMD EPYC; see docs/parallel-time.md). On a GPU
# every loop step is a launch, so the scan from AUTO_MIN_STEPS_GPU steps (not yet measured).
AUTO_MIN_STEPS = 64
AUTO_MAX_ROW = 1024
AUTO_MIN_STEPS_GPU = 16


def uses_scan(time: str, steps: int, like) -> bool:
    """Whether a block of ``steps`` steps on arrays like ``like`` (time, batch, ...) runs as a
    scan under the plan's ``time`` ("scan", "loop" or "auto")."""
    if time == "loop" or steps < 2:
        return False
    if time == "scan":
        return True
    row = math.prod(like.shape[1:])
    if is_device_array(like):                                # a GPU's (or cpu-strict's)
        return steps >= AUTO_MIN_STEPS_GPU
    return steps >= AUTO_MIN_STEPS and row <= AUTO_MAX_ROW


def _axis_steps(a, b):
    """a broadcast to b's shape (a transition constant over time or batch may come as a
    smaller array)."""
    xp = get_array_module(b)
    return a if a.shape == b.shape else xp.broadcast_to(a, b.shape)


def blelloch(a, b, out=None, scratch=None):
    """Prefix states of h_t = a_t h_{t−1} + b_t with h_{−1} = 0 (fold h0 into b_0 first),
    by odd–even recursive doubling; ``a``, ``b`` (T, ...). Returns (T, ...), in ``out`` if
    given (which may be ``b`` itself)."""
    xp = get_array_module(b)
    a = _axis_steps(a, b)
    steps = b.shape[0]
    if out is None:
        out = xp.empty(b.shape, dtype=b.dtype)
    if out is not b:
        out[...] = b
    _blelloch_inplace(xp, a, out, steps, _scratch(xp, b, scratch))
    return out


def scratch_shape(shape):
    """The scratch :func:`linear_scan` and :func:`reverse_scan` use for a (T, ...) problem
    (every level's half-length pairs, 2 (T/2 + T/4 + …) < 2T steps), so that a caller can
    keep it between calls: fresh large arrays cost a page fault per page on every call."""
    return (2 * shape[0] + 2,) + tuple(shape[1:])


def _blelloch_inplace(xp, a, h, steps, scratch):
    # h (contiguous) holds b on entry and the states on exit; scratch holds 2 (T/2 + …).
    if steps == 1:
        return
    pairs = steps // 2
    a_odd = a[1:2 * pairs:2]                                  # steps 2k + 1
    b_pair, a_pair, rest = scratch[:pairs], scratch[pairs:2 * pairs], scratch[2 * pairs:]
    # Up-sweep: compose each pair, (a_2k, b_2k) then (a_2k+1, b_2k+1), into a contiguous
    # half-length problem: b' = a_2k+1 b_2k + b_2k+1, a' = a_2k+1 a_2k.
    xp.multiply(a_odd, h[0:2 * pairs:2], out=b_pair)
    b_pair += h[1:2 * pairs:2]
    if pairs > 1:
        xp.multiply(a_odd, a[0:2 * pairs:2], out=a_pair)
        _blelloch_inplace(xp, a_pair, b_pair, pairs, rest)   # the odd steps' states
    h[1:2 * pairs:2] = b_pair
    # Down-sweep: the even steps 2k ≥ 2 from the odd state just before them.
    if steps > 2:
        evens = h[2:steps:2]                                  # steps 2, 4, ...
        count = evens.shape[0]
        tail = xp.multiply(a[2:steps:2], h[1:2 * count:2], out=a_pair[:count])
        evens += tail


def chunk_length(steps: int) -> int:
    """The chunked scan's chunk: the power of two nearest √T, within 16 … 128 (measured:
    shorter chunks make more, smaller operations; longer ones leave the per-chunk rows
    out of cache)."""
    if steps < 4:
        return 1
    return int(min(128, max(16, 2 ** round(math.log2(math.sqrt(steps))))))


def _chunk_count(steps: int, C: int) -> int:
    # whole chunks after step 0 (which starts the recurrence); the rest is the tail
    return (steps - 1) // C if C > 1 else 0


def default_method(like) -> str:
    """The scan for arrays like ``like``: chunked on the host, Blelloch's on a GPU (fewest
    levels of the two work-efficient scans: a level there is a launch) and on cpu-strict,
    which stands in for one."""
    return "blelloch" if is_device_array(like) else "chunked"


def _chunked_inplace(xp, coeff, h, scratch, chunk=None):
    # h (T, ...) holds b on entry, h_0 already final, and the states on exit: h_t += c_{t−1}
    # h_{t−1} for t ≥ 1, coeff = (c_0 … c_{T−2}). Either may be a reversed view (the
    # adjoint's): splitting the time axis into (chunk, position) is a view of any stride.
    steps = h.shape[0]
    C = chunk_length(steps) if chunk is None else int(chunk)
    n = _chunk_count(steps, C)
    if n >= 2:
        rest = h.shape[1:]
        A = coeff[:n * C].reshape((n, C) + rest)                    # chunk c: steps 1 + cC …
        H = h[1:1 + n * C].reshape((n, C) + rest)                  # a view: one axis split
        if scratch.shape[0] < 6 * n + 2:                             # chunks under 3 steps
            scratch = xp.empty((6 * n + 2,) + rest, dtype=h.dtype)
        s, p, tmp = scratch[:n], scratch[n:2 * n], scratch[2 * n:3 * n]
        finals, work = scratch[3 * n:4 * n], scratch[4 * n:]
        # (1) each chunk's composition: state s from a zero start, transition product p
        s[...] = H[:, 0]
        p[...] = A[:, 0]
        for j in range(1, C):
            xp.multiply(A[:, j], s, out=tmp)
            xp.add(tmp, H[:, j], out=s)
            p *= A[:, j]
        # (2) the state at the end of every chunk: a scan over the n compositions from h_0
        xp.multiply(p[0], h[0], out=finals[0])
        finals[0] += s[0]
        finals[1:] = s[1:]
        _blelloch_inplace(xp, p, finals, n, work)
        # (3) every chunk re-run from its entering state (h_0, then the chunk before's end)
        xp.multiply(A[0, 0], h[0], out=tmp[0])
        xp.multiply(A[1:, 0], finals[:-1], out=tmp[1:])
        H[:, 0] += tmp
        for j in range(1, C):
            xp.multiply(A[:, j], H[:, j - 1], out=tmp)
            H[:, j] += tmp
        start = 1 + n * C
    else:
        start = 1
    for t in range(start, steps):                                   # the tail, step by step
        h[t] += coeff[t - 1] * h[t - 1]


def hillis_steele(a, b, out=None):
    """As :func:`blelloch`, by Hillis and Steele's doubling: after level k each step holds
    the composition of the 2^k steps ending at it."""
    xp = get_array_module(b)
    a = xp.array(_axis_steps(a, b), copy=True)
    h = xp.array(b, copy=True)
    steps = b.shape[0]
    shift = 1
    while shift < steps:
        # (a_t, h_t) ← (a_t a_{t−s}, a_t h_{t−s} + h_t), later steps first (from copies)
        h[shift:] += a[shift:] * h[:-shift]
        if 2 * shift < steps:
            a[shift:] = a[shift:] * a[:-shift]
        shift *= 2
    if out is None:
        return h
    out[...] = h
    return out


def _scratch(xp, like, scratch):
    return scratch if scratch is not None else xp.empty(scratch_shape(like.shape), like.dtype)


def linear_scan(a, b, h0, method=None, out=None, scratch=None, chunk=None):
    """States (T, batch, ...) of h_t = a_t ⊙ h_{t−1} + b_t from ``h0`` (batch, ...), by the
    scan ``method`` (one of :data:`METHODS`; None: :func:`default_method`). The first step
    is the loop's own a_0 h0 + b_0; ``out`` receives the states if given; ``chunk`` is the
    chunked scan's chunk (None: :func:`chunk_length`)."""
    xp = get_array_module(b)
    a = _axis_steps(a, b)
    method = _method(method, b)
    if out is None:
        out = xp.empty(b.shape, dtype=b.dtype)
    out[...] = b
    first = xp.multiply(a[0], h0)
    out[0] = first + b[0]                                    # h_0 = a_0 h0 + b_0, as the loop
    if method == "chunked":
        _chunked_inplace(xp, a[1:], out, _scratch(xp, b, scratch), chunk)
    elif method == "blelloch":
        _blelloch_inplace(xp, a, out, b.shape[0], _scratch(xp, b, scratch))
    else:
        hillis_steele(a, out, out=out)
    return out


def _method(method, like):
    if method is None:
        return default_method(like)
    if method not in METHODS:
        raise ValueError(f"unknown scan method {method!r}; expected one of {', '.join(METHODS)}")
    return method


def linear_loop(a, b, h0, out=None):
    """The same states step by step: the plain path the scan is held to."""
    xp = get_array_module(b)
    a = _axis_steps(a, b)
    if out is None:
        out = xp.empty(b.shape, dtype=b.dtype)
    h = h0
    for t in range(b.shape[0]):
        xp.multiply(a[t], h, out=out[t])
        out[t] += b[t]
        h = out[t]
    return out


def reverse_scan(a, d, carry=None, method=None, out=None, scratch=None, chunk=None):
    """The adjoint of :func:`linear_scan` over one block: G (T, batch, ...) with
    G_t = d_t + a_{t+1} ⊙ G_{t+1} and G_{T−1} = d_{T−1} + ``carry`` (None: zero), and the
    carry for the block before, a_0 ⊙ G_0. ``d`` is dL/dh_t through output t alone."""
    xp = get_array_module(d)
    a = _axis_steps(a, d)
    method = _method(method, d)
    steps = d.shape[0]
    if out is None:
        out = xp.empty(d.shape, dtype=d.dtype)
    out[...] = d
    if carry is not None:
        out[-1] += carry                                     # as the sweep: carry + d_{T−1}
    if steps > 1:
        # Reversed time: step j = T−1−t has coefficient a_{t+1}, and j = 0 none (its
        # "h0" is zero: the carry is already in).
        rev = out[::-1]
        coeff = a[:0:-1]                                     # a_{T−1}, …, a_1 for j = 1 …
        if method == "chunked":
            _chunked_inplace(xp, coeff, rev, _scratch(xp, d, scratch), chunk)
        elif method == "blelloch":
            _reverse_blelloch(xp, coeff, rev, steps, _scratch(xp, d, scratch))
        else:
            rev[...] = hillis_steele(_shifted(xp, coeff), rev)
    return out, xp.multiply(a[0], out[0])


def _shifted(xp, coeff):
    """(T, ...) coefficients with a zero first step (the reversed problem's j = 0)."""
    full = xp.zeros((coeff.shape[0] + 1,) + coeff.shape[1:], dtype=coeff.dtype)
    full[1:] = coeff
    return full


def _reverse_blelloch(xp, coeff, rev, steps, scratch):
    # rev (a reversed view of a contiguous array) holds d on entry; the coefficient of
    # step j ≥ 1 is coeff[j − 1] (a reversed view too: the scan reads it strided). Run on
    # a contiguous copy: the last two scratch steps are left for the j = 0 coefficient.
    work = xp.ascontiguousarray(rev)
    full = _shifted(xp, coeff)
    _blelloch_inplace(xp, full, work, steps, scratch)
    rev[...] = work


def reverse_loop(a, d, carry=None, out=None):
    """The adjoint step by step, as the engine's sweep runs it: the plain path."""
    xp = get_array_module(d)
    a = _axis_steps(a, d)
    if out is None:
        out = xp.empty(d.shape, dtype=d.dtype)
    g = xp.zeros(d.shape[1:], dtype=d.dtype) if carry is None else carry.copy()
    for t in reversed(range(d.shape[0])):
        g += d[t]
        out[t] = g
        g = a[t] * g
    return out, g


def scan_depth(steps: int, method="blelloch") -> int:
    """Levels (dependent rounds of array operations) a scan of ``steps`` steps runs; the
    loop's depth is ``steps``."""
    levels = max(0, math.ceil(math.log2(steps))) if steps > 1 else 0
    if method == "chunked":
        C = chunk_length(steps)
        n = _chunk_count(steps, C)
        if n < 2:
            return max(0, steps - 1)
        return 2 * (C - 1) + scan_depth(n) + 2 + (steps - 1 - n * C)
    return 2 * levels if method == "blelloch" else levels


def rounding_bound(a, b, h0, unit_roundoff, chunk=None):
    """The bound (T, batch, ...) on |scan − loop| of the module docstring, for every method
    (the chunked scan's with chunks of ``chunk`` steps, None: :func:`chunk_length`):
    (γ_{2T+1} + γ_k) S_t, S from the loop on |a|, |b|, |h0|."""
    xp = get_array_module(b)
    steps = b.shape[0]
    S = linear_loop(xp.abs(_axis_steps(a, b)), xp.abs(b), xp.abs(h0))

    def gamma(n):
        return n * unit_roundoff / (1 - n * unit_roundoff)
    levels = max(1, math.ceil(math.log2(max(steps, 2))))
    C = chunk_length(steps) if chunk is None else int(chunk)
    chunks = max(2, _chunk_count(steps, C))
    k = max(4 * levels + 2, 4 * C + 4 * math.ceil(math.log2(chunks)) + 4)
    return (gamma(2 * steps + 1) + gamma(k)) * S


def stacked_sweep(sweeps, input_grads, between, width, hidden, dstates, carry, deltas):
    """A stack's block solved layer by layer, top first: each layer's ``sweeps[l](d, carry,
    deltas) -> carry_before`` (a reverse scan) on its slice of ``dstates`` (the state of
    layer l is columns l·width … (l+1)·width − 1, its h the first ``hidden``), plus, for
    l < L − 1, ``input_grads[l + 1](deltas)`` of the layer above at every step (times the
    dropout mask ``between[l + 1]`` where there is one). Exact for full BPTT: the layer
    above's gradient at step t never depends on the layer below's. Returns the stack's
    carry for the block before."""
    xp = get_array_module(dstates)
    layers = len(sweeps)
    carries = [None] * layers
    dx = None
    for layer in reversed(range(layers)):
        cols = slice(layer * width, (layer + 1) * width)
        d = xp.ascontiguousarray(dstates[..., cols])
        if dx is not None:
            d[..., :hidden] += dx                                    # from the layer above
        c = None if carry is None else xp.ascontiguousarray(carry[..., cols])
        out = xp.empty(d.shape, dtype=d.dtype)
        carries[layer] = sweeps[layer](d, c, out)
        deltas[..., cols] = out
        if layer > 0:
            dx = input_grads[layer](out)
            if between[layer] is not None:
                dx *= between[layer]
    return xp.concatenate(carries, axis=-1)
