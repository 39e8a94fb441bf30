// test_bn_sync_ops.cpp: the batch-norm pieces for sync-BN (bn_stats, bn_apply,
// bn_backward_reduce, bn_backward_apply; backend.h) on the CPU, against the whole ops they split
// (bn_forward_train, bn_backward) and against double references. The CUDA twins are compared
// with these in test_backend_ops.cpp.
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "test_util.h"

namespace sr {
namespace {
using test::all_close;
using test::randn;

std::vector<float> offset_randn(size_t n, uint64_t seed, float scale, float offset) {
    auto v = randn(n, seed, scale);
    for (auto& x : v) x += offset;
    return v;
}

struct Fwd {
    std::vector<float> y, mean, invstd, rm, rv;
};

// bn_forward_train, the whole op
Fwd whole_forward(const std::vector<float>& x, const std::vector<float>& gamma,
                  const std::vector<float>& beta, int M, int C) {
    Fwd f{std::vector<float>(x.size()), std::vector<float>(C), std::vector<float>(C),
          std::vector<float>(C, 0.25f), std::vector<float>(C, 2.f)};
    cpu::bn_forward_train(f.y.data(), f.mean.data(), f.invstd.data(), f.rm.data(), f.rv.data(),
                          x.data(), gamma.data(), beta.data(), M, C, 1e-5f, 0.4f);
    return f;
}

// The pieces over `parts` row ranges of x, sums added as an all-reduce would: every part is
// normalised with the statistics of all M rows.
Fwd pieces_forward(const std::vector<float>& x, const std::vector<float>& gamma,
                   const std::vector<float>& beta, int M, int C, const std::vector<int>& cuts) {
    Fwd f{std::vector<float>(x.size()), std::vector<float>(C), std::vector<float>(C),
          std::vector<float>(C, 0.25f), std::vector<float>(C, 2.f)};
    std::vector<float> s1(2 * C, 0.f), s2(2 * C, 0.f), part(2 * C);
    const float scale = float(1.0 / M);
    for (size_t p = 0; p + 1 < cuts.size(); ++p) {  // pass 1
        cpu::bn_stats(part.data(), x.data() + size_t(cuts[p]) * C, nullptr, 0.f,
                      cuts[p + 1] - cuts[p], C);
        for (int i = 0; i < 2 * C; ++i) s1[i] += part[i];
    }
    for (size_t p = 0; p + 1 < cuts.size(); ++p) {  // pass 2, about pass 1's mean
        cpu::bn_stats(part.data(), x.data() + size_t(cuts[p]) * C, s1.data(), scale,
                      cuts[p + 1] - cuts[p], C);
        for (int i = 0; i < 2 * C; ++i) s2[i] += part[i];
    }
    for (size_t p = 0; p + 1 < cuts.size(); ++p) {
        std::vector<float> rm(C, 0.25f), rv(C, 2.f);  // each "rank" updates its own copy
        const size_t at = size_t(cuts[p]) * C;
        cpu::bn_apply(f.y.data() + at, f.mean.data(), f.invstd.data(), rm.data(), rv.data(),
                      x.data() + at, gamma.data(), beta.data(), s2.data(), s1.data(), scale, M,
                      cuts[p + 1] - cuts[p], C, 1e-5f, 0.4f);
        f.rm = rm, f.rv = rv;  // all ranks' copies are equal: keep the last
    }
    return f;
}

// One process, the pieces in a row, equal the whole op. Tolerance: both sum in double; the
// pieces use two passes, the whole op one: mean and invstd agree to ~1e-7 relative, y (O(1))
// to a few ulps: 1e-6 absolute and relative.
TEST(BnPieces, OneProcessEqualsBnForwardTrain) {
    const int M = 147, C = 5;
    const auto x = offset_randn(size_t(M) * C, 11, 2.f, 1.5f);
    const auto gamma = offset_randn(C, 12, 0.2f, 1.f), beta = randn(C, 13);
    const Fwd a = whole_forward(x, gamma, beta, M, C),
              b = pieces_forward(x, gamma, beta, M, C, {0, M});
    EXPECT_TRUE(all_close(b.y, a.y, 1e-6, 1e-6)) << "y";
    EXPECT_TRUE(all_close(b.mean, a.mean, 1e-6, 1e-6)) << "mean";
    EXPECT_TRUE(all_close(b.invstd, a.invstd, 0, 1e-6)) << "invstd";
    EXPECT_TRUE(all_close(b.rm, a.rm, 1e-6, 1e-6)) << "running mean";
    EXPECT_TRUE(all_close(b.rv, a.rv, 0, 1e-6)) << "running var (unbiased)";
}

// Three uneven "ranks" (50 + 60 + 37 rows): each normalises its rows with the statistics of all
// 147, so the result is the whole op's, row for row. Same tolerance as above.
TEST(BnPieces, RowsSplitOverRanksEqualTheWholeBatch) {
    const int M = 147, C = 5;
    const auto x = offset_randn(size_t(M) * C, 21, 1.f, -0.7f);
    const auto gamma = offset_randn(C, 22, 0.2f, 1.f), beta = randn(C, 23);
    const Fwd a = whole_forward(x, gamma, beta, M, C);
    const Fwd b = pieces_forward(x, gamma, beta, M, C, {0, 50, 110, M});
    EXPECT_TRUE(all_close(b.y, a.y, 1e-6, 1e-6)) << "y";
    EXPECT_TRUE(all_close(b.mean, a.mean, 1e-6, 1e-6)) << "mean";
    EXPECT_TRUE(all_close(b.invstd, a.invstd, 0, 1e-6)) << "invstd";
    EXPECT_TRUE(all_close(b.rm, a.rm, 1e-6, 1e-6)) << "running mean";
    EXPECT_TRUE(all_close(b.rv, a.rv, 0, 1e-6)) << "running var";
}

// A mean 500x the standard deviation over many rows: the second pass sums deviations from the
// first pass's mean, so the variance keeps its digits (one fp32 pass of E[x^2] - E[x]^2 would
// keep none). Against a double two-pass reference: invstd to 1e-5 relative.
TEST(BnPieces, LargeMeanKeepsTheVariance) {
    const int M = 64 * 31 * 31, C = 8;
    const auto x = offset_randn(size_t(M) * C, 31, 0.1f, 50.f);
    const std::vector<float> gamma(C, 1.f), beta(C, 0.f);
    const Fwd b = pieces_forward(x, gamma, beta, M, C, {0, M / 3, M});
    for (int c = 0; c < C; ++c) {
        double s = 0, ss = 0;
        for (int m = 0; m < M; ++m) s += x[size_t(m) * C + c];
        const double mu = s / M;
        for (int m = 0; m < M; ++m) ss += std::pow(x[size_t(m) * C + c] - mu, 2);
        const double is = 1.0 / std::sqrt(ss / M + 1e-5);
        EXPECT_NEAR(b.mean[c], mu, 1e-6 * std::abs(mu)) << "channel " << c;
        EXPECT_NEAR(b.invstd[c], is, 1e-5 * is) << "channel " << c;
    }
}

// Backward in pieces over two "ranks" (sums added in between) equals bn_backward on all rows;
// dgamma/dbeta of the pieces are each rank's own sums, which add up to the whole op's.
// Tolerance: sums in double on both sides; dx to 1e-6, the parameter sums (rms ~ sqrt(M)) to
// 1e-6 relative plus 1e-5 absolute.
TEST(BnPieces, BackwardSplitOverRanksEqualsBnBackward) {
    const int M = 147, C = 5, cut = 70;
    const auto x = offset_randn(size_t(M) * C, 41, 2.f, 1.f);
    const auto dy = randn(size_t(M) * C, 42);
    const auto gamma = offset_randn(C, 43, 0.2f, 1.f);
    Fwd f = whole_forward(x, gamma, std::vector<float>(C, 0.f), M, C);
    std::vector<float> dx(x.size()), dg(C), db(C);
    cpu::bn_backward(dx.data(), dg.data(), db.data(), dy.data(), x.data(), f.mean.data(),
                     f.invstd.data(), gamma.data(), M, C);

    std::vector<float> sums(2 * C, 0.f), part(2 * C), dg_sum(C, 0.f), db_sum(C, 0.f), pg(C), pb(C);
    const int cuts[3] = {0, cut, M};
    for (int p = 0; p < 2; ++p) {
        const size_t at = size_t(cuts[p]) * C;
        cpu::bn_backward_reduce(part.data(), pg.data(), pb.data(), dy.data() + at, x.data() + at,
                                f.mean.data(), f.invstd.data(), cuts[p + 1] - cuts[p], C);
        for (int i = 0; i < 2 * C; ++i) sums[i] += part[i];
        for (int c = 0; c < C; ++c) dg_sum[c] += pg[c], db_sum[c] += pb[c];
    }
    std::vector<float> dx2(x.size(), 1e30f);
    for (int p = 0; p < 2; ++p) {
        const size_t at = size_t(cuts[p]) * C;
        cpu::bn_backward_apply(dx2.data() + at, dy.data() + at, x.data() + at, f.mean.data(),
                               f.invstd.data(), gamma.data(), sums.data(), M, cuts[p + 1] - cuts[p],
                               C);
    }
    EXPECT_TRUE(all_close(dx2, dx, 1e-6, 1e-6)) << "dx";
    EXPECT_TRUE(all_close(dg_sum, dg, 1e-5, 1e-6)) << "dgamma";
    EXPECT_TRUE(all_close(db_sum, db, 1e-5, 1e-6)) << "dbeta";
    // nullptr skips dgamma / dbeta
    cpu::bn_backward_reduce(part.data(), nullptr, nullptr, dy.data(), x.data(), f.mean.data(),
                            f.invstd.data(), M, C);
    EXPECT_TRUE(all_close(part, sums, 1e-5, 1e-6)) << "sums of all rows at once";
}

}  // namespace
}  // namespace sr
