// The Elman forward recurrence as one persistent kernel (the technique of Baidu's persistent
// RNNs and cuDNN's PERSIST algorithms): h_t = f(W h_{t-1} + xin_t) for all t in one launch.
//
// Block b owns ``rows`` consecutive hidden units and keeps their rows of W in shared memory
// for the whole sequence, so W is read from global memory once instead of once per step.
// Each step, the block computes its units for every batch row; then all blocks meet at a
// grid barrier, since step t + 1 needs all of h_t. Needs a cooperative launch (every block
// resident), grid·rows ≥ hidden. No cuBLAS call is involved, so the launch can also be
// captured in a CUDA graph (CuPy refuses cuBLAS during stream capture).
#include "persistent.cuh"

namespace gpurnn {

// Threads form groups of ``lanes`` (a power of two dividing blockDim.x); a group computes one
// (batch row, unit) output at a time, each lane a strided part of the dot product, reduced
// in shared memory. Dynamic shared memory: (rows·hidden + blockDim.x) values of T.
template <class T>
__device__ void elman_persistent_forward(T* states, const T* xin, const T* h0, const T* W,
                                         unsigned int* barrier, int steps, int batch,
                                         int hidden, int rows, int lanes, int act) {
  T* w_rows = dynamic_shared<T>();
  T* partial = w_rows + (index_t)rows * hidden;
  const int first_unit = blockIdx.x * rows;
  const int units = max_(0, min_(rows, hidden - first_unit));
  for (index_t k = threadIdx.x; k < (index_t)units * hidden; k += blockDim.x)
    w_rows[k] = W[(index_t)first_unit * hidden + k];
  __syncthreads();
  const int lane = threadIdx.x % lanes, groups = blockDim.x / lanes;
  const int outputs = units * batch;  // (batch row, unit) pairs of this block
  const index_t bh = (index_t)batch * hidden;
  for (int t = 0; t < steps; ++t) {
    const T* h_prev = t == 0 ? h0 : states + (t - 1) * bh;
    T* h = states + t * bh;
    // The same trip count for every thread: the barriers below are reached by all.
    for (int base = 0; base < outputs; base += groups) {
      const int o = base + threadIdx.x / lanes;
      const int b = o / max_(units, 1), u = o % max_(units, 1);
      T sum = o < outputs ? partial_dot(w_rows + (index_t)u * hidden, h_prev + (index_t)b * hidden,
                                        hidden, lane, lanes)
                          : T(0);
      partial[threadIdx.x] = sum;
      __syncthreads();
      for (int width = lanes / 2; width > 0; width /= 2) {
        if (lane < width) partial[threadIdx.x] += partial[threadIdx.x + width];
        __syncthreads();
      }
      if (lane == 0 && o < outputs) {
        const index_t at = (index_t)b * hidden + first_unit + u;
        h[at] = activate(act, partial[threadIdx.x] + GPURNN_FAULT_SIGN * xin[t * bh + at]);
      }
      __syncthreads();
    }
    grid_barrier(barrier);  // h_t complete everywhere before step t + 1 reads it
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
  GPURNN_EXPORT(elman_persistent_forward_##S)

GPURNN_PERSISTENT(f32, float)
GPURNN_PERSISTENT(f64, double)
