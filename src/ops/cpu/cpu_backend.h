// cpu_backend.h: the CPU backend's convolution object (oneDNN primitives, set up once per shape).
// The backend class itself lives in cpu_backend.cpp; other code reaches it through
// sr::make_cpu_backend (ops/backend.h).
#pragma once
#include <memory>

#include "ops/backend.h"

namespace dnnl {
struct engine;
struct stream;
}  // namespace dnnl

namespace sr::cpu {

class CpuConv2d final : public Conv2d {
public:
    CpuConv2d(const ConvShape& s, dnnl::engine& eng, dnnl::stream& strm);
    ~CpuConv2d() override;
    void forward(float* y, const float* x, const float* w, const float* bias) override;
    void backward_data(float* dx, const float* dy, const float* w) override;
    void backward_weights(float* dw, float* db, const float* dy, const float* x) override;
    // true when dx is computed as a forward convolution (cpu_ops.h, ConvDataGrad)
    bool data_grad_transposed() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace sr::cpu
