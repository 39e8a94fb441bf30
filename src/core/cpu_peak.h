// cpu_peak.h: the measured FP32 peak of this CPU (independent FMA chains in the widest vector
// unit the CPU reports: AVX-512, else AVX2+FMA, else SSE), used to say what share of the
// machine a benchmark reaches.
#pragma once
#include <string>

namespace sr {

struct CpuPeak {
    double gflops = 0;   // all threads together
    int threads = 0;
    std::string isa;     // "avx512f", "avx2+fma" or "sse"
};

CpuPeak measure_cpu_peak(int threads, double seconds = 0.3);

}  // namespace sr
