// Shared by every kernel source: qualifiers, math that picks the float or double function,
// the activations with their derivatives from the output, thread-to-element mapping and a
// grid barrier.
//
// Every source compiles twice: by NVRTC for the GPU (__CUDACC__ is defined), and by the
// host C++ compiler inside host/emulate.cpp, which defines the CUDA qualifiers and
// built-ins (threadIdx, __syncthreads, atomicAdd, ...) and runs each kernel body over an
// emulated grid. So the maths and the indexing that the GPU runs are the code the CPU
// tests run.
#pragma once

#if !defined(__CUDACC__) && !defined(GPURNN_HOST_EMULATION)
#error "compile with NVRTC/nvcc, or through gpurnn/engine/gpu/kernels/host/emulate.cpp"
#endif

// A planted-fault switch for the tests: -DGPURNN_FAULT_SIGN=-1 flips the sign of one term
// in each family's maths, and the host cross-checks must then fail.
#ifndef GPURNN_FAULT_SIGN
#define GPURNN_FAULT_SIGN 1
#endif

#define GPURNN_HD __host__ __device__ __forceinline__

#if defined(__CUDACC__)
#define GPURNN_SPIN_PAUSE() __nanosleep(32)
#define GPURNN_EXPORT(kernel)  // registers a kernel with the host emulation only
// Dynamic shared memory, one array for every kernel of a module (the host emulation gives
// each emulated block its own buffer behind the same function).
extern __shared__ double gpurnn_dynamic_shared[];
namespace gpurnn {
template <class T> __device__ __forceinline__ T* dynamic_shared() {
  return reinterpret_cast<T*>(gpurnn_dynamic_shared);
}
}  // namespace gpurnn
#endif

#include "storage16.cuh"

namespace gpurnn {

typedef long long index_t;

// ---- float / double overloads of the few math functions the kernels use --------------
GPURNN_HD float tanh_(float x) { return tanhf(x); }
GPURNN_HD double tanh_(double x) { return tanh(x); }
GPURNN_HD float exp_(float x) { return expf(x); }
GPURNN_HD double exp_(double x) { return exp(x); }
GPURNN_HD float log_(float x) { return logf(x); }
GPURNN_HD double log_(double x) { return log(x); }
GPURNN_HD float sqrt_(float x) { return sqrtf(x); }
GPURNN_HD double sqrt_(double x) { return sqrt(x); }
template <class T> GPURNN_HD T max_(T a, T b) { return a > b ? a : b; }
template <class T> GPURNN_HD T min_(T a, T b) { return a < b ? a : b; }
// The most negative finite value (no <cfloat> or INFINITY under NVRTC without headers).
template <class T> GPURNN_HD T lowest();
template <> GPURNN_HD float lowest<float>() { return -3.402823466e+38f; }
template <> GPURNN_HD double lowest<double>() { return -1.7976931348623157e+308; }

// ---- activations: the order of gpurnn.engine.recurrences.activations.ACTIVATIONS --------------------
enum Activation { TANH = 0, RELU = 1, SIGMOID = 2, IDENTITY = 3 };

// σ(a) = ½ tanh(a/2) + ½: never overflows, as the NumPy path computes it.
template <class T> GPURNN_HD T sigmoid(T a) { return T(0.5) * tanh_(T(0.5) * a) + T(0.5); }

// f(a)
template <class T> GPURNN_HD T activate(int act, T a) {
  switch (act) {
    case TANH: return tanh_(a);
    case RELU: return a > T(0) ? a : T(0);
    case SIGMOID: return sigmoid(a);
    default: return a;
  }
}

// f'(a) from h = f(a): tanh 1 − h², sigmoid h (1 − h), relu [h > 0], identity 1.
template <class T> GPURNN_HD T derivative_from_output(int act, T h) {
  switch (act) {
    case TANH: return T(1) - h * h;
    case RELU: return h > T(0) ? T(1) : T(0);
    case SIGMOID: return (T(1) - h) * h;
    default: return T(1);
  }
}

// ---- thread -> element mapping -----------------------------------------------------------
// Elementwise kernels use a grid-stride loop: any grid covers any n, and the launch
// configuration (computed in Python) only trades parallelism for blocks.
__device__ __forceinline__ index_t first_index() {
  return (index_t)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ index_t grid_stride() { return (index_t)gridDim.x * blockDim.x; }

// ---- grid barrier --------------------------------------------------------------------------
// Valid only for a cooperative launch (every block resident at once). ``bar`` points at two
// unsigned ints in global memory, zero before the launch: an arrival count and a
// generation. Written out here instead of cooperative_groups::this_grid().sync() so the
// source needs no toolkit headers (NVRTC from the pip wheel has none) and so the host
// emulation runs this very code.
__device__ __forceinline__ void grid_barrier(unsigned int* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned int* generation = bar + 1;
    unsigned int seen = *generation;
    __threadfence();  // this block's writes before its arrival
    if (atomicAdd(bar, 1u) == gridDim.x - 1) {
      atomicExch(bar, 0u);  // reset for the next barrier, before anyone is released
      __threadfence();
      atomicAdd(bar + 1, 1u);  // release the others
    } else {
      while (*generation == seen) GPURNN_SPIN_PAUSE();
    }
    __threadfence();  // the other blocks' writes after the release
  }
  __syncthreads();
}

}  // namespace gpurnn
