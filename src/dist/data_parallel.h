// data_parallel.h: data-parallel training over the ranks of a Communicator (issue 9): the
// gradient all-reduce (bucketed, started while the backward pass goes on) and sync-BN, as the
// WorkspaceHooks of one training Workspace.
//
// Each rank holds the same weights and runs its own slice of every global batch. The loss of
// this recipe is SUMMED over the batch (Backend::cross_entropy), not averaged, so the gradient
// of the full batch is the SUM over ranks of the per-slice gradients: the all-reduce sums and
// nothing divides by the number of ranks. (PyTorch DDP averages because its loss is a mean over
// the slice; the two are the same update.) Every rank then applies the same optimizer step to the
// same weights, so the weights stay equal without being sent again.
//
// BN statistics are per rank by default (as DDP): each rank normalises its slice by the slice's
// statistics and keeps its own running statistics (only rank 0's are used: it alone evaluates).
// With sync_bn they are those of the global batch: Workspace calls allreduce_bn on its
// per-channel sums (network.cpp), and the result equals one process on the full batch.
//
// Memory: the CPU backend's memory is host memory, reduced by the Communicator directly
// (MPI_Iallreduce, moved on at every gradient-ready point). On CUDA, NCCL reduces device memory on
// a second stream ordered by events (true overlap with backward), in builds that have NCCL; without
// it, each bucket is staged through host memory (correct, slower).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "model/network.h"

namespace sr {

// Sums device memory of one backend over the ranks (data_parallel.cpp, nccl_reducer.cpp).
class DeviceReducer {
public:
    virtual ~DeviceReducer() = default;
    virtual std::string name() const = 0;
    // Starts summing n floats at p; p is left alone by the caller until wait_all().
    virtual void start(float* p, size_t n) = 0;
    virtual void progress() {}
    // Every started sum is in place for the backend's next op.
    virtual void wait_all() = 0;
    // p := the sum, in place, before the backend's next op.
    virtual void allreduce(float* p, size_t n) = 0;
};

// The reducer for this backend: NCCL for CUDA memory when compiled (and not disabled by
// SPEEDRUN_NO_NCCL=1), else the communicator on host memory (staged for CUDA memory). staged:
// through host copies whatever the memory (what a CUDA build without NCCL does; for tests).
// Every rank must have the same device and choose the same kind (NCCL and host sums do not
// meet): ranks that disagree (--device auto on hosts with and without GPUs, SPEEDRUN_NO_NCCL set
// on some hosts only) are an error on every rank, not a hang.
std::unique_ptr<DeviceReducer> make_device_reducer(Backend& b, Communicator& comm,
                                                   bool staged = false);

// NCCL's reducer itself, whatever the number of ranks (with one its sums are copies): for a
// test that runs it on one GPU. Fails in builds without NCCL and for a backend without a CUDA
// stream.
std::unique_ptr<DeviceReducer> make_nccl_reducer(Backend& b, Communicator& comm);

// Two ranks of the job whose device ids (e.g. a GPU's UUID) are equal, as {lower, higher}, or
// {-1, -1} when every rank's differs. A collective. NCCL needs a GPU of its own for each rank;
// comparing ids, not counts, accepts launchers that show each rank only its own GPU (Slurm's
// --gpus-per-task=1) and refuses two ranks on one GPU however it is numbered.
std::pair<int, int> ranks_sharing_a_device(Communicator& comm, const std::string& device_id);

class DataParallel final : public WorkspaceHooks {
public:
    struct Options {
        bool sync_bn = false;
        // Gradient bucket size: tensors (in arena order, never across optimizer groups) are
        // grouped into buckets up to this many floats; a bucket's sum starts as soon as all its
        // tensors' gradients are final.
        size_t bucket_floats = size_t(1) << 19;  // 2 MiB
        bool staged = false;  // sums through host copies (make_device_reducer; for tests)
    };
    DataParallel(Network& net, Communicator& comm, const Options& o);
    ~DataParallel() override;

    Communicator& comm() { return comm_; }
    // One line for the recipe table: ranks, buckets, reducer, BN mode.
    std::string describe() const;

    // Before each backward pass: no bucket is ready.
    void begin_step();
    // After the backward pass: starts what is left and waits; net.grads then holds, for every
    // tensor whose gradient backward computed, the sum over the ranks.
    void finish_step();
    // net.params and net.ema := rank root's (all ranks start a run from the same weights and
    // lookahead state).
    void broadcast_params(int root = 0);
    // n floats of this backend's memory := their sum over the ranks (e.g. epoch statistics).
    void allreduce(float* p, size_t n);

    // WorkspaceHooks
    int bn_group() const override { return sync_bn_ ? comm_.world() : 1; }
    void allreduce_bn(float* sums, int n) override;
    void grad_ready(float* grad, size_t n) override;

private:
    struct Bucket {
        size_t begin = 0, end = 0;  // floats, in the arena
        int tensors = 0;            // how many tensors it holds
        int ready = 0;              // of them, final this step
        bool started = false;
    };
    void start(Bucket& b);

    Network& net_;
    Communicator& comm_;
    bool sync_bn_;
    std::unique_ptr<DeviceReducer> reducer_;
    std::vector<Bucket> buckets_;
    std::vector<std::pair<size_t, int>> tensor_bucket_;  // (offset, bucket), sorted by offset
    std::vector<float> host_;                            // broadcast staging
};

}  // namespace sr
