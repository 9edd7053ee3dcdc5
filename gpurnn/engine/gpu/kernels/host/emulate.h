// Host emulation of the CUDA built-ins the kernel sources use, force-included (g++ -include)
// before each .cu file when the kernels are built for the host. The launch itself (which
// emulated threads run, and when) is in emulate.cpp.
#pragma once
#define GPURNN_HOST_EMULATION 1

// Only light headers here (this is included by every kernel source); the threads and
// barriers live in emulate.cpp behind the out-of-line functions below.
#include <cmath>
#include <cstddef>
#include <utility>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define GPURNN_SPIN_PAUSE() gpurnn_emu::yield()

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};
// Each emulated CUDA thread is an OS thread (or a turn of a loop, when the kernel has no
// barrier), so the indices are thread-local; the launch shape is the same for all of them.
extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace gpurnn_emu {
extern thread_local unsigned char* block_shared;  // this block's dynamic shared memory
void sync_block();  // __syncthreads: an error in a launch emulated without barriers
void yield();       // lets the other emulated threads run while one spins
typedef void (*Thunk)(void*, void**);
bool add_kernel(const char* name, void* fn, Thunk thunk, const std::size_t* sizes, int nargs);

template <class... A> struct Call {
  template <std::size_t... I> static void run(void* fn, void** args, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<A*>(args[I])...);
  }
  static void thunk(void* fn, void** args) { run(fn, args, std::index_sequence_for<A...>{}); }
};
// Registers a kernel under its name with its argument sizes, which the launcher checks
// against the arguments Python packed (a mismatch there would also corrupt a GPU launch).
template <class... A> bool add(const char* name, void (*fn)(A...)) {
  static const std::size_t sizes[] = {sizeof(A)..., 0};
  return add_kernel(name, reinterpret_cast<void*>(fn), &Call<A...>::thunk, sizes,
                    int(sizeof...(A)));
}
}  // namespace gpurnn_emu

#define GPURNN_EXPORT(kernel) \
  static const bool gpurnn_registered_##kernel = gpurnn_emu::add(#kernel, &kernel);

inline void __syncthreads() { gpurnn_emu::sync_block(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}
inline unsigned int atomicExch(unsigned int* address, unsigned int value) {
  return __atomic_exchange_n(address, value, __ATOMIC_SEQ_CST);
}

namespace gpurnn {
template <class T> inline T* dynamic_shared() {
  return reinterpret_cast<T*>(gpurnn_emu::block_shared);
}
}  // namespace gpurnn
