// Elman step kernels; the maths is in elman.cuh.
#include "elman.cuh"

namespace gpurnn {

// h_t = f(W h_{t-1} + U x_t + b), in place on a (batch·hidden elements) that holds
// W h_{t-1} on entry; xin = U x_t (batch, hidden); bias (hidden,) or null.
// For a 16-bit T the sum and f are computed in float and h rounded once.
template <class T>
__device__ void elman_step(T* a, const T* xin, const T* bias, index_t n, int hidden, int act) {
  typedef compute_t<T> C;
  for (index_t i = first_index(); i < n; i += grid_stride())
    a[i] = narrow<T>(elman_forward(act, widen(a[i]), widen(xin[i]),
                                   bias ? widen(bias[i % hidden]) : C(0)));
}

// e_h(t) = g ⊙ f'(a_t): g has n elements (window origins × batch × hidden), h has m
// (batch × hidden) and is broadcast over the leading window axis.
template <class T>
__device__ void elman_backward_delta(T* delta, const T* g, const T* h, index_t n, index_t m,
                                     int act) {
  for (index_t i = first_index(); i < n; i += grid_stride())
    delta[i] = narrow<T>(elman_delta(act, widen(g[i]), widen(h[i % m])));
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
GPURNN_ELMAN(f16, gpurnn::half)
GPURNN_ELMAN(bf16, gpurnn::bfloat16)

#if defined(GPURNN_HOST_EMULATION)
// The host shim's conversions (storage16.cuh), for the tests to check bit for bit against
// numpy.float16 and ml_dtypes.bfloat16 (kind 0: half, 1: bfloat16).
extern "C" void gpurnn_narrow16(int kind, const float* in, unsigned short* out, long long n) {
  for (long long i = 0; i < n; ++i)
    out[i] = kind == 0 ? gpurnn::to_half(in[i]).bits : gpurnn::to_bfloat16(in[i]).bits;
}
extern "C" void gpurnn_widen16(int kind, const unsigned short* in, float* out, long long n) {
  for (long long i = 0; i < n; ++i)
    out[i] = kind == 0 ? gpurnn::widen(gpurnn::half{in[i]}) : gpurnn::widen(gpurnn::bfloat16{in[i]});
}
#endif
