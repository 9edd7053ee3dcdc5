// The Elman recurrence as persistent kernels (the technique of Baidu's persistent RNNs and
// cuDNN's PERSIST algorithms): the forward h_t = f(W h_{t-1} + xin_t) for all t in one
// launch, and the full backward sweep e_h(t) = (dL/dh_t) ⊙ f'(a_t),
// dL/dh_{t-1} = e_h(t) W + (output t−1's gradient), in another.
//
// Block b owns ``rows`` consecutive hidden units and keeps their slice of W in shared
// memory for the whole sequence (rows of W forward, columns backward), so W is read from
// global memory once instead of once per step. Between steps all blocks meet at a grid
// barrier, since a step needs all of the previous one's vector. Needs a cooperative launch
// (every block resident) and grid·rows ≥ hidden. No cuBLAS call is involved, so a launch can
// also be captured in a CUDA graph (CuPy refuses cuBLAS during stream capture).
#include "persistent.cuh"

namespace gpurnn {

// For every (batch row b, own unit u): Σ_k w[u, k] x[b, k] with w (units, hidden) in shared
// memory and x (batch, hidden), handed to store(b, u, sum). Threads form groups of ``lanes``
// (a power of two dividing blockDim.x); a group computes one output at a time, each lane a
// strided part of the dot product, reduced in ``partial`` (blockDim.x values). Every thread
// of the block must call it: the trip count is the same for all, so the barriers match.
template <class T, class Store>
__device__ void block_rows_times(const T* w, const T* x, int units, int batch, int hidden,
                                 int lanes, T* partial, Store store) {
  const int lane = threadIdx.x % lanes, groups = blockDim.x / lanes;
  const int outputs = units * batch;
  for (int base = 0; base < outputs; base += groups) {
    const int o = base + threadIdx.x / lanes;
    const int b = o / max_(units, 1), u = o % max_(units, 1);
    partial[threadIdx.x] = o < outputs ? partial_dot(w + (index_t)u * hidden,
                                                     x + (index_t)b * hidden, hidden, lane, lanes)
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
    block_rows_times(w_rows, h_prev, units, batch, hidden, lanes, partial,
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
    block_rows_times(w_cols, deltas + t * bh, units, batch, hidden, lanes, partial,
                     BackwardStore<T>{g, hidden, first});
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
  GPURNN_EXPORT(elman_persistent_forward_##S)                                                  \
  GPURNN_EXPORT(elman_persistent_backward_##S)

GPURNN_PERSISTENT(f32, float)
GPURNN_PERSISTENT(f64, double)
