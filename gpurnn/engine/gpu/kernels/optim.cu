// Optimizer update kernels: every parameter element and its slots in one pass; maths in
// optim.cuh.
#include "optim.cuh"

#define GPURNN_OPTIM(S, T)                                                                     \
  extern "C" __global__ void sgd_##S(T* p, const T* g, gpurnn::index_t n, T lr) {              \
    for (gpurnn::index_t i = gpurnn::first_index(); i < n; i += gpurnn::grid_stride())         \
      p[i] = gpurnn::sgd(p[i], g[i], lr);                                                      \
  }                                                                                            \
  extern "C" __global__ void momentum_##S(T* p, const T* g, T* v, gpurnn::index_t n, T lr,     \
                                          T mu, int nesterov) {                                \
    for (gpurnn::index_t i = gpurnn::first_index(); i < n; i += gpurnn::grid_stride())         \
      p[i] = gpurnn::momentum(p[i], g[i], v[i], lr, mu, nesterov != 0);                        \
  }                                                                                            \
  extern "C" __global__ void adagrad_##S(T* p, const T* g, T* sum_sq, gpurnn::index_t n, T lr, \
                                         T eps) {                                              \
    for (gpurnn::index_t i = gpurnn::first_index(); i < n; i += gpurnn::grid_stride())         \
      p[i] = gpurnn::adagrad(p[i], g[i], sum_sq[i], lr, eps);                                  \
  }                                                                                            \
  extern "C" __global__ void rmsprop_##S(T* p, const T* g, T* mean_sq, gpurnn::index_t n,      \
                                         T lr, T decay, T one_minus_decay, T eps) {            \
    for (gpurnn::index_t i = gpurnn::first_index(); i < n; i += gpurnn::grid_stride())         \
      p[i] = gpurnn::rmsprop(p[i], g[i], mean_sq[i], lr, decay, one_minus_decay, eps);         \
  }                                                                                            \
  extern "C" __global__ void adam_##S(T* p, const T* g, T* m, T* v, gpurnn::index_t n, T lr_t, \
                                      T beta1, T one_minus_beta1, T beta2, T one_minus_beta2,  \
                                      T eps, T inv_root_c2) {                                  \
    for (gpurnn::index_t i = gpurnn::first_index(); i < n; i += gpurnn::grid_stride())         \
      p[i] = gpurnn::adam(p[i], g[i], m[i], v[i], lr_t, beta1, one_minus_beta1, beta2,         \
                          one_minus_beta2, eps, inv_root_c2);                                  \
  }                                                                                            \
  GPURNN_EXPORT(sgd_##S)                                                                       \
  GPURNN_EXPORT(momentum_##S)                                                                  \
  GPURNN_EXPORT(adagrad_##S)                                                                   \
  GPURNN_EXPORT(rmsprop_##S)                                                                   \
  GPURNN_EXPORT(adam_##S)

GPURNN_OPTIM(f32, float)
GPURNN_OPTIM(f64, double)
