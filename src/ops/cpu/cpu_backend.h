// cpu_backend.h: the CPU backend's convolution object (oneDNN primitives, set up once per shape).
// The backend class itself lives in cpu_backend.cpp; other code reaches it through
// sr::make_cpu_backend (ops/backend.h).
#pragma once
#include <memory>
#include <new>
#include <vector>

#include "ops/backend.h"

namespace dnnl {
struct engine;
struct stream;
}  // namespace dnnl

namespace sr::cpu {

// std::vector's allocator with 64-byte (cache line, AVX-512 register) alignment: oneDNN's
// Winograd kernels read and write their blocked buffers with aligned vector moves.
template <class T>
struct Aligned64 {
    using value_type = T;
    Aligned64() = default;
    template <class U>
    Aligned64(const Aligned64<U>&) {}
    T* allocate(size_t n) {
        void* p = ::operator new(n * sizeof(T), std::align_val_t(64));
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const Aligned64<U>&) const { return true; }
};
template <class T>
using AlignedVector = std::vector<T, Aligned64<T>>;

// Two activation-sized buffers shared by every convolution of one backend (its ops run one at a
// time): where the Winograd path (cpu_ops.h, ConvAlgorithm) puts its inputs and outputs in the
// blocked layout oneDNN's Winograd kernels take. Grown when a conv is made, never in a step.
struct ConvWorkspace {
    AlignedVector<float> a, b;
    void reserve(size_t floats);  // each of a and b at least this many floats
};

class CpuConv2d final : public Conv2d {
public:
    CpuConv2d(const ConvShape& s, dnnl::engine& eng, dnnl::stream& strm, ConvWorkspace& ws);
    ~CpuConv2d() override;
    void forward(float* y, const float* x, const float* w, const float* bias) override;
    void backward_data(float* dx, const float* dy, const float* w) override;
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override;
    // true when dx is computed as a forward convolution (cpu_ops.h, ConvDataGrad)
    bool data_grad_transposed() const;
    // true when this conv computes with oneDNN's Winograd kernels (cpu_ops.h, ConvAlgorithm)
    bool winograd() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace sr::cpu
