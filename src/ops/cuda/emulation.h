// emulation.h: the CUDA execution model on the host, so that this backend's own kernels run and
// are checked against their CPU twins on machines without a GPU (tests/ops/test_cuda_emulated.cpp;
// the cuDNN and cuBLAS wrappers are not emulated). CMake compiles the .cu files a second time
// with the host compiler, as C++, with SR_CUDA_EMULATION defined and the name `cuda` defined
// to `cuda_emu`, so that these copies of the launchers (sr::cuda_emu::maxpool_forward, ...)
// sit beside the real ones in one test program. cuda_common.cuh includes this header.
//
// A launch runs its blocks one after another. Inside a block every thread is a fiber (ucontext)
// that runs until it returns or reaches __syncthreads(); when every thread of the block waits
// at the barrier, all continue. So barriers, shared memory (an SR_SHARED array becomes a
// static: one array, used by one block at a time) and the block-level reductions behave as on a
// GPU, only sequentially. A block whose threads do not all reach the same barriers fails the
// launch (undefined behaviour on a GPU). The order varies as a GPU's does: every other launch
// runs its blocks last to first, every other round between barriers runs a block's threads last
// to first, and shared memory, static and dynamic, starts each block as NaN; so a kernel that
// reads another thread's shared value before the barrier, another block's output of the same
// launch, or shared memory it never wrote gives results that differ from block to block and
// fails its comparison with the CPU. A vector access at an address a GPU would fault on fails
// the launch. Not emulated: warp shuffles, atomics, cooperative groups, streams (work runs at
// once, in order). Pointers are host memory.
#pragma once
#ifndef SR_CUDA_EMULATION
#error "ops/cuda/emulation.h is for the host-emulation build only"
#endif
#include <math.h>  // (the device math functions, fabsf, sqrtf, ..., are global names)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#include <cuda_runtime.h>  // dim3, uint3, cudaStream_t, cudaError_t (types only: nothing is called)

namespace sr::emu {

// Where the running thread is: the block and the grid's and block's extents.
struct Launch {
    uint3 block_index{0, 0, 0};
    dim3 grid{1, 1, 1};
    dim3 block{1, 1, 1};
};
extern Launch g_launch;
const uint3& thread_index();  // of the running fiber
void sync_threads();
void* dynamic_shared_memory();
// Runs thread_body for every thread of the grid (threadIdx etc. set), blocks in order.
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& thread_body);
// A GPU faults on a vector access (8 or 16 bytes at once) whose address is not a multiple of its
// size; on x86 the host code may run it as if nothing were wrong, or crash without saying where
// (an aligned SSE instruction). SR_ALIGNED_ACCESS (cuda_common.cuh) fails the launch there,
// naming the access, the block and the thread.
[[noreturn]] void misaligned(const void* p, unsigned bytes, const char* what);
inline void check_aligned(const void* p, unsigned bytes, const char* what) {
    if ((reinterpret_cast<uintptr_t>(p) & (bytes - 1)) != 0) misaligned(p, bytes, what);
}
// Counts the blocks run (from 1), so that a static shared array knows when a new block begins.
extern unsigned long long g_block_serial;

// The storage of one SR_SHARED declaration: a static that the first thread of each block to reach
// the declaration fills with all-ones bytes (NaN as float or double, -1 as an integer), as a
// GPU's shared memory has no initial value; the other threads of the block find it as that block
// left it. Constant-initialised (zeros), so no guard runs.
template <class A>
struct SharedArray {
    A value{};
    unsigned long long block = 0;  // the block whose array it is
    A& get() {
        if (block != g_block_serial) {
            std::memset(static_cast<void*>(&value), 0xff, sizeof(A));
            block = g_block_serial;
        }
        return value;
    }
};

}  // namespace sr::emu

// Kernels declare their static shared memory with SR_SHARED (cuda_common.cuh), which here
// becomes a SharedArray: a bare __shared__ would be a static that keeps the previous block's
// values, so it is refused by name.
#undef __shared__
#define __shared__ SR_SHARED_declares_shared_memory_see_emulation_h
#define SR_ALIGNED_ACCESS(p, bytes) ::sr::emu::check_aligned((p), (bytes), #p)
#define SR_SHARED(T, name, dims)                                \
    static ::sr::emu::SharedArray<T dims> name##_sr_emu_shared; \
    auto& name = name##_sr_emu_shared.get()
#define threadIdx (::sr::emu::thread_index())
#define blockIdx (::sr::emu::g_launch.block_index)
#define blockDim (::sr::emu::g_launch.block)
#define gridDim (::sr::emu::g_launch.grid)
#define __syncthreads() ::sr::emu::sync_threads()

// The runtime calls the kernels' launchers make, done on the host at once.
#define cudaMemcpyAsync(dst, src, bytes, kind, stream) \
    (std::memcpy((dst), (src), (bytes)), cudaSuccess)
#define cudaStreamSynchronize(stream) cudaSuccess

namespace sr::cuda {

using std::fmax;
using std::max;
using std::min;
using std::sqrt;

template <class... Params, class... Args>
void launch_kernel(void (*k)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                   cudaStream_t, Args... args) {
    ::sr::emu::run_grid(grid, block, shared_bytes, [&] { k(args...); });
}

template <class T>
inline T* dynamic_shared() {
    return static_cast<T*>(::sr::emu::dynamic_shared_memory());
}

}  // namespace sr::cuda
