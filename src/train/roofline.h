// roofline.h: what a training step's ops would take on a given GPU, from the FLOPs and bytes that
// ops/forwarding_backend.h counts for every op: per call, the larger of compute time and memory
// time at stated efficiencies of the datasheet's dense peaks, plus a fixed cost per launch. An
// estimate with its assumptions printed, for seeing where GPU time would go, and what 16-bit
// storage would change, before a GPU is at hand (`speedrun bench --profile --roofline h100`).
#pragma once
#include <string>
#include <vector>

namespace sr {

struct RooflineDevice {
    std::string name;
    double tf32_tflops;    // dense tensor-core TF32 (what fp32 data on cuDNN/cuBLAS runs at)
    double fp16_tflops;    // dense tensor-core FP16/BF16
    double bandwidth_tbs;  // memory bandwidth, TB/s
};

// Datasheet figures (dense, SXM parts): "a100", "h100", "h200". nullptr for other names.
const RooflineDevice* roofline_device(const std::string& name);
std::vector<std::string> roofline_device_names();

struct RooflineAssumptions {
    double compute_eff = 0.6;  // share of the peak the compute-bound ops reach (cuDNN, cuBLAS)
    double memory_eff = 0.8;   // share of the bandwidth the memory-bound ops reach
    double launch_us = 3.0;    // per call: the kernels' own latency in a replayed CUDA graph
};

// Seconds for `calls` calls that do `flops` and move `bytes` (fp32 tensors) in all, on d; half:
// 16-bit storage (bytes / 2) and the FP16 peak, else fp32 storage and the TF32 peak.
double roofline_seconds(double flops, double bytes, double calls, const RooflineDevice& d,
                        bool half, const RooflineAssumptions& a = {});

}  // namespace sr
