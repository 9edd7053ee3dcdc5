// GRU and LSTM gate maths, PyTorch's equations and gate order (gpurnn/engine/recurrences/gated.py).
//
// As on the NumPy path, the sigmoid gates' pre-activations arrive halved (weight rows and
// biases scaled by ½ once per sequence), so that σ(a) = ½ tanh(a/2) + ½ is one tanh.
#pragma once
#include "common.cuh"

namespace gpurnn {

template <class T> GPURNN_HD T sigmoid_from_half(T half_a) {
  return T(0.5) * tanh_(half_a) + T(0.5);
}

// ---- GRU (gates r, z, n) -----------------------------------------------------------------
// r = σ(a_r), z = σ(a_z) from the halved input and hidden parts; hn = W_hn h + b_hn;
// n = tanh(a_in + r ⊙ hn); h' = n + z ⊙ (h − n)  (= (1 − z) ⊙ n + z ⊙ h).
template <class T>
GPURNN_HD T gru_forward(T xr, T hr, T xz, T hz, T xn, T hn, T h_prev, T& r, T& z, T& n) {
  r = sigmoid_from_half(xr + hr);
  z = sigmoid_from_half(xz + hz);
  n = tanh_(xn + r * hn);
  return n + z * (h_prev - GPURNN_FAULT_SIGN * n);
}

// Backward factors K, with dL/da_gate = dL/dh' ⊙ K:
//   ∂h'/∂a_n = (1 − z)(1 − n²), ∂h'/∂a_r = ∂h'/∂a_n · hn · r(1 − r), ∂h'/∂a_z = (h − n) z(1 − z);
// on the hidden side a_n's part is r ⊙ hn, so its factor is ∂h'/∂a_n · r (kn_hidden).
template <class T>
GPURNN_HD void gru_factors(T r, T z, T n, T hn, T h_prev, T& kr, T& kz, T& kn, T& kn_hidden) {
  kn = (T(1) - z) * (T(1) - n * n);
  kr = kn * hn * r * (T(1) - r);
  kz = (h_prev - n) * z * (T(1) - z);
  kn_hidden = kn * r;
}

// ---- LSTM (gates i, f, g, o), state [h, c] -------------------------------------------------
// i, f, o = σ(a), g = tanh(a); c' = f ⊙ c + i ⊙ g; h' = o ⊙ tanh(c').
template <class T>
GPURNN_HD void lstm_forward(T ai, T af, T ag, T ao, T c_prev, T& i, T& f, T& g, T& o, T& c,
                            T& h) {
  i = sigmoid_from_half(ai);
  f = sigmoid_from_half(af);
  g = tanh_(ag);
  o = sigmoid_from_half(ao);
  c = f * c_prev + GPURNN_FAULT_SIGN * i * g;
  h = o * tanh_(c);
}

// Backward factors: ∂c/∂a_i = g σ'(a_i), ∂c/∂a_f = c_{t-1} σ'(a_f), ∂c/∂a_g = i (1 − g²),
// ∂h/∂a_o = tanh(c) σ'(a_o), and ∂h/∂c = o (1 − tanh² c) (dc_dh).
template <class T>
GPURNN_HD void lstm_factors(T i, T f, T g, T o, T c, T c_prev, T& ki, T& kf, T& kg, T& ko,
                            T& dc_dh) {
  T tc = tanh_(c);
  ki = g * i * (T(1) - i);
  kf = c_prev * f * (T(1) - f);
  kg = i * (T(1) - g * g);
  ko = tc * o * (T(1) - o);
  dc_dh = o * (T(1) - tc * tc);
}

// One step back: dc = dc_in + dh ⊙ ∂h/∂c; gate gradients dc ⊙ K[i, f, g], dh ⊙ K[o];
// dL/dc_{t-1} = dc ⊙ f.
template <class T>
GPURNN_HD T lstm_backward(T dh, T dc_in, T ki, T kf, T kg, T ko, T dc_dh, T f, T& di, T& df,
                          T& dg, T& d_o) {
  T dc = dc_in + dh * dc_dh;
  di = dc * ki;
  df = dc * kf;
  dg = dc * kg;
  d_o = dh * ko;
  return dc * f;
}

}  // namespace gpurnn
