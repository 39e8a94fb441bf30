// recording_backend.h: Backend::begin_recording()/end_recording() on any backend, as a list of
// calls kept on the host: between the two, ops are recorded (with copies of their arguments, as
// a CUDA graph keeps a kernel's), not run; replay() runs the list again on the inner backend.
//
// It is a CUDA graph's semantics without a GPU: what a recording holds is exactly what the
// recorded calls were given at record time, so code whose recorded work must stay right when
// replayed later (the trainer's recorded epochs, src/train/trainer.cpp) is tested on the CPU by
// comparing replays with direct runs. As under CUDA stream capture, work that touches host
// memory, waits or allocates (upload, download, synchronize, patch_covariance, alloc, release)
// cannot be recorded: it fails with an error while recording (so the tests also hold the
// training steps to "no allocation in the training loop").
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ops/forwarding_backend.h"

namespace sr {

class RecordingBackend final : public ForwardingBackend {
public:
    explicit RecordingBackend(Backend& inner) : ForwardingBackend(inner) {}

    void run_op(const char* kind, const std::function<std::string()>& name, double flops,
                double bytes, std::function<void()> f) override;
    bool begin_recording() override;
    std::unique_ptr<Recording> end_recording(std::string* why) override;
    bool recording() const { return recording_; }
    // Recordings made here and replays of them, so far (a test can tell a replay from a direct
    // run, and see when the recording happened).
    long recordings() const { return recordings_; }
    long replays() const { return *replays_; }

    void* alloc(size_t bytes) override;
    void release(void* p) override;
    void upload(void* dst, const void* src_host, size_t bytes) override;
    void download(void* dst_host, const void* src, size_t bytes) override;
    void synchronize() override;
    void patch_covariance(double* cov_host, double* mean_host, const float* x, int N, int H, int W,
                          int C, int k) override;

private:
    void refuse_while_recording(const char* what) const;
    bool recording_ = false;
    long recordings_ = 0;
    std::vector<std::function<void()>> calls_;
    std::shared_ptr<long> replays_ = std::make_shared<long>(0);
};

}  // namespace sr
