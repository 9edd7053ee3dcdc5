// Runs the kernels of gpurnn/engine/gpu/kernels/*.cu on the host as the GPU would launch them:
// every (blockIdx, threadIdx) of the grid runs the kernel's own __global__ body, so the
// kernels' indexing is exercised, not only their scalar maths.
//
// Three ways to run a grid, chosen by the caller for each kernel:
//   SERIAL  the threads one after another (kernels without barriers; __syncthreads there
//           is an error, reported back instead of silently serialising a race);
//   BLOCK   blocks one after another, the threads of a block as concurrent OS threads that
//           meet at __syncthreads;
//   GRID    all blocks at once (a cooperative launch): grid-wide barriers work, phase by
//           phase, as they do on the device.
#include "emulate.h"

#include <barrier>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace gpurnn_emu {
thread_local std::barrier<>* block_barrier = nullptr;  // null in a launch without barriers
thread_local unsigned char* block_shared = nullptr;

void sync_block() {
  if (!block_barrier)
    throw std::runtime_error("__syncthreads() called in a launch emulated without barriers");
  block_barrier->arrive_and_wait();
}
void yield() { std::this_thread::yield(); }

struct Kernel {
  void* fn;
  Thunk thunk;
  std::vector<std::size_t> sizes;
};
static std::map<std::string, Kernel>& registry() {
  static std::map<std::string, Kernel> kernels;
  return kernels;
}
bool add_kernel(const char* name, void* fn, Thunk thunk, const std::size_t* sizes, int nargs) {
  registry()[name] = Kernel{fn, thunk, std::vector<std::size_t>(sizes, sizes + nargs)};
  return true;
}
}  // namespace gpurnn_emu

using namespace gpurnn_emu;

namespace {
enum Mode { SERIAL = 0, BLOCK = 1, GRID = 2 };
const std::size_t kMaxThreads = 4096;  // OS threads alive at once in BLOCK / GRID mode
const std::size_t kSharedGuard = 32;   // doubles after each block's shared memory
const unsigned char kGuardByte = 0xA5;
std::size_t shared_words(std::size_t bytes) {
  return (bytes + sizeof(double) - 1) / sizeof(double);
}
std::mutex launch_mutex;               // one emulated launch at a time (gridDim is global)

struct Block {
  dim3 index;
  // Double-aligned like the device's dynamic shared memory, all-ones bytes (NaN) so reading
  // what was never written shows up in the results, then a guard of kGuardByte bytes that
  // must stay as it is (any value computed and written there changes it).
  std::vector<double> shared;
  std::unique_ptr<std::barrier<>> barrier;
};

void run_thread(const Kernel& k, void** args, Block& block, dim3 thread, bool barriers) {
  blockIdx = block.index;
  threadIdx = thread;
  block_barrier = barriers ? block.barrier.get() : nullptr;
  block_shared = reinterpret_cast<unsigned char*>(block.shared.data());
  k.thunk(k.fn, args);
}

std::vector<dim3> all_of(dim3 shape) {
  std::vector<dim3> out;
  for (unsigned z = 0; z < shape.z; ++z)
    for (unsigned y = 0; y < shape.y; ++y)
      for (unsigned x = 0; x < shape.x; ++x) out.push_back(dim3{x, y, z});
  return out;
}

void run_concurrently(const Kernel& k, void** args, std::vector<Block*> blocks,
                      const std::vector<dim3>& threads) {
  std::vector<std::thread> pool;
  std::exception_ptr error;
  std::mutex error_mutex;
  for (Block* block : blocks)
    for (dim3 t : threads)
      pool.emplace_back([&, block, t] {
        try {
          run_thread(k, args, *block, t, true);
        } catch (...) {  // no kernel body throws; a failure here would strand the barriers
          std::lock_guard<std::mutex> lock(error_mutex);
          error = std::current_exception();
        }
      });
  for (auto& thread : pool) thread.join();
  if (error) std::rethrow_exception(error);
}
}  // namespace

extern "C" {

// Argument sizes of a registered kernel; returns the count, or -1 for an unknown name.
int gpurnn_kernel_arg_sizes(const char* name, std::size_t* sizes, int capacity) {
  auto it = registry().find(name);
  if (it == registry().end()) return -1;
  const auto& s = it->second.sizes;
  for (int i = 0; i < int(s.size()) && i < capacity; ++i) sizes[i] = s[i];
  return int(s.size());
}

// Launch ``name`` over grid × block with ``shared_bytes`` of dynamic shared memory per
// block. ``args`` points at the arguments, as for cuLaunchKernel. Returns 0, or 1 with a
// one-line message in ``error``.
int gpurnn_emulate_launch(const char* name, const unsigned* grid, const unsigned* block,
                          std::size_t shared_bytes, int mode, void** args, int nargs,
                          const std::size_t* sizes, char* error, std::size_t error_size) {
  auto fail = [&](const std::string& message) {
    std::snprintf(error, error_size, "%s", message.c_str());
    return 1;
  };
  auto it = registry().find(name);
  if (it == registry().end()) return fail(std::string("no kernel named ") + name);
  const Kernel& k = it->second;
  if (int(k.sizes.size()) != nargs) return fail(std::string(name) + " takes " +
      std::to_string(k.sizes.size()) + " arguments, got " + std::to_string(nargs));
  for (int i = 0; i < nargs; ++i)
    if (k.sizes[i] != sizes[i])
      return fail(std::string(name) + ": argument " + std::to_string(i) + " has " +
                  std::to_string(sizes[i]) + " bytes, the kernel expects " +
                  std::to_string(k.sizes[i]));
  std::lock_guard<std::mutex> lock(launch_mutex);
  gridDim = dim3{grid[0], grid[1], grid[2]};
  blockDim = dim3{block[0], block[1], block[2]};
  std::vector<dim3> block_ids = all_of(gridDim), thread_ids = all_of(blockDim);
  std::vector<Block> blocks(block_ids.size());
  std::size_t per_block = thread_ids.size();
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    blocks[b].index = block_ids[b];
    blocks[b].shared.resize(shared_words(shared_bytes) + kSharedGuard);
    std::memset(blocks[b].shared.data(), 0xFF, shared_words(shared_bytes) * sizeof(double));
    std::memset(blocks[b].shared.data() + shared_words(shared_bytes), kGuardByte,
                kSharedGuard * sizeof(double));
    if (mode != SERIAL) blocks[b].barrier = std::make_unique<std::barrier<>>(per_block);
  }
  try {
    if (mode == SERIAL) {
      for (Block& b : blocks)
        for (dim3 t : thread_ids) run_thread(k, args, b, t, false);
    } else if (mode == BLOCK) {
      if (per_block > kMaxThreads) return fail("block too large to emulate");
      for (Block& b : blocks) run_concurrently(k, args, {&b}, thread_ids);
    } else {
      if (per_block * blocks.size() > kMaxThreads)
        return fail("grid too large to emulate all at once (cooperative launch)");
      std::vector<Block*> all;
      for (Block& b : blocks) all.push_back(&b);
      run_concurrently(k, args, all, thread_ids);
    }
  } catch (const std::exception& e) {
    return fail(std::string(name) + ": " + e.what());
  }
  for (const Block& b : blocks) {
    auto bytes = reinterpret_cast<const unsigned char*>(b.shared.data());
    for (std::size_t i = shared_words(shared_bytes) * sizeof(double);
         i < b.shared.size() * sizeof(double); ++i)
      if (bytes[i] != kGuardByte)
        return fail(std::string(name) + " wrote past its dynamic shared memory");
  }
  return 0;
}
}
