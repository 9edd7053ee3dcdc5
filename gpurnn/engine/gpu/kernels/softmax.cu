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
// For a 16-bit T the maximum, the exponentials, the row sums and the loss are computed in
// float and each stored value rounded once. Dynamic shared memory: blockDim.x values of
// compute_t<T> (float for the 16-bit types).
template <class T>
__device__ void softmax_xent(T* z, T* loss, const T* c, const long long* targets, const T* w,
                             T scale_in, int rows, int V) {
  typedef compute_t<T> C;
  C* buffer = dynamic_shared<C>();
  const C scale = widen(scale_in);
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    T* zr = z + (index_t)row * V;
    const long long target = targets[row];
    C top = lowest<C>();
    for (int k = threadIdx.x; k < V; k += blockDim.x)
      top = max_(top, widen(zr[k]) + (c ? widen(c[k]) : C(0)));
    top = block_reduce(top, buffer, Max<C>());
    C sum = C(0);
    for (int k = threadIdx.x; k < V; k += blockDim.x)
      sum += exp_(widen(zr[k]) + (c ? widen(c[k]) : C(0)) - top);
    sum = block_reduce(sum, buffer, Sum<C>());
    C weight = w ? widen(w[row]) : C(1);
    if (threadIdx.x == 0)
      loss[row] = narrow<T>(weight * xent_loss(log_(sum), top,
                                               widen(zr[target]) + (c ? widen(c[target]) : C(0))));
    __syncthreads();  // z[target] is read before any thread overwrites it
    for (int k = threadIdx.x; k < V; k += blockDim.x)
      zr[k] = narrow<T>(xent_error(widen(zr[k]) + (c ? widen(c[k]) : C(0)), top, sum,
                                   k == target, weight * scale));
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
GPURNN_SOFTMAX(f16, gpurnn::half)
GPURNN_SOFTMAX(bf16, gpurnn::bfloat16)
