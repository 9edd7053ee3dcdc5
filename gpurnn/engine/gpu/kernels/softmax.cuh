// Softmax cross-entropy of one row of logits: the loss −log p[target] and the error
// e_y = p − onehot(target) (gpurnn/engine/models/losses.py), weighted.
#pragma once
#include "common.cuh"

namespace gpurnn {

// −log p[target] = log Σ exp(z − max) + max − z[target]
template <class T> GPURNN_HD T xent_loss(T log_sum, T top, T z_target) {
  return log_sum + top - z_target;
}

// e_y[k] = weight · (exp(z[k] − max) / Σ − [k = target])
template <class T> GPURNN_HD T xent_error(T z, T top, T sum, bool is_target, T weight) {
  return weight * (exp_(z - top) / sum - GPURNN_FAULT_SIGN * (is_target ? T(1) : T(0)));
}

// Tree reduction over the block (blockDim.x a power of two) through ``buffer`` (blockDim.x
// values); every thread returns the result. Called by all threads of the block.
template <class T, class Op> __device__ T block_reduce(T value, T* buffer, Op op) {
  buffer[threadIdx.x] = value;
  __syncthreads();
  for (unsigned int width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width)
      buffer[threadIdx.x] = op(buffer[threadIdx.x], buffer[threadIdx.x + width]);
    __syncthreads();
  }
  T result = buffer[0];
  __syncthreads();  // the buffer may be reused at once
  return result;
}

}  // namespace gpurnn
