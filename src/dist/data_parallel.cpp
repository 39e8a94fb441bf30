// data_parallel.cpp: see data_parallel.h. The reducers for host memory (CPU backend), for
// device memory staged through the host (CUDA without NCCL), and the gradient buckets.
#include "dist/data_parallel.h"

#include <algorithm>
#include <cstdint>

#include <fmt/format.h>

#include "core/env.h"
#include "core/error.h"
#include "dist/sweep.h"

namespace sr {

#if !SPEEDRUN_HAVE_NCCL
std::unique_ptr<DeviceReducer> make_nccl_reducer(Backend&, Communicator&) {  // (nccl_reducer.cpp)
    fail("this build has no NCCL (CMake finds it in CUDA builds that also found MPI)");
}
#endif

namespace {

// One rank: there is nothing to add.
class NoReducer final : public DeviceReducer {
public:
    std::string name() const override { return "nothing (one rank)"; }
    void start(float*, size_t) override {}
    void wait_all() override {}
    void allreduce(float*, size_t) override {}
};

// Host memory (the CPU backend's): the communicator reduces it in place, non-blocking.
class HostReducer final : public DeviceReducer {
public:
    explicit HostReducer(Communicator& c) : c_(c) {}
    std::string name() const override { return c_.name() + ", non-blocking"; }
    void start(float* p, size_t n) override { c_.start_allreduce_sum(p, n); }
    void progress() override { c_.progress(); }
    void wait_all() override { c_.wait_all(); }
    void allreduce(float* p, size_t n) override { c_.allreduce_sum(p, n); }

private:
    Communicator& c_;
};

// Device memory without NCCL: each sum is downloaded (which waits for the GPU), reduced by the
// communicator on the host and uploaded again. Correct everywhere, without overlap.
class StagedReducer final : public DeviceReducer {
public:
    StagedReducer(Backend& b, Communicator& c) : b_(b), c_(c) {}
    std::string name() const override { return c_.name() + ", staged through host memory"; }
    void start(float* p, size_t n) override {
        Pending q{p, std::vector<float>(n)};
        b_.download(q.host.data(), p, n * sizeof(float));
        c_.start_allreduce_sum(q.host.data(), n);
        pending_.push_back(std::move(q));  // moving the vector keeps its buffer where MPI has it
    }
    void progress() override { c_.progress(); }
    void wait_all() override {
        c_.wait_all();
        for (auto& q : pending_) b_.upload(q.dev, q.host.data(), q.host.size() * sizeof(float));
        pending_.clear();  // upload has copied pageable memory before returning (backend.h)
    }
    void allreduce(float* p, size_t n) override {
        std::vector<float> h(n);
        b_.download(h.data(), p, n * sizeof(float));
        c_.allreduce_sum(h.data(), n);
        b_.upload(p, h.data(), n * sizeof(float));
    }

private:
    struct Pending {
        float* dev;
        std::vector<float> host;
    };
    Backend& b_;
    Communicator& c_;
    std::vector<Pending> pending_;
};

bool is_learnable(ParamGroup g) {
    return g == ParamGroup::whiten_bias || g == ParamGroup::weight || g == ParamGroup::bn_bias ||
           g == ParamGroup::bn_scale;
}

}  // namespace

std::pair<int, int> ranks_sharing_a_device(Communicator& comm, const std::string& device_id) {
    // Each rank puts a 48-bit hash of its id (+ 1, so that 0 means "another rank's slot") in its
    // own slot; the sum over the ranks gathers them, exactly (one term per slot).
    std::vector<double> ids(size_t(comm.world()), 0.0);
    ids[size_t(comm.rank())] = double(fnv1a64(device_id) & ((uint64_t(1) << 48) - 1)) + 1.0;
    comm.allreduce_sum(ids.data(), ids.size());
    for (size_t i = 0; i < ids.size(); ++i)
        for (size_t j = i + 1; j < ids.size(); ++j)
            if (ids[i] == ids[j]) return {int(i), int(j)};
    return {-1, -1};
}

std::unique_ptr<DeviceReducer> make_device_reducer(Backend& b, Communicator& comm, bool staged) {
    if (comm.world() == 1) return std::make_unique<NoReducer>();
    enum Kind { host, staged_host, nccl };
    Kind kind = staged ? staged_host : b.device() == Device::cpu ? host : staged_host;
#if SPEEDRUN_HAVE_NCCL
    if (kind == staged_host && !staged && !env_switch("SPEEDRUN_NO_NCCL", false)) kind = nccl;
#endif
    // the ranks' choices, counted. A GPU rank next to CPU ranks would also differ in its warm-up
    // run and storage, so the collectives after this one would not meet either.
    const int on_gpu = count_ranks(comm, b.device() == Device::cuda);
    if (on_gpu > 0 && on_gpu < comm.world())
        fail("data parallel: {} of {} ranks train on a GPU and the others on the CPU (this rank: {}); "
             "give every rank the same device (--device cuda or --device cpu)",
             on_gpu, comm.world(), b.device() == Device::cuda ? "GPU" : "CPU");
    const int with_nccl = count_ranks(comm, kind == nccl);
    if (with_nccl > 0 && with_nccl < comm.world())
        fail(
            "data parallel: {} of {} ranks would sum gradients through NCCL and the others through "
            "host memory, which do not meet (this rank: {}). Give every rank the same device and "
            "the same SPEEDRUN_NO_NCCL (mpirun passes a variable to other hosts only with "
            "-x SPEEDRUN_NO_NCCL)",
            with_nccl, comm.world(), kind == nccl ? "NCCL" : b.device() == Device::cpu ? "CPU" : "host copies");
#if SPEEDRUN_HAVE_NCCL
    if (kind == nccl) return make_nccl_reducer(b, comm);
#endif
    if (kind == host) return std::make_unique<HostReducer>(comm);
    return std::make_unique<StagedReducer>(b, comm);
}

DataParallel::DataParallel(Network& net, Communicator& comm, const Options& o)
    : net_(net),
      comm_(comm),
      sync_bn_(o.sync_bn),
      reducer_(make_device_reducer(net.backend, comm, o.staged)) {
    SR_CHECK(o.bucket_floats > 0);
    ParamGroup group = ParamGroup::buffer;
    for (const TensorSpec& t : net.tensors()) {
        if (!is_learnable(t.group)) continue;
        const bool fresh = buckets_.empty() || t.group != group ||
                           buckets_.back().end != t.offset ||
                           buckets_.back().end - buckets_.back().begin + t.count > o.bucket_floats;
        if (fresh) buckets_.push_back({t.offset, t.offset, 0, 0, false});
        group = t.group;
        buckets_.back().end = t.offset + t.count;
        buckets_.back().tensors++;
        tensor_bucket_.emplace_back(t.offset, int(buckets_.size()) - 1);
    }
    std::sort(tensor_bucket_.begin(), tensor_bucket_.end());
}

DataParallel::~DataParallel() = default;

std::string DataParallel::describe() const {
    size_t largest = 0;
    for (const Bucket& b : buckets_) largest = std::max(largest, b.end - b.begin);
    return fmt::format(
        "{} rank{}; gradient sum in {} buckets (largest {:.2f} MiB) over {}; BN "
        "statistics {}",
        comm_.world(), comm_.world() == 1 ? "" : "s", buckets_.size(),
        largest * sizeof(float) / 1048576.0, reducer_->name(),
        sync_bn_ ? "of the global batch (sync-BN)" : "per rank");
}

void DataParallel::begin_step() {
    for (Bucket& b : buckets_) b.ready = 0, b.started = false;
}

void DataParallel::start(Bucket& b) {
    reducer_->start(net_.grads.get() + b.begin, b.end - b.begin);
    b.started = true;
}

void DataParallel::grad_ready(float* grad, size_t n) {
    const float* base = net_.grads.get();
    SR_CHECK(grad >= base && grad + n <= base + net_.size());
    const size_t off = size_t(grad - base);
    const auto it = std::lower_bound(tensor_bucket_.begin(), tensor_bucket_.end(),
                                     std::pair<size_t, int>(off, -1));
    SR_CHECK(it != tensor_bucket_.end() && it->first == off);
    Bucket& b = buckets_[size_t(it->second)];
    SR_CHECK(!b.started && b.ready < b.tensors);
    if (++b.ready == b.tensors)
        start(b);  // every rank reaches this point in the same order: the sums match up
    else
        reducer_->progress();
}

void DataParallel::finish_step() {
    for (Bucket& b : buckets_) {
        // a bucket never holds tensors of two optimizer groups, so within a bucket either every
        // gradient was computed (the whitening bias in its first epochs) or none
        SR_CHECK(b.ready == 0 || b.ready == b.tensors);
        if (b.ready == b.tensors && !b.started) start(b);
    }
    reducer_->wait_all();
    begin_step();
}

void DataParallel::broadcast_params(int root) {
    if (comm_.world() == 1) return;
    Backend& b = net_.backend;
    host_.resize(net_.size());
    // the weights, and the lookahead/EMA state, which each rank took from its own weights
    // before (equal only where every rank's init computes the same bits: not across GPU models).
    // (The momentum is zero in a fresh run and, resumed, the same file's on every rank: the
    // trainer compares a hash of each rank's checkpoint tensors first.)
    for (float* p : {net_.params.get(), net_.ema.get()}) {
        b.download(host_.data(), p, host_.size() * sizeof(float));
        comm_.broadcast(host_.data(), host_.size() * sizeof(float), root);
        b.upload(p, host_.data(), host_.size() * sizeof(float));
    }
}

void DataParallel::allreduce(float* p, size_t n) { reducer_->allreduce(p, n); }

void DataParallel::allreduce_bn(float* sums, int n) { reducer_->allreduce(sums, size_t(n)); }

}  // namespace sr
