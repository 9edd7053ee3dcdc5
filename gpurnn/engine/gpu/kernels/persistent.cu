// The Elman, GRU and LSTM recurrences as persistent kernels (the technique of Baidu's persistent
// RNNs and cuDNN's PERSIST algorithms): the whole forward over time in one launch, and the
// whole full-BPTT backward sweep in another. Elman: h_t = f(W h_{t-1} + xin_t);
// e_h(t) = (dL/dh_t) ⊙ f'(a_t), dL/dh_{t-1} = e_h(t) W + (output t−1's gradient). GRU: the
// gate maths of gated.cuh around W_hh h_{t-1}; backward dL/dh_{t-1} = δʰ W_hh + z ⊙ dL/dh_t.
// LSTM: likewise, with the cell state's dL/dc_{t-1} = dc ⊙ f kept by the unit's own block.
//
// Block b owns ``rows`` consecutive hidden units and keeps their slice of W in shared
// memory for the whole sequence (rows of W forward, columns backward; for the gated cells
// the rows of every gate, and the columns of all G·H rows), so W is read from
// global memory once instead of once per step. Between steps all blocks meet at a grid
// barrier, since a step needs all of the previous one's vector. Needs a cooperative launch
// (every block resident) and grid·rows ≥ hidden. No cuBLAS call is involved, so a launch can
// also be captured in a CUDA graph (CuPy refuses cuBLAS during stream capture).
#include "gated.cuh"
#include "persistent.cuh"

namespace gpurnn {

// For every (batch row b, own unit u): Σ_k w[u, k] x[b, k] over k < length, with w (units,
// length) in shared memory and x's rows ``x_stride`` apart, handed to store(b, u, sum). Threads form groups of ``lanes``
// (a power of two dividing blockDim.x); a group computes one output at a time, each lane a
// strided part of the dot product, reduced in ``partial`` (blockDim.x values). Every thread
// of the block must call it: the trip count is the same for all, so the barriers match.
template <class T, class Store>
__device__ void block_rows_times(const T* w, const T* x, index_t x_stride, int units,
                                 int batch, int length, int lanes, T* partial, Store store) {
  const int lane = threadIdx.x % lanes, groups = blockDim.x / lanes;
  const int outputs = units * batch;
  for (int base = 0; base < outputs; base += groups) {
    const int o = base + threadIdx.x / lanes;
    const int b = o / max_(units, 1), u = o % max_(units, 1);
    partial[threadIdx.x] = o < outputs ? partial_dot(w + (index_t)u * length,
                                                     x + b * x_stride, length, lane, lanes)
                                       : T(0);
    __syncthreads();
    for (int width = lanes / 2; width > 0; width /= 2) {
      if (lane < width) partial[threadIdx.x] += partial[threadIdx.x + width];
      __syncthreads();
    }
    if (lane == 0 && o < outputs) store(b, u, partial[threadIdx.x]);
    __syncthreads();
  }
}

template <class T> struct ForwardStore {  // h_t = f(W h_{t-1} + xin_t)
  T* h;
  const T* xin;
  int hidden, first_unit, act;
  __device__ void operator()(int b, int u, T sum) const {
    const index_t at = (index_t)b * hidden + first_unit + u;
    h[at] = activate(act, sum + GPURNN_FAULT_SIGN * xin[at]);
  }
};

template <class T> struct BackwardStore {  // dL/dh_{t-1} through the recurrence: e_h(t) W
  T* g;
  int hidden, first_unit;
  __device__ void operator()(int b, int u, T sum) const {
    g[(index_t)b * hidden + first_unit + u] = sum;
  }
};

// Units [first, first + units) of this block; shared memory: (rows·hidden + blockDim.x) T.
__device__ __forceinline__ int own_units(int rows, int hidden) {
  return max_(0, min_(rows, hidden - (int)blockIdx.x * rows));
}

// states (T, B, H) receives h_0 … h_{T-1}; xin (T, B, H) = U x_t + b; h0 (B, H); W (H, H).
template <class T>
__device__ void elman_persistent_forward(T* states, const T* xin, const T* h0, const T* W,
                                         unsigned int* barrier, int steps, int batch,
                                         int hidden, int rows, int lanes, int act) {
  T* w_rows = dynamic_shared<T>();
  T* partial = w_rows + (index_t)rows * hidden;
  const int first = blockIdx.x * rows, units = own_units(rows, hidden);
  for (index_t k = threadIdx.x; k < (index_t)units * hidden; k += blockDim.x)
    w_rows[k] = W[(index_t)first * hidden + k];                      // rows of W
  __syncthreads();
  const index_t bh = (index_t)batch * hidden;
  for (int t = 0; t < steps; ++t) {
    const T* h_prev = t == 0 ? h0 : states + (t - 1) * bh;
    block_rows_times(w_rows, h_prev, hidden, units, batch, hidden, lanes, partial,
                     ForwardStore<T>{states + t * bh, xin + t * bh, hidden, first, act});
    grid_barrier(barrier);  // h_t complete everywhere before step t + 1 reads it
  }
}

// Full BPTT for the Elman cell: deltas (T, B, H) receives e_h(t); g (B, H), zero on entry,
// is the running dL/dh_t (dL/dh_{-1} on exit); dstates (T, B, H) each step's gradient through
// its own output; states (T, B, H) the forward's h_t. A block computes e_h(t) for its own
// units from its own part of g (so no barrier is needed there), then, after one grid barrier,
// its own units of e_h(t) W from its columns of W.
template <class T>
__device__ void elman_persistent_backward(T* deltas, T* g, const T* dstates, const T* states,
                                          const T* W, unsigned int* barrier, int steps,
                                          int batch, int hidden, int rows, int lanes,
                                          int act) {
  T* w_cols = dynamic_shared<T>();
  T* partial = w_cols + (index_t)rows * hidden;
  const int first = blockIdx.x * rows, units = own_units(rows, hidden);
  for (index_t k = threadIdx.x; k < (index_t)units * hidden; k += blockDim.x)
    w_cols[k] = W[(k % hidden) * hidden + first + k / hidden];       // columns of W
  const index_t bh = (index_t)batch * hidden;
  for (int t = steps - 1; t >= 0; --t) {
    __syncthreads();  // this block's g (and, at t = T − 1, W) written
    for (int o = threadIdx.x; o < units * batch; o += blockDim.x) {
      const index_t at = (index_t)(o / units) * hidden + first + o % units;
      const index_t here = t * bh + at;  // e_h(t) = (dL/dh_t) ⊙ f'(a_t)
      deltas[here] = elman_delta(act, g[at] + GPURNN_FAULT_SIGN * dstates[here], states[here]);
    }
    grid_barrier(barrier);  // e_h(t) complete everywhere before any block multiplies it
    block_rows_times(w_cols, deltas + t * bh, hidden, units, batch, hidden, lanes, partial,
                     BackwardStore<T>{g, hidden, first});
  }
}


template <class T> struct SharedStore {  // this step's W_h· h_{t-1} of own units, in shared memory
  T* out;
  int width;
  __device__ void operator()(int b, int v, T sum) const { out[b * width + v] = sum; }
};

// GRU forward: states (T, B, H) receives h_t; gates (T, B, 3H) holds the input side as the
// NumPy path leaves it (r and z halved, biases folded) and receives r, z, n; hn (T, B, H)
// receives W_hn h_{t-1} + b_hn; W is weight_hh (3H, H) unscaled; b_hn (H,) or null.
// Shared memory: (3·rows·hidden + blockDim.x + 3·rows·batch) values of T.
template <class T>
__device__ void gru_persistent_forward(T* states, T* gates, T* hn, const T* h0, const T* W,
                                       const T* b_hn, unsigned int* barrier, int steps,
                                       int batch, int hidden, int rows, int lanes) {
  T* w = dynamic_shared<T>();                    // rows of W_hr, W_hz, W_hn for own units
  T* partial = w + (index_t)3 * rows * hidden;
  T* gh = partial + blockDim.x;                  // (batch, 3·units)
  const int first = blockIdx.x * rows, units = own_units(rows, hidden);
  const index_t per_gate = (index_t)units * hidden;
  for (index_t k = threadIdx.x; k < 3 * per_gate; k += blockDim.x) {
    const index_t gate = k / per_gate, u = (k % per_gate) / hidden, c = k % hidden;
    w[k] = W[(gate * hidden + first + u) * hidden + c];
  }
  __syncthreads();
  const index_t bh = (index_t)batch * hidden, H = hidden;
  for (int t = 0; t < steps; ++t) {
    const T* h_prev = t == 0 ? h0 : states + (t - 1) * bh;
    block_rows_times(w, h_prev, hidden, 3 * units, batch, hidden, lanes, partial,
                     SharedStore<T>{gh, 3 * units});             // ends with __syncthreads
    for (int o = threadIdx.x; o < units * batch; o += blockDim.x) {
      const int b = o / units, u = o % units;
      const index_t j = first + u, e = b * H + j, row = (t * batch + b) * 3 * H;
      const T* ghb = gh + b * 3 * units;
      const T hnv = ghb[2 * units + u] + (b_hn ? b_hn[j] : T(0));
      T r, z, n;
      states[t * bh + e] = gru_forward(gates[row + j], T(0.5) * ghb[u], gates[row + H + j],
                                       T(0.5) * ghb[units + u], gates[row + 2 * H + j], hnv,
                                       h_prev[e], r, z, n);
      gates[row + j] = r;
      gates[row + H + j] = z;
      gates[row + 2 * H + j] = n;
      hn[t * bh + e] = hnv;
    }
    grid_barrier(barrier);  // h_t complete everywhere (and gh free) before step t + 1
  }
}

template <class T> struct GruBackwardStore {  // dL/dh_{t-1} = δʰ W_hh + z ⊙ dL/dh_t
  T* g;
  const T* g_t;       // dL/dh_t (B, H)
  const T* gates_t;   // r, z, n (B, 3H)
  int hidden, first_unit;
  __device__ void operator()(int b, int u, T sum) const {
    const index_t j = first_unit + u, e = (index_t)b * hidden + j;
    g[e] = sum + g_t[e] * gates_t[(index_t)b * 3 * hidden + hidden + j];
  }
};

// GRU full BPTT: deltas (T, B, H) receives dL/dS_t (the GRU's per-step delta); g (B, H),
// zero on entry, the running gradient; d2 (2, B, 3H) scratch for δʰ, alternate steps in
// alternate halves (a block may write step t − 1's while another still reads step t's);
// dstates (T, B, H); K2 (T, B, 3, H) the hidden-side factors (gru_factors); gates (T, B, 3H)
// = r, z, n; W = weight_hh (3H, H). Shared memory: (3·hidden·rows + blockDim.x) values.
template <class T>
__device__ void gru_persistent_backward(T* deltas, T* g, T* d2, const T* dstates, const T* K2,
                                        const T* gates, const T* W, unsigned int* barrier,
                                        int steps, int batch, int hidden, int rows,
                                        int lanes) {
  T* w = dynamic_shared<T>();                    // columns of W_hh (all 3H rows) of own units
  const index_t H = hidden, width = 3 * H;
  T* partial = w + rows * width;
  const int first = blockIdx.x * rows, units = own_units(rows, hidden);
  for (index_t k = threadIdx.x; k < units * width; k += blockDim.x)
    w[k] = W[(k % width) * H + first + k / width];
  const index_t bh = (index_t)batch * H;
  for (int t = steps - 1; t >= 0; --t) {
    __syncthreads();  // this block's g (and, at t = T − 1, W) written
    T* d = d2 + (t % 2) * batch * width;
    for (int o = threadIdx.x; o < units * batch; o += blockDim.x) {
      const int b = o / units;
      const index_t j = first + o % units, e = b * H + j;
      const T gt = g[e] + GPURNN_FAULT_SIGN * dstates[t * bh + e];  // dL/dh_t
      deltas[t * bh + e] = gt;
      for (int k = 0; k < 3; ++k)                                   // δʰ = dL/dh_t ⊙ K2_t
        d[b * width + k * H + j] = gt * K2[((t * batch + b) * 3 + k) * H + j];
    }
    grid_barrier(barrier);  // δʰ complete everywhere before any block multiplies it
    block_rows_times(w, d, width, units, batch, (int)width, lanes, partial,
                     GruBackwardStore<T>{g, deltas + t * bh, gates + t * batch * width, hidden,
                                         first});
  }
}

// LSTM forward: states (T, B, 2H) receives [h_t, c_t]; gates (T, B, 4H) holds the input side
// as the NumPy path leaves it (i, f, o halved, both biases folded) and receives i, f, g, o;
// W is weight_hh (4H, H) unscaled; h0 (B, 2H) = [h, c]. Shared memory: (4·rows·hidden +
// blockDim.x + 4·rows·batch) values of T.
template <class T>
__device__ void lstm_persistent_forward(T* states, T* gates, const T* h0, const T* W,
                                        unsigned int* barrier, int steps, int batch,
                                        int hidden, int rows, int lanes) {
  T* w = dynamic_shared<T>();                    // rows of W_hi, W_hf, W_hg, W_ho of own units
  T* partial = w + (index_t)4 * rows * hidden;
  T* gh = partial + blockDim.x;                  // (batch, 4·units)
  const int first = blockIdx.x * rows, units = own_units(rows, hidden);
  const index_t per_gate = (index_t)units * hidden, H = hidden;
  for (index_t k = threadIdx.x; k < 4 * per_gate; k += blockDim.x) {
    const index_t gate = k / per_gate, u = (k % per_gate) / hidden, c = k % hidden;
    w[k] = W[(gate * H + first + u) * H + c];
  }
  __syncthreads();
  const index_t state_rows = (index_t)batch * 2 * H;  // one step of states
  for (int t = 0; t < steps; ++t) {
    const T* prev = t == 0 ? h0 : states + (t - 1) * state_rows;
    block_rows_times(w, prev, 2 * H, 4 * units, batch, hidden, lanes, partial,
                     SharedStore<T>{gh, 4 * units});             // ends with __syncthreads
    for (int o = threadIdx.x; o < units * batch; o += blockDim.x) {
      const int b = o / units, u = o % units;
      const index_t j = first + u, row = (t * batch + b) * 4 * H, srow = b * 2 * H;
      const T* ghb = gh + b * 4 * units;
      const T scale[4] = {T(0.5), T(0.5), T(1), T(0.5)};  // the sigmoid gates arrive halved
      T a[4];
      for (int k = 0; k < 4; ++k) a[k] = gates[row + k * H + j] + scale[k] * ghb[k * units + u];
      T i, f, g, og, c, h;
      lstm_forward(a[0], a[1], a[2], a[3], prev[srow + H + j], i, f, g, og, c, h);
      gates[row + j] = i;
      gates[row + H + j] = f;
      gates[row + 2 * H + j] = g;
      gates[row + 3 * H + j] = og;
      states[t * state_rows + srow + j] = h;
      states[t * state_rows + srow + H + j] = c;
    }
    grid_barrier(barrier);  // h_t complete everywhere (and gh free) before step t + 1
  }
}

template <class T> struct LstmBackwardStore {  // dL/dh_{t-1} = δ W_hh
  T* g;                                        // (B, 2H) = [dL/dh, dL/dc] carried back
  int hidden, first_unit;
  __device__ void operator()(int b, int u, T sum) const {
    g[(index_t)b * 2 * hidden + first_unit + u] = sum;
  }
};

// LSTM full BPTT: deltas (T, B, 2H) receives dL/dS_t = [dh, dc_in] (the LSTM's per-step
// delta); g (B, 2H), zero on entry, the running gradient; d2 (2, B, 4H) scratch for the gate
// gradients, alternate steps in alternate halves; dstates (T, B, 2H); K (T, B, 4, H) and A
// (T, B, H) the factors (lstm_factors); gates (T, B, 4H) = i, f, g, o; W = weight_hh (4H, H).
// Own units' dL/dc_{t-1} = dc ⊙ f needs no other block; dL/dh_{t-1} = δ W_hh comes after one
// grid barrier. Shared memory: (4·hidden·rows + blockDim.x) values.
template <class T>
__device__ void lstm_persistent_backward(T* deltas, T* g, T* d2, const T* dstates, const T* K,
                                         const T* A, const T* gates, const T* W,
                                         unsigned int* barrier, int steps, int batch,
                                         int hidden, int rows, int lanes) {
  T* w = dynamic_shared<T>();                    // columns of W_hh (all 4H rows) of own units
  const index_t H = hidden, width = 4 * H;
  T* partial = w + rows * width;
  const int first = blockIdx.x * rows, units = own_units(rows, hidden);
  for (index_t k = threadIdx.x; k < units * width; k += blockDim.x)
    w[k] = W[(k % width) * H + first + k / width];
  const index_t state_rows = (index_t)batch * 2 * H;
  for (int t = steps - 1; t >= 0; --t) {
    __syncthreads();  // this block's g (and, at t = T − 1, W) written
    T* d = d2 + (t % 2) * batch * width;
    for (int o = threadIdx.x; o < units * batch; o += blockDim.x) {
      const int b = o / units;
      const index_t j = first + o % units, s = b * 2 * H + j, tb = t * batch + b;
      const T dh = g[s] + GPURNN_FAULT_SIGN * dstates[t * state_rows + s];
      const T dc_in = g[s + H] + dstates[t * state_rows + s + H];
      deltas[t * state_rows + s] = dh;
      deltas[t * state_rows + s + H] = dc_in;
      const T* k = K + tb * 4 * H + j;
      T* dq = d + b * width + j;
      g[s + H] = lstm_backward(dh, dc_in, k[0], k[H], k[2 * H], k[3 * H], A[tb * H + j],
                               gates[tb * 4 * H + H + j], dq[0], dq[H], dq[2 * H], dq[3 * H]);
    }
    grid_barrier(barrier);  // δ complete everywhere before any block multiplies it
    block_rows_times(w, d, width, units, batch, (int)width, lanes, partial,
                     LstmBackwardStore<T>{g, hidden, first});
  }
}

}  // namespace gpurnn

#define GPURNN_PERSISTENT(S, T)                                                                \
  extern "C" __global__ void elman_persistent_forward_##S(                                     \
      T* states, const T* xin, const T* h0, const T* W, unsigned int* barrier, int steps,      \
      int batch, int hidden, int rows, int lanes, int act) {                                   \
    gpurnn::elman_persistent_forward(states, xin, h0, W, barrier, steps, batch, hidden, rows,  \
                                     lanes, act);                                              \
  }                                                                                            \
  extern "C" __global__ void elman_persistent_backward_##S(                                    \
      T* deltas, T* g, const T* dstates, const T* states, const T* W, unsigned int* barrier,   \
      int steps, int batch, int hidden, int rows, int lanes, int act) {                        \
    gpurnn::elman_persistent_backward(deltas, g, dstates, states, W, barrier, steps, batch,    \
                                      hidden, rows, lanes, act);                               \
  }                                                                                            \
  extern "C" __global__ void gru_persistent_forward_##S(                                       \
      T* states, T* gates, T* hn, const T* h0, const T* W, const T* b_hn,                      \
      unsigned int* barrier, int steps, int batch, int hidden, int rows, int lanes) {          \
    gpurnn::gru_persistent_forward(states, gates, hn, h0, W, b_hn, barrier, steps, batch,      \
                                   hidden, rows, lanes);                                       \
  }                                                                                            \
  extern "C" __global__ void gru_persistent_backward_##S(                                      \
      T* deltas, T* g, T* d2, const T* dstates, const T* K2, const T* gates, const T* W,       \
      unsigned int* barrier, int steps, int batch, int hidden, int rows, int lanes) {          \
    gpurnn::gru_persistent_backward(deltas, g, d2, dstates, K2, gates, W, barrier, steps,      \
                                    batch, hidden, rows, lanes);                               \
  }                                                                                            \
  extern "C" __global__ void lstm_persistent_forward_##S(                                      \
      T* states, T* gates, const T* h0, const T* W, unsigned int* barrier, int steps,          \
      int batch, int hidden, int rows, int lanes) {                                            \
    gpurnn::lstm_persistent_forward(states, gates, h0, W, barrier, steps, batch, hidden, rows, \
                                    lanes);                                                    \
  }                                                                                            \
  extern "C" __global__ void lstm_persistent_backward_##S(                                     \
      T* deltas, T* g, T* d2, const T* dstates, const T* K, const T* A, const T* gates,        \
      const T* W, unsigned int* barrier, int steps, int batch, int hidden, int rows,           \
      int lanes) {                                                                             \
    gpurnn::lstm_persistent_backward(deltas, g, d2, dstates, K, A, gates, W, barrier, steps,   \
                                     batch, hidden, rows, lanes);                              \
  }                                                                                            \
  GPURNN_EXPORT(elman_persistent_forward_##S)                                                  \
  GPURNN_EXPORT(elman_persistent_backward_##S)                                                 \
  GPURNN_EXPORT(gru_persistent_forward_##S)                                                    \
  GPURNN_EXPORT(gru_persistent_backward_##S)                                                   \
  GPURNN_EXPORT(lstm_persistent_forward_##S)                                                   \
  GPURNN_EXPORT(lstm_persistent_backward_##S)

GPURNN_PERSISTENT(f32, float)
GPURNN_PERSISTENT(f64, double)
