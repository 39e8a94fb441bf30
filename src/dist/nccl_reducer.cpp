// nccl_reducer.cpp: the DeviceReducer for CUDA memory on NCCL (CUDA builds that found NCCL;
// see data_parallel.h). MPI (the Communicator) only bootstraps it: rank 0's ncclUniqueId goes
// to every rank by broadcast.
//
// Every NCCL call runs on one second stream of this reducer ("side"), in the order the ranks
// issue them (the same on every rank), so one communicator never has two streams in flight.
// start(): the side stream waits for what the backend's stream has queued so far (an event),
// then sums there while the backend goes on with the rest of backward; wait_all(): the backend's
// stream waits for the side stream. The host never blocks.
//
// NCCL reports a failed peer or network only through ncclCommGetAsyncError, while its kernels
// wait for the lost rank forever and the host soon blocks behind them (a full launch queue, the
// next host collective). So a watchdog thread polls it (as PyTorch's does) and, on an error,
// prints it and ends this process, which makes the launcher end the job. A rank that is lost
// without an error (killed on the same host, where NCCL uses shared memory or NVLink and sees no
// broken connection; stopped; hung) leaves the others' sums waiting with none; so the watchdog
// also ends this rank when a sum has not finished SPEEDRUN_NCCL_TIMEOUT seconds (600 unless set;
// 0: never) after it was queued, as PyTorch's does after its 10-minute timeout. Each sum is
// followed by an event on the side stream; the watchdog queries the oldest one not seen done.
// A healthy sum waits at most for the slowest rank to reach it (rank 0 evaluating or saving at an
// epoch's end): seconds, far below the limit. A pause of this whole process (SIGSTOP, a suspended
// job) does not count. MPI's host collectives have a limit of their own (Communicator::limit_waits).
#if SPEEDRUN_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "core/env.h"
#include "core/error.h"
#include "dist/data_parallel.h"

namespace sr {
namespace {

void nccl_check(ncclResult_t r, const char* call) {
    if (r != ncclSuccess) fail("NCCL: {} failed: {}", call, ncclGetErrorString(r));
}
void cuda_check(cudaError_t e, const char* call) {
    if (e != cudaSuccess) fail("CUDA: {} failed: {}", call, cudaGetErrorString(e));
}
#define NCCL_CALL(x) nccl_check((x), #x)
#define CUDA_CALL(x) cuda_check((x), #x)

class NcclReducer final : public DeviceReducer {
public:
    NcclReducer(Backend& b, Communicator& comm)
        : compute_(static_cast<cudaStream_t>(b.native_stream())) {
        if (b.device() != Device::cuda || !compute_)
            fail("NCCL: the backend '{}' has no CUDA stream", b.name());
        // the backend made its device current on this thread
        int device = 0;
        CUDA_CALL(cudaGetDevice(&device));
        timeout_s_ = env_count("SPEEDRUN_NCCL_TIMEOUT", 600, 0);
        cudaDeviceProp prop{};
        CUDA_CALL(cudaGetDeviceProperties(&prop, device));
        std::string uuid;
        for (const char ch : prop.uuid.bytes) uuid += fmt::format("{:02x}", static_cast<unsigned char>(ch));
        const auto [a, c] = ranks_sharing_a_device(comm, uuid);
        if (a >= 0)
            fail(
                "data parallel: ranks {} and {} run on the same GPU, and NCCL needs a GPU of its own "
                "for each rank: start at most one rank per GPU (this rank sees {} GPU{}), or set "
                "SPEEDRUN_NO_NCCL=1 on every rank to sum through host memory instead",
                a, c, cuda_device_count(), cuda_device_count() == 1 ? "" : "s");
        ncclUniqueId id{};
        if (comm.root()) NCCL_CALL(ncclGetUniqueId(&id));
        comm.broadcast(&id, sizeof id, 0);
        NCCL_CALL(ncclCommInitRank(&nccl_, comm.world(), id, comm.rank()));
        // the sums' stream at the highest priority (as PyTorch DDP's): a bucket's kernels then
        // start as soon as they may, not behind the backward convolutions queued meanwhile
        int least = 0, greatest = 0;
        CUDA_CALL(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        CUDA_CALL(cudaStreamCreateWithPriority(&side_, cudaStreamNonBlocking, greatest));
        CUDA_CALL(cudaEventCreateWithFlags(&to_side_, cudaEventDisableTiming));
        CUDA_CALL(cudaEventCreateWithFlags(&to_compute_, cudaEventDisableTiming));
        int v = 0;
        ncclGetVersion(&v);
        name_ = fmt::format("NCCL {}.{}.{} on a second stream ({} ranks)", v / 10000,
                            (v % 10000) / 100, v % 100, comm.world());
        for (int i = 0; timeout_s_ > 0 && i < 64; ++i) {  // (the watchdog recycles them every 100 ms)
            cudaEvent_t e = nullptr;
            CUDA_CALL(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
            spare_.push_back(e);
        }
        watchdog_ = std::thread([this, device, rank = comm.rank(), world = comm.world()] {
            cudaSetDevice(device);  // (the events' device, current on the thread that queries them)
            watch(rank, world);
        });
    }
    ~NcclReducer() override {
        // Unwound by an error on this rank: abort the communicator (local; it also stops sums
        // still spinning on the GPU, which the buffers' release would wait for) and leave the
        // rest to the job's abort (run_on_all_ranks). ncclCommDestroy is a collective of the
        // host's ranks: here it would wait for ranks that are still training, and the abort that
        // ends them, with the error's message, would never come.
        {
            std::lock_guard<std::mutex> lock(mu_);
            closing_ = true;
        }
        wake_.notify_all();
        watchdog_.join();
        if (std::uncaught_exceptions() > 0) {
            ncclCommAbort(nccl_);
            return;
        }
        cudaStreamSynchronize(side_);
        ncclCommDestroy(nccl_);
        for (const Queued& q : queued_) cudaEventDestroy(q.done);
        for (cudaEvent_t e : spare_) cudaEventDestroy(e);
        cudaEventDestroy(to_side_);
        cudaEventDestroy(to_compute_);
        cudaStreamDestroy(side_);
    }
    std::string name() const override { return name_; }

    void start(float* p, size_t n) override {
        CUDA_CALL(cudaEventRecord(to_side_, compute_));
        CUDA_CALL(cudaStreamWaitEvent(side_, to_side_, 0));
        NCCL_CALL(ncclAllReduce(p, p, n, ncclFloat, ncclSum, nccl_, side_));
        pending_ = true;
        if (timeout_s_ == 0) return;
        // No CUDA call under mu_ (a full launch queue during a stall blocks cudaEventRecord, and
        // the watchdog must still get mu_) and no event query on this thread (a not-ready query
        // may stay as the thread's last error, which the next kernel launch's check would read):
        // the watchdog alone queries and recycles.
        cudaEvent_t done = nullptr;
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (!spare_.empty()) {
                done = spare_.back();
                spare_.pop_back();
            }
        }
        if (!done) CUDA_CALL(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
        CUDA_CALL(cudaEventRecord(done, side_));
        const auto at = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lock(mu_);
        queued_.push_back({done, at});
    }
    void wait_all() override {
        if (!pending_) return;
        CUDA_CALL(cudaEventRecord(to_compute_, side_));
        CUDA_CALL(cudaStreamWaitEvent(compute_, to_compute_, 0));
        pending_ = false;
    }
    void allreduce(float* p, size_t n) override {
        start(p, n);
        wait_all();
    }
private:
    // (the watchdog thread) every 100 ms until closing_
    void watch(int rank, int world) {
        std::unique_lock<std::mutex> lock(mu_);
        while (true) {
            const auto asleep = std::chrono::steady_clock::now();
            if (wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return closing_; })) break;
            lock.unlock();
            // a 100 ms sleep that took seconds is the process stopped (SIGSTOP, a suspended job),
            // not a sum waiting: the queued sums' clocks skip it (only the sleep counts, not time
            // this thread spent in a CUDA or NCCL call, which must not defer the limit)
            const auto gap = std::chrono::steady_clock::now() - asleep;
            if (timeout_s_ > 0)
                stalled(rank, world, gap > std::chrono::seconds(5) ? gap : std::chrono::steady_clock::duration{});
            ncclResult_t async = ncclSuccess;
            if (ncclCommGetAsyncError(nccl_, &async) == ncclSuccess && async != ncclSuccess
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
                && async != ncclInProgress  // (nonblocking communicators only; not ours)
#endif
            ) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
                const char* detail = ncclGetLastError(nccl_);
#else
                const char* detail = "";
#endif
                std::fprintf(stderr, "speedrun: error (rank %d of %d): NCCL: a sum over the ranks failed: %s%s%s%s\n",
                             rank, world, ncclGetErrorString(async), detail && *detail ? " (" : "",
                             detail ? detail : "", detail && *detail ? ")" : "");
                std::fflush(stderr);
                std::_Exit(1);  // (the sums this rank waits for will not come; the launcher ends the job)
            }
            lock.lock();
        }
    }

    // (the watchdog thread) recycles the sums seen done; ends this rank when the oldest one not
    // done was queued more than timeout_s_ ago (less `paused`, added to every queued sum's time).
    // Only this thread pops queued_, so its front stays what was read while mu_ is released.
    void stalled(int rank, int world, std::chrono::steady_clock::duration paused) {
        while (true) {
            Queued q{};
            {
                std::lock_guard<std::mutex> lock(mu_);
                if (paused.count() > 0)
                    for (Queued& x : queued_) x.at += paused;
                paused = {};
                if (queued_.empty()) return;
                q = queued_.front();
            }
            const cudaError_t e = cudaEventQuery(q.done);
            if (e == cudaSuccess) {
                std::lock_guard<std::mutex> lock(mu_);
                queued_.pop_front();
                spare_.push_back(q.done);
                continue;
            }
            (void)cudaGetLastError();  // (a not-ready query may stay as this thread's last error)
            const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - q.at).count();
            if (e == cudaErrorNotReady && waited > timeout_s_) {
                std::fprintf(stderr,
                             "speedrun: error (rank %d of %d): NCCL: a sum over the ranks has not "
                             "finished %.0f s after it was queued: another rank is lost, stopped or "
                             "hung (or this rank's GPU is); ending this rank (SPEEDRUN_NCCL_TIMEOUT "
                             "sets the limit in seconds, 0 for none)\n",
                             rank, world, waited);
                std::fflush(stderr);
                std::_Exit(1);
            }
            return;
        }
    }

    struct Queued {
        cudaEvent_t done;                             // recorded on side_ after the sum
        std::chrono::steady_clock::time_point at;     // when start() queued it
    };

    cudaStream_t compute_ = nullptr, side_ = nullptr;
    cudaEvent_t to_side_ = nullptr, to_compute_ = nullptr;
    ncclComm_t nccl_ = nullptr;
    bool pending_ = false;
    std::string name_;
    std::mutex mu_;
    std::condition_variable wake_;
    bool closing_ = false;
    int timeout_s_ = 600;
    std::deque<Queued> queued_;       // (mu_) sums not seen done, oldest first; the watchdog pops
    std::vector<cudaEvent_t> spare_;  // (mu_) events free for the next sum
    std::thread watchdog_;
};

}  // namespace

std::unique_ptr<DeviceReducer> make_nccl_reducer(Backend& b, Communicator& comm) {
    return std::make_unique<NcclReducer>(b, comm);
}

}  // namespace sr
#endif  // SPEEDRUN_HAVE_NCCL
