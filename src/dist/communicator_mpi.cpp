// communicator_mpi.cpp: the MPI communicator (builds with SPEEDRUN_HAVE_MPI; see
// communicator.h). MPI starts here (MPI_Init_thread, FUNNELED: only the main thread calls MPI;
// OpenMP threads never do) and ends in the destructor. Errors come back as codes
// (MPI_ERRORS_RETURN) and become sr::Error naming the call and MPI's reason.
#if SPEEDRUN_HAVE_MPI
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <vector>

#include <fmt/format.h>
// the C API only: keep Open MPI's / MPICH's deprecated C++ bindings out
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

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
        if (done) requests_.clear();
    }
    void wait_all() override {
        if (requests_.empty()) return;
        MPI_CHECK(MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
        requests_.clear();
    }

    void barrier() override { MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD)); }

    void broadcast(void* data, size_t bytes, int root) override {
        char* p = static_cast<char*>(data);
        for (size_t i = 0; i < bytes; i += kMaxCount)
            MPI_CHECK(MPI_Bcast(p + i, int(std::min(kMaxCount, bytes - i)), MPI_BYTE, root,
                                MPI_COMM_WORLD));
    }

    [[noreturn]] void abort(int status) override {
        std::fflush(stdout);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, status);
        std::_Exit(status);  // MPI_Abort does not return; this is for the compiler
    }

private:
    template <typename T>
    void sum(T* data, size_t n, MPI_Datatype type) {
        for (size_t i = 0; i < n; i += kMaxCount)
            MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + i, int(std::min(kMaxCount, n - i)), type,
                                    MPI_SUM, MPI_COMM_WORLD));
    }

    bool owns_ = false;
    int rank_ = 0, world_ = 1, local_rank_ = 0, local_world_ = 1, hosts_ = 1;
    MPI_Comm local_ = MPI_COMM_NULL;
    std::vector<MPI_Request> requests_;
    std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
    return std::make_unique<MpiCommunicator>();
}

}  // namespace sr
#endif  // SPEEDRUN_HAVE_MPI
