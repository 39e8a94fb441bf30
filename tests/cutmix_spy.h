// cutmix_spy.h: a backend decorator for tests of the trainer's cutmix. It runs every op on the
// backend it wraps (the CPU's: host memory), and keeps what the cutmix op saw: each row of the
// batch before and after the op, its partner's row and the square's corner, and the two labels
// of the mixed loss.
#pragma once
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "ops/forwarding_backend.h"

namespace sr::test {

struct CutmixSpy : ForwardingBackend {
    using ForwardingBackend::ForwardingBackend;
    std::vector<std::vector<float>> before, after, partners;  // per row, in the order trained
    std::vector<int32_t> labels, labels2;
    int max_corner = -1;

    void run_op(const char*, const std::function<std::string()>&, double, double,
                std::function<void()> f) override {
        f();
    }
    void cutmix(float* x, const float* src, const uint8_t* pos, int B, int H, int W, int C,
                int size) override {
        const size_t px = size_t(H) * W * C;
        for (int i = 0; i < B; ++i) {
            before.emplace_back(x + i * px, x + (i + 1) * px);
            partners.emplace_back(src + i * px, src + (i + 1) * px);
            max_corner = std::max({max_corner, int(pos[2 * i]), int(pos[2 * i + 1])});
        }
        ForwardingBackend::cutmix(x, src, pos, B, H, W, C, size);
        for (int i = 0; i < B; ++i) after.emplace_back(x + i * px, x + (i + 1) * px);
    }
    void cross_entropy_mixed(float* dlogits, float* stats, const float* logits, const int32_t* y,
                             const int32_t* y2, float mix, int N, int O, float smoothing) override {
        labels.insert(labels.end(), y, y + N);
        labels2.insert(labels2.end(), y2, y2 + N);
        ForwardingBackend::cross_entropy_mixed(dlogits, stats, logits, y, y2, mix, N, O, smoothing);
    }
};

}  // namespace sr::test
