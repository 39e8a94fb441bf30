// profiling_backend.h: a Backend that hands every op to another backend (ops/forwarding_backend.h)
// and times each call with that backend's device timers (CUDA events on a GPU, the steady clock
// on the CPU), marking the intervals without waiting between ops, so the timed work runs as it
// would unprofiled.
//
// `speedrun bench --profile` builds the network on one to show where a training step's time
// goes: by op and shape, and by kind (convolution, batch norm, activation, ...), with the FLOP/s
// of the compute-bound ops and the bytes/s of the memory-bound ones. FLOPs are the ops' own
// arithmetic (multiply-add = 2); bytes are the fp32 tensors an op must read and write at least
// once (a lower bound on its traffic), so bytes/s compares with the memory's bandwidth.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ops/forwarding_backend.h"

namespace sr {

struct OpTime {
    std::string kind;  // "convolution", "batch norm", "activation", "pooling", "pooling + BN",
                       // "linear", "loss", "optimizer", "elementwise", "augmentation", "memory"
    std::string name;  // the op and its shape, e.g. "conv fwd 3x3 s1 64->128 32x32 N512"
    long calls = 0;
    double seconds = 0, flops = 0, bytes = 0;  // totals over the calls
};

// Times added up per kind, largest first (from a list of OpTime).
std::vector<OpTime> by_kind(const std::vector<OpTime>& ops);

class ProfilingBackend final : public ForwardingBackend {
public:
    explicit ProfilingBackend(Backend& inner) : ForwardingBackend(inner) {}
    // Calls are timed only while enabled (off at first), so set-up and warm-up stay out.
    void enable(bool on);
    // Waits for the timed work and returns it added up per op name (largest time first); the
    // next collect() starts from zero.
    std::vector<OpTime> collect();
    // Runs f, timed under kind/name while enabled (name() is only built then).
    void run_op(const char* kind, const std::function<std::string()>& name, double flops,
                double bytes, std::function<void()> f) override;
    // Recording passes through to the wrapped backend while timing is off (a recorded step,
    // e.g. bench's CUDA-graph timing, on the network the profile built); timed ops cannot be
    // recorded, so begin_recording() returns false while enabled, and enable(true) fails while
    // recording.
    bool begin_recording() override;
    std::unique_ptr<Recording> end_recording(std::string* why) override;

private:
    struct Pending {
        size_t timer;
        const char* kind;
        std::string name;
        double flops, bytes;
    };
    bool on_ = false;
    bool recording_ = false;
    std::vector<std::unique_ptr<DeviceTimer>> timers_;  // reused by collect() rounds
    std::vector<Pending> pending_;
};

}  // namespace sr
