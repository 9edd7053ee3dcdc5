// GRU and LSTM step kernels, one thread per (batch row, hidden unit); maths in gated.cuh.
// Layouts are the NumPy path's: gate rows (batch, G·H) with the gates in PyTorch's order,
// factors K (time, batch, G, H).
#include "gated.cuh"

namespace gpurnn {

// GRU forward step: x (batch, 3H) holds the halved input side of r, z and the input side of
// n, and receives r, z, n; gh (batch, 3H) = halved W_hr h, W_hz h, and W_hn h; hn (batch, H)
// receives W_hn h + b_hn; h (batch, H) receives h_t from h_prev.
template <class T>
__device__ void gru_step(T* x, T* hn_out, T* h, const T* gh, const T* h_prev, const T* b_hn,
                         index_t n, int H) {
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t b = e / H, j = e % H, row = b * 3 * H;
    T hn = gh[row + 2 * H + j] + (b_hn ? b_hn[j] : T(0));
    T r, z, nn;
    h[e] = gru_forward(x[row + j], gh[row + j], x[row + H + j], gh[row + H + j],
                       x[row + 2 * H + j], hn, h_prev[e], r, z, nn);
    x[row + j] = r;
    x[row + H + j] = z;
    x[row + 2 * H + j] = nn;
    hn_out[e] = hn;
  }
}

// GRU backward factors for all steps at once: gates (T, B, 3H) = r, z, n; hn and states
// (T, B, H); h0 (B, H). K and K2 (T, B, 3, H): input- and hidden-side factors.
template <class T>
__device__ void gru_factors_all(T* K, T* K2, const T* gates, const T* hn, const T* states,
                                const T* h0, index_t n, index_t bh, int H) {
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t tb = e / H, j = e % H, row = tb * 3 * H;
    T h_prev = e < bh ? h0[e] : states[e - bh];
    T kr, kz, kn, kn_hidden;
    gru_factors(gates[row + j], gates[row + H + j], gates[row + 2 * H + j], hn[e], h_prev, kr,
                kz, kn, kn_hidden);
    K[row + j] = kr;
    K[row + H + j] = kz;
    K[row + 2 * H + j] = kn;
    K2[row + j] = kr;
    K2[row + H + j] = kz;
    K2[row + 2 * H + j] = kn_hidden;
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
    T ge = g[e];
    for (int k = 0; k < 3; ++k) d[(q * 3 + k) * H + j] = ge * K2_t[(tb * 3 + k) * H + j];
    g_prev[e] = ge * gates_t[tb * 3 * H + H + j];
  }
}

// LSTM forward step: x (batch, 4H) halved i, f, o and plain g pre-activations (input side),
// receives i, f, g, o; gh (batch, 4H) the hidden side, scaled alike; state_prev and
// state (batch, 2H) = [h, c].
template <class T>
__device__ void lstm_step(T* x, T* state, const T* gh, const T* state_prev, index_t n, int H) {
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t b = e / H, j = e % H, row = b * 4 * H, srow = b * 2 * H;
    T i, f, g, o, c, h;
    lstm_forward(x[row + j] + gh[row + j], x[row + H + j] + gh[row + H + j],
                 x[row + 2 * H + j] + gh[row + 2 * H + j], x[row + 3 * H + j] + gh[row + 3 * H + j],
                 state_prev[srow + H + j], i, f, g, o, c, h);
    x[row + j] = i;
    x[row + H + j] = f;
    x[row + 2 * H + j] = g;
    x[row + 3 * H + j] = o;
    state[srow + j] = h;
    state[srow + H + j] = c;
  }
}

// LSTM backward factors for all steps: gates (T, B, 4H) = i, f, g, o; states (T, B, 2H);
// h0 (B, 2H). K (T, B, 4, H), A (T, B, H) = ∂h/∂c.
template <class T>
__device__ void lstm_factors_all(T* K, T* A, const T* gates, const T* states, const T* h0,
                                 index_t n, index_t bh, int H) {
  for (index_t e = first_index(); e < n; e += grid_stride()) {
    index_t tb = e / H, j = e % H, row = tb * 4 * H, srow = tb * 2 * H;
    T c_prev = e < bh ? h0[srow + H + j] : states[srow - 2 * bh + H + j];
    T ki, kf, kg, ko, a;
    lstm_factors(gates[row + j], gates[row + H + j], gates[row + 2 * H + j],
                 gates[row + 3 * H + j], states[srow + H + j], c_prev, ki, kf, kg, ko, a);
    K[row + j] = ki;
    K[row + H + j] = kf;
    K[row + 2 * H + j] = kg;
    K[row + 3 * H + j] = ko;
    A[e] = a;
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
    g_prev[q * 2 * H + H + j] =
        lstm_backward(grad[q * 2 * H + j], grad[q * 2 * H + H + j], k[0], k[H], k[2 * H],
                      k[3 * H], A_t[tb * H + j], gates_t[tb * 4 * H + H + j], dq[0], dq[H],
                      dq[2 * H], dq[3 * H]);
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
