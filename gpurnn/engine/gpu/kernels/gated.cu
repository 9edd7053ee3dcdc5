// GRU and LSTM step kernels, one thread per (batch row, hidden unit); maths in gated.cuh.
// Layouts are the NumPy path's: gate rows (batch, G·H) with the gates in PyTorch's order,
// factors K (time, batch, G, H). For a 16-bit T every element is widened to float on load,
// the gate maths runs in float (compute_t<T>) and each stored value is rounded once.
#include "gated.cuh"

namespace gpurnn {

// GRU forward step: x (batch, 3H) holds the halved input side of r, z and the input side of
// n, and receives r, z, n; gh (batch, 3H) = halved W_hr h, W_hz h, and W_hn h; hn (batch, H)
// receives W_hn h + b_hn; h (batch, H) receives h_t from h_prev.
template <class T>
__device__ void gru_step(T* x, T* hn_out, T* h, const T* gh, const T* h_prev, const T* b_hn,
                         index_t n, int H) {
  typedef compute_t<T> C;
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t b = e / H, j = e % H, row = b * 3 * H;
    C hn = widen(gh[row + 2 * H + j]) + (b_hn ? widen(b_hn[j]) : C(0));
    C r, z, nn;
    h[e] = narrow<T>(gru_forward(widen(x[row + j]), widen(gh[row + j]), widen(x[row + H + j]),
                                 widen(gh[row + H + j]), widen(x[row + 2 * H + j]), hn,
                                 widen(h_prev[e]), r, z, nn));
    x[row + j] = narrow<T>(r);
    x[row + H + j] = narrow<T>(z);
    x[row + 2 * H + j] = narrow<T>(nn);
    hn_out[e] = narrow<T>(hn);
  }
}

// GRU backward factors for all steps at once: gates (T, B, 3H) = r, z, n; hn and states
// (T, B, H); h0 (B, H). K and K2 (T, B, 3, H): input- and hidden-side factors.
template <class T>
__device__ void gru_factors_all(T* K, T* K2, const T* gates, const T* hn, const T* states,
                                const T* h0, index_t n, index_t bh, int H) {
  typedef compute_t<T> C;
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t tb = e / H, j = e % H, row = tb * 3 * H;
    C h_prev = widen(e < bh ? h0[e] : states[e - bh]);
    C kr, kz, kn, kn_hidden;
    gru_factors(widen(gates[row + j]), widen(gates[row + H + j]), widen(gates[row + 2 * H + j]),
                widen(hn[e]), h_prev, kr, kz, kn, kn_hidden);
    K[row + j] = narrow<T>(kr);
    K[row + H + j] = narrow<T>(kz);
    K[row + 2 * H + j] = narrow<T>(kn);
    K2[row + j] = narrow<T>(kr);
    K2[row + H + j] = narrow<T>(kz);
    K2[row + 2 * H + j] = narrow<T>(kn_hidden);
  }
}

// GRU step back, before the GEMM with W_hh: d (…, B, 3, H) = g ⊙ K2_t (hidden-side gate
// gradients) and g_prev = g ⊙ z_t (the direct path; the GEMM's δ W_hh is added after).
// g has n elements (window origins × B × H); K2_t, z_t belong to the step (B rows).
template <class T>
__device__ void gru_backward_step(T* d, T* g_prev, const T* g, const T* K2_t, const T* gates_t,
                                  index_t n, index_t bh, int H) {
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t q = e / H, j = e % H, tb = (e % bh) / H;
    compute_t<T> ge = widen(g[e]);
    for (int k = 0; k < 3; ++k)
      d[(q * 3 + k) * H + j] = narrow<T>(ge * widen(K2_t[(tb * 3 + k) * H + j]));
    g_prev[e] = narrow<T>(ge * widen(gates_t[tb * 3 * H + H + j]));
  }
}

// LSTM forward step: x (batch, 4H) halved i, f, o and plain g pre-activations (input side),
// receives i, f, g, o; gh (batch, 4H) the hidden side, scaled alike; state_prev and
// state (batch, 2H) = [h, c].
template <class T>
__device__ void lstm_step(T* x, T* state, const T* gh, const T* state_prev, index_t n, int H) {
  typedef compute_t<T> C;
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t b = e / H, j = e % H, row = b * 4 * H, srow = b * 2 * H;
    C i, f, g, o, c, h;
    lstm_forward(widen(x[row + j]) + widen(gh[row + j]),
                 widen(x[row + H + j]) + widen(gh[row + H + j]),
                 widen(x[row + 2 * H + j]) + widen(gh[row + 2 * H + j]),
                 widen(x[row + 3 * H + j]) + widen(gh[row + 3 * H + j]),
                 widen(state_prev[srow + H + j]), i, f, g, o, c, h);
    x[row + j] = narrow<T>(i);
    x[row + H + j] = narrow<T>(f);
    x[row + 2 * H + j] = narrow<T>(g);
    x[row + 3 * H + j] = narrow<T>(o);
    state[srow + j] = narrow<T>(h);
    state[srow + H + j] = narrow<T>(c);
  }
}

// LSTM backward factors for all steps: gates (T, B, 4H) = i, f, g, o; states (T, B, 2H);
// h0 (B, 2H). K (T, B, 4, H), A (T, B, H) = ∂h/∂c.
template <class T>
__device__ void lstm_factors_all(T* K, T* A, const T* gates, const T* states, const T* h0,
                                 index_t n, index_t bh, int H) {
  typedef compute_t<T> C;
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t tb = e / H, j = e % H, row = tb * 4 * H, srow = tb * 2 * H;
    C c_prev = widen(e < bh ? h0[srow + H + j] : states[srow - 2 * bh + H + j]);
    C ki, kf, kg, ko, a;
    lstm_factors(widen(gates[row + j]), widen(gates[row + H + j]), widen(gates[row + 2 * H + j]),
                 widen(gates[row + 3 * H + j]), widen(states[srow + H + j]), c_prev, ki, kf, kg,
                 ko, a);
    K[row + j] = narrow<T>(ki);
    K[row + H + j] = narrow<T>(kf);
    K[row + 2 * H + j] = narrow<T>(kg);
    K[row + 3 * H + j] = narrow<T>(ko);
    A[e] = narrow<T>(a);
  }
}

// LSTM step back, before the GEMM with W_hh: grad and g_prev (…, B, 2H) = [dh, dc]; d
// (…, B, 4, H) the gate gradients; g_prev's c half receives dc ⊙ f (its h half is the GEMM's).
template <class T>
__device__ void lstm_backward_step(T* d, T* g_prev, const T* grad, const T* K_t, const T* A_t,
                                   const T* gates_t, index_t n, index_t bh, int H) {
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t q = e / H, j = e % H, tb = (e % bh) / H;
    const T* k = K_t + tb * 4 * H + j;
    T* dq = d + q * 4 * H + j;
    compute_t<T> di, df, dg, d_o;
    g_prev[q * 2 * H + H + j] = narrow<T>(
        lstm_backward(widen(grad[q * 2 * H + j]), widen(grad[q * 2 * H + H + j]), widen(k[0]),
                      widen(k[H]), widen(k[2 * H]), widen(k[3 * H]), widen(A_t[tb * H + j]),
                      widen(gates_t[tb * 4 * H + H + j]), di, df, dg, d_o));
    dq[0] = narrow<T>(di);
    dq[H] = narrow<T>(df);
    dq[2 * H] = narrow<T>(dg);
    dq[3 * H] = narrow<T>(d_o);
  }
}

}  // namespace gpurnn

#define GPURNN_GATED(S, T)                                                                     \
  extern "C" __global__ void gru_step_##S(T* x, T* hn, T* h, const T* gh, const T* h_prev,     \
                                          const T* b_hn, gpurnn::index_t n, int H) {           \
    gpurnn::gru_step(x, hn, h, gh, h_prev, b_hn, n, H);                                        \
  }                                                                                            \
  extern "C" __global__ void gru_factors_##S(T* K, T* K2, const T* gates, const T* hn,         \
                                             const T* states, const T* h0, gpurnn::index_t n,  \
                                             gpurnn::index_t bh, int H) {                      \
    gpurnn::gru_factors_all(K, K2, gates, hn, states, h0, n, bh, H);                           \
  }                                                                                            \
  extern "C" __global__ void gru_backward_step_##S(T* d, T* g_prev, const T* g, const T* K2_t, \
                                                   const T* gates_t, gpurnn::index_t n,        \
                                                   gpurnn::index_t bh, int H) {                \
    gpurnn::gru_backward_step(d, g_prev, g, K2_t, gates_t, n, bh, H);                          \
  }                                                                                            \
  extern "C" __global__ void lstm_step_##S(T* x, T* state, const T* gh, const T* state_prev,   \
                                           gpurnn::index_t n, int H) {                         \
    gpurnn::lstm_step(x, state, gh, state_prev, n, H);                                         \
  }                                                                                            \
  extern "C" __global__ void lstm_factors_##S(T* K, T* A, const T* gates, const T* states,     \
                                              const T* h0, gpurnn::index_t n,                  \
                                              gpurnn::index_t bh, int H) {                     \
    gpurnn::lstm_factors_all(K, A, gates, states, h0, n, bh, H);                               \
  }                                                                                            \
  extern "C" __global__ void lstm_backward_step_##S(T* d, T* g_prev, const T* grad,            \
                                                    const T* K_t, const T* A_t,                \
                                                    const T* gates_t, gpurnn::index_t n,       \
                                                    gpurnn::index_t bh, int H) {               \
    gpurnn::lstm_backward_step(d, g_prev, grad, K_t, A_t, gates_t, n, bh, H);                  \
  }                                                                                            \
  GPURNN_EXPORT(gru_step_##S)                                                                  \
  GPURNN_EXPORT(gru_factors_##S)                                                               \
  GPURNN_EXPORT(gru_backward_step_##S)                                                         \
  GPURNN_EXPORT(lstm_step_##S)                                                                 \
  GPURNN_EXPORT(lstm_factors_##S)                                                              \
  GPURNN_EXPORT(lstm_backward_step_##S)

GPURNN_GATED(f32, float)
GPURNN_GATED(f64, double)
GPURNN_GATED(f16, gpurnn::half)
GPURNN_GATED(bf16, gpurnn::bfloat16)
