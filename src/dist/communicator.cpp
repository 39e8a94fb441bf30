// communicator.cpp: the single-process communicator, the choice of communicator from the
// launcher's environment, and run_on_all_ranks (see communicator.h).
#include "dist/communicator.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "core/error.h"

namespace sr {

#if SPEEDRUN_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator();  // communicator_mpi.cpp
#endif

namespace {

class SingleCommunicator final : public Communicator {
public:
    int rank() const override { return 0; }
    int world() const override { return 1; }
    int local_rank() const override { return 0; }
    int local_world() const override { return 1; }
    int hosts() const override { return 1; }
    std::string name() const override { return "single process"; }
    void allreduce_sum(float*, size_t) override {}
    void allreduce_sum(double*, size_t) override {}
    void barrier() override {}
    void broadcast(void*, size_t, int) override {}
    [[noreturn]] void abort(int status) override {
        std::fflush(stdout);
        std::exit(status);
    }
};

int env_int(const char* name) {
    const char* v = std::getenv(name);
    if (!v || !*v) return -1;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    return (end && *end == 0 && x >= 0) ? int(x) : -1;
}

// What the environment says about how this process was started.
struct Launch {
    bool by_launcher = false;  // an MPI launcher (mpirun, mpiexec, srun with PMI)
    bool srun_without_pmi = false;
    int rank = 0, size = 1;  // size -1: not known before MPI starts
    std::string launcher;
};

Launch launch_from_environment() {
    Launch l;
    if (env_int("OMPI_COMM_WORLD_SIZE") >= 1) {  // Open MPI's mpirun (it sets PMIX_RANK too)
        l = {true, false, env_int("OMPI_COMM_WORLD_RANK"), env_int("OMPI_COMM_WORLD_SIZE"),
             "mpirun"};
    } else if (env_int("PMI_SIZE") >= 1) {  // MPICH's mpiexec, srun --mpi=pmi2
        l = {true, false, env_int("PMI_RANK"), env_int("PMI_SIZE"),
             "a PMI launcher (mpiexec, srun --mpi=pmi2)"};
    } else if (env_int("PMIX_RANK") >= 0) {  // srun --mpi=pmix
        l = {true, false, env_int("PMIX_RANK"), -1, "a PMIx launcher (srun --mpi=pmix)"};
    } else if (env_int("SLURM_STEP_NUM_TASKS") > 1 && env_int("SLURM_PROCID") >= 0) {
        l = {false, true, env_int("SLURM_PROCID"), env_int("SLURM_STEP_NUM_TASKS"), "srun"};
    }
    return l;
}

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() {
    return std::make_unique<SingleCommunicator>();
}

bool mpi_compiled() {
#if SPEEDRUN_HAVE_MPI
    return true;
#else
    return false;
#endif
}

bool nccl_compiled() {
#if SPEEDRUN_HAVE_NCCL
    return true;
#else
    return false;
#endif
}

std::unique_ptr<Communicator> make_process_communicator(const std::string& what) {
    const Launch l = launch_from_environment();
    if (l.srun_without_pmi)
        fail(
            "{}: started by srun as task {} of {} without PMI, so the tasks cannot find each "
            "other (each would run everything): use `srun --mpi=pmix ...` (see README, "
            "'Several processes')",
            what, l.rank, l.size);
    if (!l.by_launcher) return make_single_communicator();
#if SPEEDRUN_HAVE_MPI
    return make_mpi_communicator();
#else
    fail(
        "{}: started by {} as rank {}{}, but this build has no MPI: install libopenmpi-dev "
        "(tools/install-deps) and rebuild (CMake then says `MPI ON`)",
        what, l.launcher, l.rank, l.size > 0 ? fmt::format(" of {}", l.size) : std::string());
#endif
}

int count_ranks(Communicator& comm, bool yes) {
    float n = yes ? 1.f : 0.f;  // (exact: a sum of at most 2^24 ones)
    comm.allreduce_sum(&n, 1);
    return int(std::lround(n));
}

int run_on_all_ranks(Communicator& comm, const std::function<int()>& body) {
    try {
        return body();
    } catch (const std::exception& e) {
        if (comm.world() <= 1) throw;
        std::fflush(stdout);
        std::fprintf(stderr, "speedrun: error (rank %d of %d): %s\n", comm.rank(), comm.world(),
                     e.what());
        std::fflush(stderr);
        comm.abort(1);
    }
    std::abort();  // not reached (abort() does not return; GCC does not see that through virtual)
}

}  // namespace sr
