// Optimizer updates, one parameter element at a time (gpurnn/training/optim.py).
#pragma once
#include "common.cuh"

namespace gpurnn {

// SGD: p −= lr · g
template <class T> GPURNN_HD T sgd(T p, T g, T lr) { return p - GPURNN_FAULT_SIGN * lr * g; }

// Momentum: v = μ v + g; p −= lr · v, or with Nesterov p −= lr · (g + μ v).
template <class T> GPURNN_HD T momentum(T p, T g, T& v, T lr, T mu, bool nesterov) {
  v = mu * v + g;
  return p - lr * (nesterov ? mu * v + g : v);
}

// Adagrad: G += g²; p −= lr · g / (√G + ε).
template <class T> GPURNN_HD T adagrad(T p, T g, T& sum_sq, T lr, T eps) {
  sum_sq += g * g;
  return p - lr * (g / (sqrt_(sum_sq) + eps));
}

// RMSprop: E = ρ E + (1 − ρ) g²; p −= lr · g / (√E + ε). The caller passes 1 − ρ, rounded
// once from double as the NumPy path's Python scalar is, and the products run in its order.
template <class T> GPURNN_HD T rmsprop(T p, T g, T& mean_sq, T lr, T decay, T one_minus_decay,
                                       T eps) {
  mean_sq = decay * mean_sq + g * g * one_minus_decay;
  return p - lr * (g / (sqrt_(mean_sq) + eps));
}

// Adam: m = β1 m + (1 − β1) g; v = β2 v + (1 − β2) g²;
// p −= (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε); the caller passes
// lr_t = lr / (1 − β1^t), inv_root_c2 = 1 / √(1 − β2^t) and 1 − β1, 1 − β2 (as for RMSprop).
template <class T>
GPURNN_HD T adam(T p, T g, T& m, T& v, T lr_t, T beta1, T one_minus_beta1, T beta2,
                 T one_minus_beta2, T eps, T inv_root_c2) {
  m = beta1 * m + g * one_minus_beta1;
  v = beta2 * v + g * g * one_minus_beta2;
  return p - lr_t * (m / (sqrt_(v) * inv_root_c2 + eps));
}

}  // namespace gpurnn
