// communicator_mpi.cpp: the MPI communicator (builds with SPEEDRUN_HAVE_MPI; see
// communicator.h). MPI starts here (MPI_Init_thread, FUNNELED: only the main thread calls MPI;
// OpenMP threads never do) and ends in the destructor. Errors come back as codes
// (MPI_ERRORS_RETURN) and become sr::Error naming the call and MPI's reason.
//
// MPI has no time limit of its own for a collective: a rank that is stopped or hung (not dead:
// then the launcher ends the job) leaves the others in their next collective forever. While
// limit_waits is on, the main thread notes when its oldest wait began (a blocking collective, or
// the first started sum not yet done), and a watchdog thread, which makes no MPI call, ends the
// rank when that is more than the limit ago. It wakes every 100 ms; a wake-up that came seconds
// late (a quarter of the limit where that is less, 0.3 s at least) is this process paused
// (SIGSTOP, a suspended job), and the pause does not count.
#if SPEEDRUN_HAVE_MPI
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>
// the C API only: keep Open MPI's / MPICH's deprecated C++ bindings out
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include "core/env.h"
#include "core/error.h"
#include "dist/communicator.h"

namespace sr {
namespace {

void check(int rc, const char* call) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail("MPI: {} failed: {}", call, std::string(msg, size_t(len)));
}
#define MPI_CHECK(call) check((call), #call)

// MPI counts are int: long arrays go in pieces.
constexpr size_t kMaxCount = size_t(1) << 30;

class MpiCommunicator final : public Communicator {
public:
    MpiCommunicator() {
        limit_s_ = env_count("SPEEDRUN_MPI_TIMEOUT", 1800, 0);  // (a bad value fails before MPI starts)
        int inited = 0;
        MPI_Initialized(&inited);
        if (!inited) {
            int provided = 0;
            if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
                fail("MPI: MPI_Init_thread failed (is this process started by mpirun or srun?)");
            owns_ = true;
        }
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
        MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_));
        MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL,
                                      &local_));
        MPI_CHECK(MPI_Comm_rank(local_, &local_rank_));
        MPI_CHECK(MPI_Comm_size(local_, &local_world_));
        int first = local_rank_ == 0 ? 1 : 0;
        MPI_CHECK(MPI_Allreduce(&first, &hosts_, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
        char lib[MPI_MAX_LIBRARY_VERSION_STRING];
        int len = 0;
        MPI_Get_library_version(lib, &len);
        std::string v(lib, size_t(len));
        v = v.substr(0, v.find_first_of(",\n"));
        name_ = fmt::format("MPI ({}), {} rank{} on {} host{}", v, world_, world_ == 1 ? "" : "s",
                            hosts_, hosts_ == 1 ? "" : "s");
    }

    ~MpiCommunicator() override {
        if (watchdog_.joinable()) {
            {
                std::lock_guard<std::mutex> lock(mu_);
                closing_ = true;
            }
            wake_.notify_all();
            watchdog_.join();
        }
        if (!requests_.empty())
            MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
        MPI_Comm_free(&local_);
        if (owns_) MPI_Finalize();
    }

    int rank() const override { return rank_; }
    int world() const override { return world_; }
    int local_rank() const override { return local_rank_; }
    int local_world() const override { return local_world_; }
    int hosts() const override { return hosts_; }
    std::string name() const override { return name_; }

    void allreduce_sum(float* data, size_t n) override { sum(data, n, MPI_FLOAT); }
    void allreduce_sum(double* data, size_t n) override { sum(data, n, MPI_DOUBLE); }

    void start_allreduce_sum(float* data, size_t n) override {
        begin_wait();
        for (size_t i = 0; i < n; i += kMaxCount) {
            requests_.push_back(MPI_REQUEST_NULL);
            MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data + i, int(std::min(kMaxCount, n - i)),
                                     MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &requests_.back()));
        }
    }
    void progress() override {
        if (requests_.empty()) return;
        int done = 0;
        MPI_CHECK(MPI_Testall(int(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE));
        if (done) {
            requests_.clear();
            end_wait();
        }
    }
    void wait_all() override {
        if (requests_.empty()) return;
        MPI_CHECK(MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
        requests_.clear();
        end_wait();
    }

    void barrier() override {
        Waiting w(*this);
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    }

    void broadcast(void* data, size_t bytes, int root) override {
        Waiting w(*this);
        char* p = static_cast<char*>(data);
        for (size_t i = 0; i < bytes; i += kMaxCount)
            MPI_CHECK(MPI_Bcast(p + i, int(std::min(kMaxCount, bytes - i)), MPI_BYTE, root,
                                MPI_COMM_WORLD));
    }

    void limit_waits(bool on) override {
        if (world_ == 1 || limit_s_ == 0) return;
        if (on && !watchdog_.joinable()) watchdog_ = std::thread([this] { watch(); });
        limited_.store(on);
        if (!on && requests_.empty()) since_.store(0);
    }

    [[noreturn]] void abort(int status) override {
        std::fflush(stdout);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, status);
        std::_Exit(status);  // MPI_Abort does not return; this is for the compiler
    }

private:
    static int64_t now_ns() {
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
    }
    // (main thread) a wait begins: noted unless an older one is still going (a started sum)
    void begin_wait() {
        if (limited_.load() && since_.load() == 0) since_.store(std::max<int64_t>(1, now_ns()));
    }
    // (main thread) a wait ended: nothing is left to wait for unless started sums are
    void end_wait() {
        if (requests_.empty()) since_.store(0);
    }
    // A blocking collective's wait, also when it throws.
    struct Waiting {
        explicit Waiting(MpiCommunicator& c) : c(c) { c.begin_wait(); }
        ~Waiting() { c.end_wait(); }
        MpiCommunicator& c;
    };

    // (the watchdog thread) every 100 ms until closing_; no MPI call here (FUNNELED)
    void watch() {
        using namespace std::chrono;
        // a wake-up this much later than the 100 ms asked is this process paused, not the wait
        // going on (seconds; less for a limit of a few seconds)
        const nanoseconds late = std::clamp(duration_cast<nanoseconds>(duration<double>(limit_s_ / 4.0)),
                                            nanoseconds(milliseconds(300)), nanoseconds(seconds(5)));
        std::unique_lock<std::mutex> lock(mu_);
        int64_t seen = 0;       // the wait last looked at
        nanoseconds paused{0};  // of it, the time this process was paused
        int64_t last = now_ns();  // the previous wake-up (the gap between two covers any stop)
        while (true) {
            if (wake_.wait_for(lock, milliseconds(100), [this] { return closing_; })) break;
            const int64_t now = now_ns(), since = since_.load();
            const nanoseconds gap(now - last);
            last = now;
            if (!limited_.load() || since == 0) {
                seen = 0, paused = {};
                continue;
            }
            if (since != seen) seen = since, paused = {};
            // the part of a late wake-up after the wait began (at most all of it)
            if (gap > late + milliseconds(100)) paused += std::min(gap, nanoseconds(now - since));
            const double waited = duration<double>(nanoseconds(now - since) - paused).count();
            if (waited > limit_s_) {
                std::fprintf(stderr,
                             "speedrun: error (rank %d of %d): MPI: a collective over the ranks has "
                             "waited %.0f s: another rank is lost, stopped or hung; ending this "
                             "rank (SPEEDRUN_MPI_TIMEOUT sets the limit in seconds, 0 for none)\n",
                             rank_, world_, waited);
                std::fflush(stderr);
                std::_Exit(1);  // (the launcher ends the job)
            }
        }
    }

    template <typename T>
    void sum(T* data, size_t n, MPI_Datatype type) {
        Waiting w(*this);
        for (size_t i = 0; i < n; i += kMaxCount)
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + i, int(std::min(kMaxCount, n - i)), type,
                                    MPI_SUM, MPI_COMM_WORLD));
    }

    bool owns_ = false;
    int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1, hosts_ = 1;
    MPI_Comm local_ = MPI_COMM_NULL;
    std::vector<MPI_Request> requests_;
    std::string name_;
    int limit_s_ = 0;                   // SPEEDRUN_MPI_TIMEOUT; 0: no limit
    std::atomic<bool> limited_{false};  // limit_waits is on
    std::atomic<int64_t> since_{0};     // steady-clock ns when the oldest wait began; 0: none
    std::mutex mu_;
    std::condition_variable wake_;
    bool closing_ = false;              // (mu_)
    std::thread watchdog_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
    return std::make_unique<MpiCommunicator>();
}

}  // namespace sr
#endif  // SPEEDRUN_HAVE_MPI
