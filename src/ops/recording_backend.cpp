// recording_backend.cpp: see recording_backend.h.
#include "ops/recording_backend.h"

#include "core/error.h"

namespace sr {
namespace {

class HostRecording final : public Recording {
public:
    HostRecording(std::vector<std::function<void()>> calls, std::shared_ptr<long> replays)
        : calls_(std::move(calls)), replays_(std::move(replays)) {}
    void replay() override {
        for (const auto& f : calls_) f();
        ++*replays_;
    }
    size_t kernel_count() const override { return calls_.size(); }
    size_t node_count() const override { return calls_.size(); }

private:
    std::vector<std::function<void()>> calls_;
    std::shared_ptr<long> replays_;
};

}  // namespace

void RecordingBackend::run_op(const char*, const std::function<std::string()>&, double, double,
                              std::function<void()> f) {
    if (recording_)
        calls_.push_back(std::move(f));
    else
        f();
}

bool RecordingBackend::begin_recording() {
    if (recording_) fail("RecordingBackend: begin_recording() while already recording");
    recording_ = true;
    calls_.clear();
    return true;
}

std::unique_ptr<Recording> RecordingBackend::end_recording(std::string* why) {
    if (!recording_) {
        if (why) *why = "end_recording() without begin_recording()";
        return nullptr;
    }
    recording_ = false;
    ++recordings_;
    return std::make_unique<HostRecording>(std::move(calls_), replays_);
}

void RecordingBackend::refuse_while_recording(const char* what) const {
    if (recording_)
        fail("RecordingBackend: {} cannot be recorded (it touches host memory or waits, as under "
             "CUDA stream capture)", what);
}

void* RecordingBackend::alloc(size_t bytes) {
    refuse_while_recording("alloc");
    return ForwardingBackend::alloc(bytes);
}
void RecordingBackend::release(void* p) {
    refuse_while_recording("release");
    ForwardingBackend::release(p);
}
void RecordingBackend::upload(void* dst, const void* src_host, size_t bytes) {
    refuse_while_recording("upload");
    ForwardingBackend::upload(dst, src_host, bytes);
}
void RecordingBackend::download(void* dst_host, const void* src, size_t bytes) {
    refuse_while_recording("download");
    ForwardingBackend::download(dst_host, src, bytes);
}
void RecordingBackend::synchronize() {
    refuse_while_recording("synchronize");
    ForwardingBackend::synchronize();
}
void RecordingBackend::patch_covariance(double* cov_host, double* mean_host, const float* x, int N,
                                        int H, int W, int C, int k) {
    refuse_while_recording("patch_covariance");
    ForwardingBackend::patch_covariance(cov_host, mean_host, x, N, H, W, C, k);
}

}  // namespace sr
