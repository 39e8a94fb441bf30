// moments.cuh: count, mean and sum of squared deviations of a set of values, built one value at
// a time (Welford) and merged (Chan, Golub and LeVeque), so the batch statistics of CUDA batch
// norm come from one pass over x without the cancellation of E[x^2] - E[x]^2 (a mean 500x the
// standard deviation keeps its digits). Plain C++ as well as CUDA: tests/ops/test_moments.cpp
// runs the same functions on the host with the kernels' partition of rows (the device code
// itself needs a GPU to be checked).
#pragma once

#if defined(__CUDACC__)
#define SR_HOST_DEVICE __host__ __device__
#else
#define SR_HOST_DEVICE
#endif

namespace sr::cuda {

template <class T>
struct Moments {
    T n = 0, mean = 0, m2 = 0;  // count, mean, sum of (x - mean)^2
};

// a += one value
template <class T>
SR_HOST_DEVICE inline void moments_add(Moments<T>& a, T x) {
    a.n += T(1);
    const T d = x - a.mean;
    a.mean += d / a.n;
    a.m2 += d * (x - a.mean);
}

// a += the values summarised by b
template <class T>
SR_HOST_DEVICE inline void moments_merge(Moments<T>& a, const Moments<T>& b) {
    if (b.n == T(0)) return;
    if (a.n == T(0)) {
        a = b;
        return;
    }
    const T n = a.n + b.n;
    const T d = b.mean - a.mean;
    a.mean += d * (b.n / n);
    a.m2 += b.m2 + d * d * (a.n * (b.n / n));
    a.n = n;
}

// How many of the rows [m0, m1) row-thread t of `threads` takes (rows m0 + t, m0 + t + threads, ...).
SR_HOST_DEVICE inline int rows_of_thread(int m0, int m1, int t, int threads) {
    const int r = m1 - m0 - t;
    return r > 0 ? (r + threads - 1) / threads : 0;
}

}  // namespace sr::cuda
