// golden_util.h: what the golden tests share (test_golden*.cpp): reading a reference file that a
// tools/make_golden*.py script wrote, loading its parameters into a network, uploading its input
// batch, slicing one tensor out of a copy of an arena, and the first pass's checks.
#pragma once
#include <cmath>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/network.h"
#include "optim/optimizer.h"
#include "test_util.h"

namespace sr::golden {

// tests/data/<file>, which must carry {"format": format, "version": 1}; tool names the script
// that makes it (for the error message).
inline nlohmann::json load(const std::string& file, const std::string& format, const std::string& tool) {
    const std::string path = std::string(SPEEDRUN_SOURCE_DIR) + "/tests/data/" + file;
    std::ifstream f(path);
    if (!f) throw std::runtime_error(path + ": missing; run " + tool + " to make it");
    auto j = nlohmann::json::parse(f);
    if (j.value("format", "") != format || j.value("version", 0) != 1)
        throw std::runtime_error(path + ": not a version-1 " + format + " file; rerun " + tool);
    return j;
}

inline std::vector<float> part(const Network& net, const std::vector<float>& all, const std::string& name) {
    const auto& s = net.tensor(name);
    return {all.begin() + ptrdiff_t(s.offset), all.begin() + ptrdiff_t(s.offset + s.count)};
}

inline double max_abs(const std::vector<float>& v) {
    double m = 0;
    for (float x : v) m = std::max(m, double(std::abs(x)));
    return m;
}

// Every tensor of `ref` (name -> values) against its slice of `now` (a copy of an arena):
// within rel of the tensor's largest magnitude (plus 1e-7) and rel relative.
inline void expect_tensors(const Network& net, const std::vector<float>& now, const nlohmann::json& ref,
                           const std::string& what, double rel) {
    for (const auto& [name, vals] : ref.items()) {
        SCOPED_TRACE(what + ": " + name);
        auto r = vals.get<std::vector<float>>();
        EXPECT_TRUE(test::all_close(part(net, now, name), r, rel * max_abs(r) + 1e-7, rel));
    }
}

// The step's change of every tensor of `ref_after` (ref_after - ref_before) against ours (now -
// before, slices of arena copies): within rel of the change's largest magnitude, plus 4 float
// ulps of the tensor's largest value (the two sides' subtractions round), and rel relative.
// expect_tensors alone, scaled by a tensor's values, cannot see an update much smaller than them
// (a BN scale's, a head's): a tensor left as it was would pass.
inline void expect_updates(const Network& net, const std::vector<float>& before, const std::vector<float>& now,
                           const nlohmann::json& ref_before, const nlohmann::json& ref_after,
                           const std::string& what, double rel) {
    for (const auto& [name, vals] : ref_after.items()) {
        SCOPED_TRACE(what + " (the step's change): " + name);
        const auto ra = vals.get<std::vector<float>>(), rb = ref_before.at(name).get<std::vector<float>>();
        const auto a = part(net, now, name), b = part(net, before, name);
        ASSERT_EQ(ra.size(), rb.size());
        ASSERT_EQ(a.size(), ra.size());
        std::vector<float> dref(ra.size()), dnow(ra.size());
        for (size_t i = 0; i < ra.size(); ++i) dref[i] = ra[i] - rb[i], dnow[i] = a[i] - b[i];
        const double ulp = std::ldexp(max_abs(ra), -23);
        EXPECT_TRUE(test::all_close(dnow, dref, rel * max_abs(dref) + 4 * ulp, rel));
    }
}

// Every tensor of `params` (name -> values) into a zeroed arena, uploaded; returns the number of
// floats set (a size mismatch is a test failure naming the tensor).
inline size_t upload_params(Network& net, const nlohmann::json& params) {
    std::vector<float> h(net.size(), 0.f);
    size_t filled = 0;
    for (const auto& [name, vals] : params.items()) {
        const auto& s = net.tensor(name);
        auto v = vals.get<std::vector<float>>();
        EXPECT_EQ(v.size(), s.count) << name;
        if (v.size() != s.count) continue;
        std::copy(v.begin(), v.end(), h.begin() + ptrdiff_t(s.offset));
        filled += s.count;
    }
    net.upload(h);
    return filled;
}

// The reference's input batch (input_nhwc, labels) on the backend, and a loss-statistics slot.
struct Batch {
    Batch(Backend& b, const nlohmann::json& j)
        : x(j["input_nhwc"].get<std::vector<float>>()), labels(j["labels"].get<std::vector<int32_t>>()),
          xd(b, x.size()), yd(b, labels.size()), st(b, 2) {
        b.upload(xd.get(), x.data(), x.size() * 4);
        b.upload(yd.get(), labels.data(), labels.size() * 4);
    }
    std::vector<float> x;
    std::vector<int32_t> labels;
    DeviceBuffer<float> xd;
    DeviceBuffer<int32_t> yd;
    DeviceBuffer<float> st;
};

// The checks after the first forward and backward pass that every golden test makes: the logits
// (1e-5 absolute, 1e-4 relative), the summed loss (loss_rel relative; the network's first slot of
// in.st), and every gradient of j["grads"] within 1e-3 of its tensor's largest magnitude (BN over
// the reference's few images per channel amplifies rounding) and 1e-3 relative. grads: a host copy.
inline void expect_first_pass(Backend& b, const Network& net, const Batch& in, const float* logits,
                              const nlohmann::json& j, double loss_rel, std::vector<float>& grads) {
    std::vector<float> lg(size_t(in.labels.size()) * 10);
    b.download(lg.data(), logits, lg.size() * 4);
    EXPECT_TRUE(test::all_close(lg, j["logits"].get<std::vector<float>>(), 1e-5, 1e-4));
    float s[2];
    b.download(s, in.st.get(), 8);
    EXPECT_NEAR(s[0], j["loss"].get<double>(), loss_rel * j["loss"].get<double>());
    grads.resize(net.size());
    b.download(grads.data(), net.grads.get(), grads.size() * 4);
    for (const auto& [name, vals] : j["grads"].items()) {
        SCOPED_TRACE("gradient of " + name);
        auto ref = vals.get<std::vector<float>>();
        EXPECT_TRUE(test::all_close(part(net, grads, name), ref, 1e-3 * max_abs(ref) + 1e-7, 1e-3));
    }
}

// Two training steps on the reference's batch (summed cross-entropy with label_smoothing, then
// opt.step(first_step + step, total, 0, spe) for step 0 and 1), checked as the golden tests of a
// plain optimizer check them:
// after the first forward and backward expect_first_pass and the running statistics
// (j["after_forward"]); after each step every tensor of j["after_step<k>"] and its change.
// at_step(step, before): the test's own checks of that step, after those (before: the arena as
// the step found it). first_step: where in the schedule the two steps are (the reference's
// optimizer starts there, with no momentum).
inline void expect_two_steps(Backend& b, Network& net, Workspace& ws, const Batch& in, Optimizer& opt,
                             float label_smoothing, int total, int spe, const nlohmann::json& j,
                             const std::function<void(int, const std::vector<float>&)>& at_step = {},
                             int first_step = 0) {
    const int N = int(in.labels.size());
    std::vector<float> now, before, g;
    for (int step = 0; step < 2; ++step) {
        const std::string k = std::to_string(step);
        net.download(before);
        const float* logits = ws.forward(in.xd.get(), true);
        b.cross_entropy(ws.dlogits(), in.st.get(), logits, in.yd.get(), N, 10, label_smoothing);
        ws.backward(ws.dlogits(), false);
        if (step == 0) {
            expect_first_pass(b, net, in, logits, j, 1e-5, g);
            net.download(now);
            expect_tensors(net, now, j["after_forward"], "running statistic", 1e-5);
        }
        opt.step(first_step + step, total, 0, spe);
        net.download(now);
        expect_tensors(net, now, j["after_step" + k], "after step " + k, 1e-4);
        expect_updates(net, before, now, step == 0 ? j["params"] : j["after_step0"], j["after_step" + k],
                       "step " + k, 1e-3);
        if (at_step) at_step(step, before);
    }
}

}  // namespace sr::golden
