// profiling_backend.cpp: see profiling_backend.h.
#include "ops/profiling_backend.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"

namespace sr {
namespace {

std::vector<OpTime> sorted(std::map<std::string, OpTime>&& m) {
    std::vector<OpTime> v;
    v.reserve(m.size());
    for (auto& [_, t] : m) v.push_back(std::move(t));
    std::stable_sort(v.begin(), v.end(), [](const OpTime& a, const OpTime& b) { return a.seconds > b.seconds; });
    return v;
}

}  // namespace

std::vector<OpTime> by_kind(const std::vector<OpTime>& ops) {
    std::map<std::string, OpTime> m;
    for (const OpTime& o : ops) {
        OpTime& t = m[o.kind];
        t.kind = t.name = o.kind;
        t.calls += o.calls;
        t.seconds += o.seconds;
        t.flops += o.flops;
        t.bytes += o.bytes;
    }
    return sorted(std::move(m));
}

void ProfilingBackend::enable(bool on) {
    if (on && recording_) fail("ProfilingBackend: timing cannot be enabled while recording");
    on_ = on;
}

bool ProfilingBackend::begin_recording() {
    if (on_ || recording_) return false;
    recording_ = in_.begin_recording();
    return recording_;
}

std::unique_ptr<Recording> ProfilingBackend::end_recording(std::string* why) {
    if (!recording_) {
        if (why) *why = "end_recording() without a begin_recording() that succeeded";
        return nullptr;
    }
    recording_ = false;
    return in_.end_recording(why);
}

void ProfilingBackend::run_op(const char* kind, const std::function<std::string()>& name,
                              double flops, double bytes, std::function<void()> f) {
    if (!on_) {
        f();
        return;
    }
    const size_t k = pending_.size();
    if (k == timers_.size()) timers_.push_back(in_.make_timer());
    timers_[k]->start();
    f();
    timers_[k]->stop();
    pending_.push_back({k, kind, name(), flops, bytes});
}

std::vector<OpTime> ProfilingBackend::collect() {
    std::map<std::string, OpTime> m;
    for (const Pending& p : pending_) {
        OpTime& t = m[p.name];
        t.kind = p.kind;
        t.name = p.name;
        t.calls += 1;
        t.seconds += timers_[p.timer]->elapsed();
        t.flops += p.flops;
        t.bytes += p.bytes;
    }
    pending_.clear();
    return sorted(std::move(m));
}

}  // namespace sr
