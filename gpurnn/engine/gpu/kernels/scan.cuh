// The diagonal linear recurrence h_t = c_t h_{t-1} + x_t over one lane (a (batch, hidden)
// element) of (T, batch, hidden) arrays, and the three phases of its chunked scan
// (gpurnn/engine/gpu/scan.py launches them):
//
//   1. chunk_total: each chunk of L steps but the last alone, from zero: its composition
//      h ↦ A h + B (A = Π c_t, B its states' recurrence from h = 0);
//   2. carries: one pass per lane over those totals in order, giving the state that
//      enters each chunk (C − 1 compositions for C chunks);
//   3. chunk_states: each chunk again, from the state that enters it, writing the states.
//
// Phase 3 recomputes the chunk rather than correcting phase 1's states: that reads a and
// b once more instead of reading and writing the states once more, and makes every chunk
// the loop's own arithmetic from its entry state (the first chunk is the loop exactly).
//
// The forward scan is c_t = a_t, x_t = b_t, from h0. The adjoint G_t = d_t + a_{t+1} G_{t+1},
// G_{T-1} = d_{T-1} + carry, is the same recurrence over reversed time with c_t = a_{t+1}
// (1 at t = T − 1, where the carry enters unscaled), x_t = d_t, from the carry; the
// gradient for the block before is a_0 G_0.
#pragma once
#include "common.cuh"

namespace gpurnn {

// One lane i of n = batch·hidden: where its coefficients and inputs are. ``a`` is (T, n),
// or (hidden,) constant over time and batch (the LRU's λ).
template <class T> struct ScanLane {
  const T* a;
  const T* x;
  index_t n, i;
  int steps, hidden;
  bool a_steps, reverse;

  GPURNN_HD T a_at(int t) const { return a[a_steps ? t * n + i : i % hidden]; }
  GPURNN_HD T coefficient(int t) const {
    if (!reverse) return a_at(t);
    return t + 1 < steps ? a_at(t + 1) : T(1);
  }
  GPURNN_HD T input(int t) const { return x[t * n + i]; }
};

// The time steps of the chunk at ``position`` in the scan's order (the forward's chunk
// k = position, the reverse's k = chunks − 1 − position), walked in that order.
struct ChunkSteps {
  int first, stride, count;
  GPURNN_HD ChunkSteps(int position, int chunk, int steps, bool reverse) {
    int chunks = (steps + chunk - 1) / chunk;
    int k = reverse ? chunks - 1 - position : position;
    int lo = k * chunk, hi = min_(lo + chunk, steps);
    first = reverse ? hi - 1 : lo;
    stride = reverse ? -1 : 1;
    count = hi - lo;
  }
};

// Phase 1: the chunk's composition (A, B). Starting from (1, 0), the first step's product
// and sum are exact, so B rounds as the loop does from h = 0.
template <class T>
GPURNN_HD void chunk_total(const ScanLane<T>& lane, ChunkSteps steps, T& A, T& B) {
  A = T(1);
  B = T(0);
  for (int s = 0, t = steps.first; s < steps.count; ++s, t += steps.stride) {
    T c = lane.coefficient(t);
    A = c * A;
    B = c * B + lane.input(t);
  }
}

// Phase 2: the state entering each chunk but the first, in place of the chunk totals' B:
// h ← A_p h + B_p from ``h`` (h0, or the carry), over the C − 1 totals of the lane.
template <class T>
GPURNN_HD void carries(const T* totals_a, T* totals_b, T h, index_t n, index_t i, int chunks) {
  for (int p = 0; p + 1 < chunks; ++p) {
    h = totals_a[p * n + i] * h + GPURNN_FAULT_SIGN * totals_b[p * n + i];
    totals_b[p * n + i] = h;
  }
}

// Phase 3: the chunk's states from the state ``h`` entering it, step by step as the loop;
// returns the last one.
template <class T>
GPURNN_HD T chunk_states(const ScanLane<T>& lane, ChunkSteps steps, T h, T* out) {
  for (int s = 0, t = steps.first; s < steps.count; ++s, t += steps.stride) {
    h = lane.coefficient(t) * h + lane.input(t);
    out[t * lane.n + lane.i] = h;
  }
  return h;
}

}  // namespace gpurnn
