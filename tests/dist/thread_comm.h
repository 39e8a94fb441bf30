// thread_comm.h: a Communicator whose "ranks" are threads of this process, for in-process tests
// of data parallelism (tests/dist/). Collectives meet at a std::barrier; sums are taken by rank 0
// in rank order, so every rank gets the same bits, as from MPI. Each rank's Comm notes the
// longest it waited in a collective while its time limit was on (Communicator::limit_waits).
#pragma once
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dist/communicator.h"

namespace sr::test {

class ThreadGroup {
public:
    explicit ThreadGroup(int n) : n_(n), sync_(n), ptrs_(size_t(n)) {}

    class Comm final : public Communicator {
    public:
        Comm(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
        int rank() const override { return rank_; }
        int world() const override { return g_.n_; }
        int local_rank() const override { return rank_; }
        int local_world() const override { return g_.n_; }
        int hosts() const override { return 1; }
        std::string name() const override { return "threads of one process"; }
        void allreduce_sum(float* d, size_t n) override {
            Timed t(*this);
            g_.sum(rank_, d, n);
        }
        void allreduce_sum(double* d, size_t n) override {
            Timed t(*this);
            g_.sum(rank_, d, n);
        }
        void barrier() override {
            Timed t(*this);
            g_.sync_.arrive_and_wait();
        }
        void broadcast(void* d, size_t bytes, int root) override {
            Timed t(*this);
            g_.ptrs_[size_t(rank_)] = d;
            g_.sync_.arrive_and_wait();
            if (rank_ != root) std::memcpy(d, g_.ptrs_[size_t(root)], bytes);
            g_.sync_.arrive_and_wait();
        }
        [[noreturn]] void abort(int) override { std::abort(); }
        void limit_waits(bool on) override { limited_ = on; }
        // seconds: the longest collective of this rank while limit_waits was on
        double longest_limited_wait() const { return longest_; }

    private:
        struct Timed {
            explicit Timed(Comm& c) : c(c), t0(std::chrono::steady_clock::now()) {}
            ~Timed() {
                if (c.limited_)
                    c.longest_ = std::max(c.longest_, std::chrono::duration<double>(
                                                          std::chrono::steady_clock::now() - t0).count());
            }
            Comm& c;
            std::chrono::steady_clock::time_point t0;
        };
        ThreadGroup& g_;
        int rank_;
        bool limited_ = false;
        double longest_ = 0;
    };

private:
    template <typename T>
    void sum(int rank, T* d, size_t n) {
        ptrs_[size_t(rank)] = d;
        sync_.arrive_and_wait();
        if (rank == 0) {
            tmp_.assign(n, 0.0);
            for (int r = 0; r < n_; ++r) {
                const T* p = static_cast<const T*>(ptrs_[size_t(r)]);
                for (size_t i = 0; i < n; ++i)
                    tmp_[i] = double(T(tmp_[i]) + p[i]);  // in T, rank order
            }
        }
        sync_.arrive_and_wait();
        for (size_t i = 0; i < n; ++i) d[i] = T(tmp_[i]);
        sync_.arrive_and_wait();
    }

    int n_;
    std::barrier<> sync_;
    std::vector<void*> ptrs_;
    std::vector<double> tmp_;
};

}  // namespace sr::test
