// test_moments.cpp: the one-pass batch statistics of CUDA batch norm (ops/cuda/moments.cuh), run
// on the host with the kernels' partition: chunks of 512 rows, 8 row-threads per chunk keeping
// fp32 Welford moments merged in thread order, then the chunks merged in double by 256 threads
// (strided) and a halving tree, as channel_moments / channel_moments_finalize do. Checked against
// a two-pass double reference, including a mean 500x and 1000x the standard deviation, where
// E[x^2] - E[x]^2 in fp32 would lose every digit. (The kernels themselves need a GPU:
// BackendOps.BatchNorm* compare them with the CPU there.)
#include <cmath>
#include <vector>

#include "ops/cuda/moments.cuh"
#include "test_util.h"

namespace sr {
namespace {

using cuda::Moments;

constexpr int kRowsPerChunk = 512, kRowThreads = 8, kFinalizeThreads = 256;

Moments<double> simulate_channel(const std::vector<float>& x, int M, int C, int c) {
    const int chunks = (M + kRowsPerChunk - 1) / kRowsPerChunk;
    std::vector<Moments<double>> thread(kFinalizeThreads);
    for (int i = 0; i < chunks; ++i) {
        const int m0 = i * kRowsPerChunk, m1 = std::min(M, m0 + kRowsPerChunk);
        Moments<float> s;
        for (int t = 0; t < kRowThreads; ++t) {
            Moments<float> a;
            for (int m = m0 + t; m < m1; m += kRowThreads) cuda::moments_add(a, x[size_t(m) * C + c]);
            EXPECT_EQ(int(a.n), cuda::rows_of_thread(m0, m1, t, kRowThreads));
            Moments<float> b;  // what the block's first row of threads reads back
            b.n = float(cuda::rows_of_thread(m0, m1, t, kRowThreads));
            b.mean = a.mean;
            b.m2 = a.m2;
            cuda::moments_merge(s, b);
        }
        Moments<double> b;  // the stored float2 and the chunk's row count
        b.n = double(std::min(kRowsPerChunk, M - i * kRowsPerChunk));
        b.mean = s.mean;
        b.m2 = s.m2;
        cuda::moments_merge(thread[size_t(i % kFinalizeThreads)], b);
    }
    for (int h = kFinalizeThreads / 2; h > 0; h /= 2)
        for (int t = 0; t < h; ++t) cuda::moments_merge(thread[size_t(t)], thread[size_t(t + h)]);
    return thread[0];
}

void check(int M, int C, float offset, float scale, uint64_t seed) {
    SCOPED_TRACE(testing::Message() << "M=" << M << " C=" << C << " offset=" << offset
                                    << " scale=" << scale);
    auto x = test::randn(size_t(M) * C, seed, scale);
    for (size_t i = 0; i < x.size(); ++i) x[i] += offset * float(1 + int(i % size_t(C)));
    for (int c = 0; c < C; ++c) {
        double s = 0, ss = 0;
        for (int m = 0; m < M; ++m) s += x[size_t(m) * C + c];
        const double mu = s / M;
        for (int m = 0; m < M; ++m) {
            const double d = x[size_t(m) * C + c] - mu;
            ss += d * d;
        }
        const Moments<double> got = simulate_channel(x, M, C, c);
        EXPECT_EQ(got.n, double(M));
        EXPECT_NEAR(got.mean, mu, 1e-6 * (std::abs(mu) + scale)) << "channel " << c;
        if (ss == 0) EXPECT_EQ(got.m2, 0.0) << "channel " << c;
        // fp32 Welford sums of <= 64 squared deviations per thread (as the two-pass kernel's fp32
        // partials were): up to ~5e-6 relative seen at a mean 4000x the std; 1e-5 on the variance
        // is 5e-6 on invstd (BackendOps allows 1e-5 there)
        else EXPECT_NEAR(got.m2 / M, ss / M, 1e-5 * ss / M) << "channel " << c;
    }
}

TEST(BatchNormMoments, OnePassMatchesTwoPassReference) {
    check(147, 5, 1.5f, 2.f, 1);              // one chunk, threads with 18 and 19 rows
    check(1, 3, 0.5f, 1.f, 2);                // one row: variance 0
    check(9, 2, -2.f, 1.f, 3);                // threads with 2 and 1 rows
    check(64 * 31 * 31, 8, 50.f, 0.1f, 4);    // mean 500x the std (up to 4000x at channel 8)
    check(1024 * 16 * 16, 4, 1000.f, 1.f, 5);  // 512 chunks: every finalize thread merges two
    check(513, 3, 0.f, 3.f, 6);               // a chunk of one row after a full one
}

// An fp32 E[x^2] - E[x]^2 fails where the moments hold (the reason for them).
TEST(BatchNormMoments, NaiveSumsWouldCancel) {
    const int M = 64 * 31 * 31;
    auto x = test::randn(size_t(M), 7, 0.1f);
    for (auto& v : x) v += 50.f;
    float s = 0, ss = 0;
    for (float v : x) s += v, ss += v * v;
    const double naive = double(ss) / M - double(s / M) * double(s / M);
    const Moments<double> got = simulate_channel(x, M, 1, 0);
    EXPECT_NEAR(got.m2 / M, 0.01, 1e-4);
    EXPECT_GT(std::abs(naive - 0.01), 1e-3);
}

}  // namespace
}  // namespace sr
