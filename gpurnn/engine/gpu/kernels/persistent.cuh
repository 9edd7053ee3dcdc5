// The persistent Elman recurrence: the dot products one block computes between two grid
// barriers (the activation and its derivative are elman.cuh's).
#pragma once
#include "common.cuh"
#include "elman.cuh"

namespace gpurnn {

// Partial dot product of one row of W (in shared memory) with h_{t-1}: the terms
// k = lane, lane + lanes, ... of Σ_k W[j, k] h[k].
template <class T>
GPURNN_HD T partial_dot(const T* w_row, const T* h, int hidden, int lane, int lanes) {
  T sum = T(0);
  for (int k = lane; k < hidden; k += lanes) sum += w_row[k] * h[k];
  return sum;
}

}  // namespace gpurnn
