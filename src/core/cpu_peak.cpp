// cpu_peak.cpp: see cpu_peak.h.
#include "core/cpu_peak.h"

#include <chrono>

#include <immintrin.h>
#include <omp.h>

namespace sr {
namespace {

constexpr int kChains = 12;  // enough independent FMAs to cover latency x ports

__attribute__((target("avx512f"))) float run_avx512(long iters) {
    __m512 a[kChains];
    for (int k = 0; k < kChains; ++k) a[k] = _mm512_set1_ps(1.f + k * 1e-3f);
    const __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-4f);
    for (long i = 0; i < iters; ++i)
        for (int k = 0; k < kChains; ++k) a[k] = _mm512_fmadd_ps(a[k], b, c);
    __m512 s = a[0];
    for (int k = 1; k < kChains; ++k) s = _mm512_add_ps(s, a[k]);
    float out[16];  // (not _mm512_reduce_add_ps: GCC 12 warns inside it)
    _mm512_storeu_ps(out, s);
    return out[0] + out[15];
}

__attribute__((target("avx2,fma"))) float run_avx2(long iters) {
    __m256 a[kChains];
    for (int k = 0; k < kChains; ++k) a[k] = _mm256_set1_ps(1.f + k * 1e-3f);
    const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
    for (long i = 0; i < iters; ++i)
        for (int k = 0; k < kChains; ++k) a[k] = _mm256_fmadd_ps(a[k], b, c);
    float out[8];
    __m256 s = a[0];
    for (int k = 1; k < kChains; ++k) s = _mm256_add_ps(s, a[k]);
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

float run_sse(long iters) {
    __m128 a[kChains];
    for (int k = 0; k < kChains; ++k) a[k] = _mm_set1_ps(1.f + k * 1e-3f);
    const __m128 b = _mm_set1_ps(0.9999f), c = _mm_set1_ps(1e-4f);
    for (long i = 0; i < iters; ++i)
        for (int k = 0; k < kChains; ++k) a[k] = _mm_add_ps(_mm_mul_ps(a[k], b), c);
    float out[4];
    __m128 s = a[0];
    for (int k = 1; k < kChains; ++k) s = _mm_add_ps(s, a[k]);
    _mm_storeu_ps(out, s);
    return out[0];
}

}  // namespace

CpuPeak measure_cpu_peak(int threads, double seconds) {
    CpuPeak r;
    r.threads = threads > 0 ? threads : omp_get_max_threads();
    int lanes;
    float (*fn)(long);
    if (__builtin_cpu_supports("avx512f")) {
        r.isa = "avx512f", lanes = 16, fn = run_avx512;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        r.isa = "avx2+fma", lanes = 8, fn = run_avx2;
    } else {
        r.isa = "sse", lanes = 4, fn = run_sse;
    }
    // FMA counts 2 flops (the SSE path does mul + add: also 2 flops per lane per chain step)
    long iters = 1 << 16;
    volatile float sink = 0;
    for (;;) {
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(r.threads)
        { sink = sink + fn(iters); }
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (dt >= seconds || iters > (1L << 34)) {
            r.gflops = double(iters) * kChains * lanes * 2.0 * r.threads / dt * 1e-9;
            break;
        }
        iters *= 2;
    }
    return r;
}

}  // namespace sr
