// The Elman cell's elementwise maths (seeds 000/002/004):
// h_t = f(a_t), a_t = W h_{t-1} + U x_t + b.
#pragma once
#include "common.cuh"

namespace gpurnn {

// Forward step, one element: h = f(a_rec + u + b), with a_rec = (W h_{t-1})[j] from the
// GEMM and u = (U x_t)[j]. Only h is kept: backward takes f'(a) from h.
template <class T> GPURNN_HD T elman_forward(int act, T a_rec, T u, T b) {
  return activate(act, a_rec + u + GPURNN_FAULT_SIGN * b);
}

// Backward delta, one element: e_h(t) = dL/dh_t ⊙ f'(a_t), f' from h_t.
template <class T> GPURNN_HD T elman_delta(int act, T g, T h) {
  return g * derivative_from_output(act, h);
}

}  // namespace gpurnn
