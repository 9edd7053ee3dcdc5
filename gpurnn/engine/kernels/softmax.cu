// The softmax-cross-entropy row block: one thread block per row of logits (grid-stride over
// rows), threads striding over the vocabulary. Maths in softmax.cuh.
#include "softmax.cuh"

namespace gpurnn {

template <class T> struct Max {
  GPURNN_HD T operator()(T a, T b) const { return max_(a, b); }
};
template <class T> struct Sum {
  GPURNN_HD T operator()(T a, T b) const { return a + b; }
};

// z (rows, V): the logits V h without the bias c (V,) or null; overwritten with e_y, each
// row weighted by w[row]·scale (w null: scale). loss (rows,) receives w[row] · (−log p[t]).
// Dynamic shared memory: blockDim.x values of T.
template <class T>
__device__ void softmax_xent(T* z, T* loss, const T* c, const long long* targets, const T* w,
                             T scale, int rows, int V) {
  T* buffer = dynamic_shared<T>();
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    T* zr = z + (index_t)row * V;
    const long long target = targets[row];
    T top = lowest<T>();
    for (int k = threadIdx.x; k < V; k += blockDim.x) top = max_(top, zr[k] + (c ? c[k] : T(0)));
    top = block_reduce(top, buffer, Max<T>());
    T sum = T(0);
    for (int k = threadIdx.x; k < V; k += blockDim.x) sum += exp_(zr[k] + (c ? c[k] : T(0)) - top);
    sum = block_reduce(sum, buffer, Sum<T>());
    T weight = w ? w[row] : T(1);
    if (threadIdx.x == 0)
      loss[row] = weight * xent_loss(log_(sum), top, zr[target] + (c ? c[target] : T(0)));
    __syncthreads();  // z[target] is read before any thread overwrites it
    for (int k = threadIdx.x; k < V; k += blockDim.x)
      zr[k] = xent_error(zr[k] + (c ? c[k] : T(0)), top, sum, k == target, weight * scale);
  }
}

}  // namespace gpurnn

#define GPURNN_SOFTMAX(S, T)                                                                   \
  extern "C" __global__ void softmax_xent_##S(T* z, T* loss, const T* c,                       \
                                              const long long* targets, const T* w, T scale,   \
                                              int rows, int V) {                               \
    gpurnn::softmax_xent(z, loss, c, targets, w, scale, rows, V);                              \
  }                                                                                            \
  GPURNN_EXPORT(softmax_xent_##S)

GPURNN_SOFTMAX(f32, float)
GPURNN_SOFTMAX(f64, double)
