// communicator.h: the processes of one distributed job and the few collectives the project
// needs (issue 9). Two implementations: a single process (every collective is a no-op), and MPI
// (communicator_mpi.cpp, in builds that found MPI). GPU memory is reduced by a DeviceReducer
// (data_parallel.cpp: NCCL where the CUDA build found it); a Communicator takes host memory only.
//
// Rules for callers: every rank calls the collectives in the same order, and a rank that fails
// must call abort() (run_on_all_ranks does), or the others wait forever in the next collective.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace sr {

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int world() const = 0;
    virtual int local_rank() const = 0;    // rank among the processes of this host (GPU choice)
    virtual int local_world() const = 0;   // processes on this host
    virtual int hosts() const = 0;         // distinct hosts in the job
    virtual std::string name() const = 0;  // e.g. "MPI (Open MPI v4.1.4), 2 ranks on 1 host"
    bool root() const { return rank() == 0; }

    // data (n values, host memory) := the sum over all ranks, in place.
    virtual void allreduce_sum(float* data, size_t n) = 0;
    virtual void allreduce_sum(double* data, size_t n) = 0;
    // Non-blocking sum: starts it and returns; data must be left alone until wait_all() returns.
    // progress() lets started sums move on (MPI moves only inside its own calls). The default
    // is the blocking sum.
    virtual void start_allreduce_sum(float* data, size_t n) { allreduce_sum(data, n); }
    virtual void progress() {}
    virtual void wait_all() {}
    virtual void barrier() = 0;
    // bytes at data (host memory) := root's.
    virtual void broadcast(void* data, size_t bytes, int root) = 0;
    // Ends every rank of the job at once with this exit status (after the caller printed why).
    [[noreturn]] virtual void abort(int status) = 0;
    // While on, a rank that has waited in one of these collectives (a blocking one, or a started
    // sum not yet done) for more than SPEEDRUN_MPI_TIMEOUT seconds (1800 unless set, PyTorch's
    // limit for its host collectives; 0: none) ends itself with a message, and the launcher then
    // ends the job: a rank lost without an error (stopped, hung) no longer leaves the others
    // waiting forever. A pause of this whole process (SIGSTOP, a suspended job) does not count.
    // For stretches where every rank runs the same steps (training: LimitedWaits); start-up, a
    // sweep's ranks and what rank 0 does alone (evaluating, saving) wait for each other
    // legitimately, and the trainer takes the limit off there.
    virtual void limit_waits(bool on) { (void)on; }
};

// The collectives of its lifetime are time-limited (Communicator::limit_waits); none when null.
class LimitedWaits {
public:
    explicit LimitedWaits(Communicator* c) : c_(c) {
        if (c_) c_->limit_waits(true);
    }
    ~LimitedWaits() {
        if (c_) c_->limit_waits(false);
    }
    LimitedWaits(const LimitedWaits&) = delete;
    LimitedWaits& operator=(const LimitedWaits&) = delete;

private:
    Communicator* c_;
};

// How many ranks pass yes = true: a collective (every rank calls it, in the same order).
int count_ranks(Communicator& comm, bool yes);

// Rank 0 of 1.
std::unique_ptr<Communicator> make_single_communicator();

bool mpi_compiled();   // this build has MPI (SPEEDRUN_HAVE_MPI)
bool nccl_compiled();  // this build has NCCL (SPEEDRUN_HAVE_NCCL; CUDA builds only)

// The communicator of this process. MPI when a launcher started it (mpirun / mpiexec, or srun
// with PMI: the launcher's environment says so), else a single process. `what` names the
// command or flag that asks, for the messages: a launched process in a build without MPI, or
// srun without PMI (n copies that would each run everything), is an error naming it.
std::unique_ptr<Communicator> make_process_communicator(const std::string& what);

// Runs body on every rank. An exception on one rank is printed as "speedrun: error (rank r of
// n): ..." and ends the whole job (abort) when there are several ranks, since the others would
// wait forever in their next collective; with one rank it propagates as usual.
int run_on_all_ranks(Communicator& comm, const std::function<int()>& body);

}  // namespace sr
