// dist_train.cpp: placing a rank on a device, and `train --distributed` (see dist_commands.h).
#include <algorithm>
#include <cstdio>
#include <thread>

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include "core/error.h"
#include "core/notes.h"
#include "dist/dist_commands.h"

namespace sr {

RankPlacement place_rank(const Communicator& comm, const std::string& device, int threads) {
    if (device != "auto" && device != "cpu" && device != "cuda")
        fail("--device must be auto, cpu or cuda (got '{}')", device);
    RankPlacement p;
    const int gpus = device == "cpu" ? 0 : cuda_device_count();
    if (gpus > 0) {
        p.device = "cuda";
        p.cuda_device = comm.local_rank() % gpus;
        p.threads = threads;
        p.text = fmt::format(
            "GPU {} of {}{}", p.cuda_device, gpus,
            comm.local_world() > gpus && gpus > 1 ? " (more ranks on this host than GPUs: shared)" : "");
        return p;
    }
    if (device == "cuda") {
        std::string why;
        make_cuda_backend(0, &why);
        fail("--device cuda: {}", why);
    }
    p.device = "cpu";
    const int cores = std::max(1, int(std::thread::hardware_concurrency()));
    p.threads = threads > 0 ? threads : std::max(1, cores / comm.local_world());
    p.text = threads > 0 ? fmt::format("CPU, {} threads (--threads)", p.threads)
                         : fmt::format("CPU, {} thread{} ({} cores / {} rank{} on this host)",
                                       p.threads, p.threads == 1 ? "" : "s", cores,
                                       comm.local_world(), comm.local_world() == 1 ? "" : "s");
    return p;
}

int cmd_train_distributed(const TrainArgs& a) {
    if (!mpi_compiled())
        fail(
            "--distributed: this build has no MPI, so data-parallel training is unavailable "
            "(install libopenmpi-dev openmpi-bin, i.e. tools/install-deps, and rebuild)");
    auto comm = make_process_communicator("train --distributed");
    return run_on_all_ranks(*comm, [&] {
        TrainArgs b = a;
        b.comm = comm.get();
        const RankPlacement pl = place_rank(*comm, a.device, a.threads);
        b.device = pl.device;
        b.threads = pl.threads;
        b.cuda_device = pl.cuda_device;
        if (comm->root()) {
            if (comm->world() == 1)
                fmt::print("note: --distributed without mpirun or srun: one rank\n");
            fmt::print(
                "distributed   {}; each rank {} of the batch; BN statistics {}; rank 0: {}\n",
                comm->name(), comm->world() == 1 ? "all" : fmt::format("1/{}", comm->world()),
                a.sync_bn ? "global (--sync-bn)" : "per rank", pl.text);
            std::fflush(stdout);
        } else {  // only rank 0 prints notes and output and writes files
            set_notes_quiet(true);
            b.summary_json.clear();
            b.log.clear();
            b.plot.clear();
            b.dawnbench.clear();
            std::fflush(stdout);
            const int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (fd >= 0) {
                ::dup2(fd, STDOUT_FILENO);
                ::close(fd);
            }
        }
        return cmd_train(b);
    });
}

}  // namespace sr
