// backend_ops_util.h: host-side helpers of the backend comparison tests (test_backend_ops.cpp,
// test_backend_ops16.cpp): seeded inputs and the element-wise comparison they share.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.h"

namespace sr::test {

inline std::vector<float> randn_offset(size_t n, uint64_t seed, float scale = 1.f, float offset = 0.f) {
    Rng r(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = offset + scale * r.normal();
    return v;
}

inline std::vector<float> uniform(size_t n, uint64_t seed, float lo, float hi) {
    Rng r(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = r.uniform(lo, hi);
    return v;
}

template <typename T>
double rms(const std::vector<T>& v) {
    double s = 0;
    for (auto x : v) s += double(x) * double(x);
    return v.empty() ? 0 : std::sqrt(s / double(v.size()));
}

// max over i of |got - ref| / (atol + rtol |ref|) must be <= 1; non-finite values fail.
template <typename T>
::testing::AssertionResult close(const std::vector<T>& got, const std::vector<T>& ref, double atol,
                                 double rtol) {
    if (got.size() != ref.size())
        return ::testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << ref.size();
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = double(got[i]), r = double(ref[i]);
        if (!std::isfinite(g) || !std::isfinite(r))
            return ::testing::AssertionFailure()
                   << "non-finite at index " << i << ": " << g << " vs reference " << r
                   << " (an output element left unwritten?)";
        const double d = std::abs(g - r), allowed = atol + rtol * std::abs(r);
        const double e = d == 0 ? 0 : (allowed > 0 ? d / allowed : HUGE_VAL);  // exact when 0
        if (e > worst) worst = e, wi = i;
    }
    if (worst <= 1) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "index " << wi << " of " << got.size() << ": " << double(got[wi]) << " vs reference "
           << double(ref[wi]) << " (" << worst << " x the allowed error; atol " << atol
           << ", rtol " << rtol << ")";
}

}  // namespace sr::test
