// Elman step kernels; the maths is in elman.cuh.
#include "elman.cuh"

namespace gpurnn {

// h_t = f(W h_{t-1} + U x_t + b), in place on a (batch·hidden elements) that holds
// W h_{t-1} on entry; xin = U x_t (batch, hidden); bias (hidden,) or null.
template <class T>
__device__ void elman_step(T* a, const T* xin, const T* bias, index_t n, int hidden, int act) {
  for (index_t i = first_index(); i < n; i += grid_stride())
    a[i] = elman_forward(act, a[i], xin[i], bias ? bias[i % hidden] : T(0));
}

// e_h(t) = g ⊙ f'(a_t): g has n elements (window origins × batch × hidden), h has m
// (batch × hidden) and is broadcast over the leading window axis.
template <class T>
__device__ void elman_backward_delta(T* delta, const T* g, const T* h, index_t n, index_t m,
                                     int act) {
  for (index_t i = first_index(); i < n; i += grid_stride())
    delta[i] = elman_delta(act, g[i], h[i % m]);
}

}  // namespace gpurnn

#define GPURNN_ELMAN(S, T)                                                                     \
  extern "C" __global__ void elman_step_##S(T* a, const T* xin, const T* bias,                 \
                                            gpurnn::index_t n, int hidden, int act) {          \
    gpurnn::elman_step(a, xin, bias, n, hidden, act);                                          \
  }                                                                                            \
  extern "C" __global__ void elman_backward_delta_##S(T* delta, const T* g, const T* h,        \
                                                      gpurnn::index_t n, gpurnn::index_t m,    \
                                                      int act) {                               \
    gpurnn::elman_backward_delta(delta, g, h, n, m, act);                                      \
  }                                                                                            \
  GPURNN_EXPORT(elman_step_##S)                                                                \
  GPURNN_EXPORT(elman_backward_delta_##S)

GPURNN_ELMAN(f32, float)
GPURNN_ELMAN(f64, double)
