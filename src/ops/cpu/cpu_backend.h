// cpu_backend.h: the CPU backend's convolution object (oneDNN primitives, set up once per shape).
// The backend class itself lives in cpu_backend.cpp; other code reaches it through
// sr::make_cpu_backend (ops/backend.h).
#pragma once
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ops/backend.h"
#include "ops/cpu/host_memory.h"

namespace dnnl {
struct engine;
struct stream;
}  // namespace dnnl

namespace sr::cpu {

// std::vector's allocator with 64-byte (cache line, AVX-512 register) alignment: oneDNN's
// Winograd kernels read and write their blocked buffers with aligned vector moves. Large ones
// get the huge-page hint (host_memory.h).
template <class T>
struct Aligned64 {
    using value_type = T;
    Aligned64() = default;
    template <class U>
    Aligned64(const Aligned64<U>&) {}
    T* allocate(size_t n) {
        void* p = alloc_host(n * sizeof(T));
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t) { free_host(p); }
    template <class U>
    bool operator==(const Aligned64<U>&) const { return true; }
};
template <class T>
using AlignedVector = std::vector<T, Aligned64<T>>;

// Buffers shared by every convolution of one backend (its ops run one at a time), grown when a
// conv is made, never in a step:
// - a, b: activation-sized, where the Winograd path (cpu_ops.h, ConvAlgorithm) puts its inputs
//   and outputs in the blocked layout oneDNN's Winograd kernels take;
// - scratch: oneDNN's scratchpad (user mode), the largest any primitive asks for. A Winograd
//   conv's holds the transformed tiles of the whole batch (airbench96's 384-channel 16x16 conv
//   at batch 1024: about 2 GB), so one per conv would be most of the process's memory.
struct ConvWorkspace {
    AlignedVector<float> a, b;
    AlignedVector<uint8_t> scratch;
    void reserve(size_t floats);          // each of a and b at least this many floats
    void reserve_scratch(size_t bytes);   // scratch at least this many bytes
};

class CpuConv2d final : public Conv2d {
public:
    CpuConv2d(const ConvShape& s, dnnl::engine& eng, dnnl::stream& strm, ConvWorkspace& ws);
    ~CpuConv2d() override;
    void forward(float* y, const float* x, const float* w, const float* bias) override;
    void backward_data(float* dx, const float* dy, const float* w) override;
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override;
    // Winograd: dy is reordered into the blocked layout once for both gradients
    void backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                  FunctionRef<void()> dw_ready = {}) override;
    // true when dx is computed as a forward convolution (cpu_ops.h, ConvDataGrad)
    bool data_grad_transposed() const;
    // true when this conv computes with oneDNN's Winograd kernels (cpu_ops.h, ConvAlgorithm)
    bool winograd() const;
    // true when dw is computed by the plain loops: a strided 1x1 conv with under 16 input
    // channels where oneDNN picked its jit_1x1 kernel, which overlaps its threads' copies of x
    // (conv.cpp)
    bool plain_loop_weight_grad() const;
    // the oneDNN implementation of the direct path's weight gradient (e.g. "jit_1x1:avx2")
    std::string library_weight_grad_impl() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace sr::cpu
