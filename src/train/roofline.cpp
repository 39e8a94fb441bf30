// roofline.cpp: see roofline.h.
#include "train/roofline.h"

#include <algorithm>

namespace sr {
namespace {

// NVIDIA's datasheets, dense (without sparsity): A100 SXM 80GB, H100 SXM5, H200 SXM.
const RooflineDevice kDevices[] = {
    {"a100", 156, 312, 2.039},
    {"h100", 494.7, 989.4, 3.35},
    {"h200", 494.7, 989.4, 4.8},
};

}  // namespace

const RooflineDevice* roofline_device(const std::string& name) {
    for (const RooflineDevice& d : kDevices)
        if (d.name == name) return &d;
    return nullptr;
}

std::vector<std::string> roofline_device_names() {
    std::vector<std::string> v;
    for (const RooflineDevice& d : kDevices) v.push_back(d.name);
    return v;
}

double roofline_seconds(double flops, double bytes, double calls, const RooflineDevice& d,
                        bool half, const RooflineAssumptions& a) {
    const double peak = (half ? d.fp16_tflops : d.tf32_tflops) * 1e12 * a.compute_eff;
    const double bw = d.bandwidth_tbs * 1e12 * a.memory_eff;
    const double t_compute = flops / peak;
    const double t_memory = (half ? bytes / 2 : bytes) / bw;
    return std::max(t_compute, t_memory) + calls * a.launch_us * 1e-6;
}

}  // namespace sr
