// test_util.h: helpers shared by the tests: seeded random vectors, max-difference checks with
// the offending index in the message, the message of an expected sr::Error, where the real
// CIFAR-10 is (if present), and temporary paths of the test's own.
#pragma once
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <unistd.h>

#include "core/error.h"
#include "core/rng.h"

namespace sr::test {

// A path in the temporary directory that no other test uses at the same time: `ctest -j` runs
// tests side by side, each in a process of its own, and two test runs may share a machine; a
// fixed name let one test's checkpoint be overwritten by another's (Checkpoint.Resumed* under
// ctest -j2). The process id goes in front of the name.
inline std::filesystem::path temp_path(const std::string& name) {
    return std::filesystem::temp_directory_path() /
           ("speedrun-" + std::to_string(::getpid()) + "-" + name);
}

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.f) {
    Rng r(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = scale * r.normal();
    return v;
}

// max over i of |a - b| / (atol + rtol |b|) must be <= 1 (b is the reference)
inline ::testing::AssertionResult all_close(const std::vector<float>& a, const std::vector<float>& b,
                                            double atol, double rtol) {
    if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes differ";
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i]) || !std::isfinite(b[i]))
            return ::testing::AssertionFailure() << "non-finite at " << i << ": " << a[i] << " vs " << b[i];
        const double e = std::abs(double(a[i]) - b[i]) / (atol + rtol * std::abs(double(b[i])));
        if (e > worst) worst = e, wi = i;
    }
    if (worst <= 1) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "index " << wi << ": " << a[wi] << " vs reference " << b[wi]
                                         << " (" << worst << " x the allowed error)";
}

// The message of the sr::Error that f throws; a test failure if it throws nothing or another type.
inline std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "threw a non-sr::Error: " << e.what();
        return e.what();
    }
    ADD_FAILURE() << "no error was thrown";
    return "";
}

// msg contains part; the failure shows both.
inline ::testing::AssertionResult contains(const std::string& msg, const std::string& part) {
    if (msg.find(part) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << part << "\"";
}

inline std::string real_cifar_dir() {
    const std::string d = "../shared/data/cifar-10-batches-bin";
    return std::filesystem::exists(d + "/data_batch_1.bin") ? d : "";
}

}  // namespace sr::test
