// The chunked scan's three kernels (maths in scan.cuh), each a grid-stride loop over
// (chunk position, lane) items, lanes fastest so a warp's loads of one step coalesce.
// ``a_steps``: a is (T, n), else (hidden,); ``reverse``: the adjoint (scan.cuh).
#include "scan.cuh"

namespace gpurnn {

template <class T>
__device__ ScanLane<T> scan_lane(const T* a, const T* x, index_t n, index_t i, int steps,
                                 int hidden, int a_steps, int reverse) {
  return ScanLane<T>{a, x, n, i, steps, hidden, a_steps != 0, reverse != 0};
}

// Phase 1 over the first C − 1 chunk positions: totals_a, totals_b (C − 1, n).
template <class T>
__device__ void scan_chunk_totals(const T* a, const T* x, T* totals_a, T* totals_b, index_t n,
                                  int steps, int hidden, int a_steps, int chunk, int reverse) {
  index_t items = (index_t)((steps + chunk - 1) / chunk - 1) * n;
  for (index_t q = first_index(); q < items; q += grid_stride()) {
    ScanLane<T> lane = scan_lane(a, x, n, q % n, steps, hidden, a_steps, reverse);
    chunk_total(lane, ChunkSteps(int(q / n), chunk, steps, reverse != 0), totals_a[q],
                totals_b[q]);
  }
}

// Phase 2, one item per lane; ``init`` (n) is h0 or the carry, null for zero.
template <class T>
__device__ void scan_carries(const T* totals_a, T* totals_b, const T* init, index_t n,
                             int chunks) {
  for (index_t i = first_index(); i < n; i += grid_stride())
    carries(totals_a, totals_b, init ? init[i] : T(0), n, i, chunks);
}

// Phase 3 over all C chunk positions; the first enters from ``init``, position p > 0 from
// carried[p − 1] (phase 2's output; null when C = 1). ``before`` (n, the adjoint only, or
// null): a_0 G_0, from the last position, which holds step 0.
template <class T>
__device__ void scan_chunk_states(const T* a, const T* x, T* out, const T* carried,
                                  const T* init, T* before, index_t n, int steps, int hidden,
                                  int a_steps, int chunk, int reverse) {
  int chunks = (steps + chunk - 1) / chunk;
  for (index_t q = first_index(); q < (index_t)chunks * n; q += grid_stride()) {
    index_t i = q % n;
    int position = int(q / n);
    ScanLane<T> lane = scan_lane(a, x, n, i, steps, hidden, a_steps, reverse);
    T h = position > 0 ? carried[q - n] : init ? init[i] : T(0);
    h = chunk_states(lane, ChunkSteps(position, chunk, steps, reverse != 0), h, out);
    if (before && position == chunks - 1) before[i] = lane.a_at(0) * h;
  }
}

}  // namespace gpurnn

#define GPURNN_SCAN(S, T)                                                                      \
  extern "C" __global__ void scan_chunk_totals_##S(const T* a, const T* x, T* totals_a,        \
                                                   T* totals_b, gpurnn::index_t n, int steps,  \
                                                   int hidden, int a_steps, int chunk,         \
                                                   int reverse) {                              \
    gpurnn::scan_chunk_totals(a, x, totals_a, totals_b, n, steps, hidden, a_steps, chunk,      \
                              reverse);                                                        \
  }                                                                                            \
  extern "C" __global__ void scan_carries_##S(const T* totals_a, T* totals_b, const T* init,   \
                                              gpurnn::index_t n, int chunks) {                 \
    gpurnn::scan_carries(totals_a, totals_b, init, n, chunks);                                 \
  }                                                                                            \
  extern "C" __global__ void scan_chunk_states_##S(const T* a, const T* x, T* out,             \
                                                   const T* carried, const T* init, T* before, \
                                                   gpurnn::index_t n, int steps, int hidden,   \
                                                   int a_steps, int chunk, int reverse) {      \
    gpurnn::scan_chunk_states(a, x, out, carried, init, before, n, steps, hidden, a_steps,     \
                              chunk, reverse);                                                 \
  }                                                                                            \
  GPURNN_EXPORT(scan_chunk_totals_##S)                                                         \
  GPURNN_EXPORT(scan_carries_##S)                                                              \
  GPURNN_EXPORT(scan_chunk_states_##S)

GPURNN_SCAN(f32, float)
GPURNN_SCAN(f64, double)
