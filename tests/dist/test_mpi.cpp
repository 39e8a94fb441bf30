// test_mpi.cpp: the commands of issue 9 run as programs: the built `speedrun` (SPEEDRUN_BINARY)
// under `mpirun -np 2 --mca btl tcp,self` (TCP even between ranks of one host, so the network
// path is what runs), with the synthetic set and a tiny network, a few seconds each:
//   - a 2-rank sweep of 4 jobs writes 4 lines and the summary;
//   - a rank killed (SIGKILL) mid-sweep: a restart with the same file runs only what is missing;
//   - `dist-check --sync-bn`: a 2-rank data-parallel step equals one process on the full batch;
//   - `train --distributed --sync-bn` trains as one process on the global batch does, and only
//     rank 0 prints;
//   - SIGINT to one rank of `train --distributed` stops both after the same step, and saves;
//   - SIGSTOP to one rank ends the job after SPEEDRUN_MPI_TIMEOUT seconds, with a message; a
//     pause of both ranks longer than that, or one rank's with no limit, does not.
// Without MPI in the build they are skipped (saying so), except the one-process sweep.
#include <cmath>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/version.h"
#include "dist/sweep.h"

namespace sr {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

// the tiny job every test runs: 1024 synthetic images, batch 128 (8 steps an epoch), widths
// 8/16/16, on the CPU (also in a CUDA build: two ranks on one GPU could not use NCCL)
const std::vector<std::string> kTiny = {"--device",
                                        "cpu",
                                        "--synthetic",
                                        "--set",
                                        "net.widths=[8,16,16]",
                                        "--set",
                                        "opt.batch_size=128",
                                        "--subset",
                                        "1024",
                                        "--test-subset",
                                        "256",
                                        "--no-download"};

fs::path temp_dir(const std::string& name) {
    const fs::path d =
        fs::temp_directory_path() / ("speedrun-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

std::vector<std::string> mpirun(int np) {
#if SPEEDRUN_HAVE_MPI
    // ASAN_OPTIONS: in a sanitizer build (SPEEDRUN_SANITIZE), LeakSanitizer would fail every rank
    // at exit over what Open MPI keeps allocated after MPI_Finalize; leaks of our own code are
    // found by the in-process tests.
    return {SPEEDRUN_MPIEXEC,
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            std::to_string(np),
            "--mca",
            "btl",
            "tcp,self",
            "-x",
            "ASAN_OPTIONS=detect_leaks=0"};
#else
    (void)np;
    return {};
#endif
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

// A child process in its own process group, output to a file.
struct Child {
    pid_t pid = -1;
    std::string log;
};

Child spawn(const std::vector<std::string>& argv, const std::string& log) {
    Child c{-1, log};
    std::fflush(stdout);  // else the child's freopen writes this process's buffer a second time
    c.pid = ::fork();
    if (c.pid == 0) {
        ::setpgid(0, 0);
        FILE* f = std::freopen(log.c_str(), "w", stdout);
        (void)f;
        ::dup2(STDOUT_FILENO, STDERR_FILENO);
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        std::perror("execvp");
        ::_exit(127);
    }
    ::setpgid(c.pid, c.pid);
    return c;
}

// Waits up to timeout; then kills the whole group. Exit status, or -signal, or -1000 on timeout.
int wait_for(const Child& c, std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
        int st = 0;
        const pid_t r = ::waitpid(c.pid, &st, WNOHANG);
        if (r == c.pid) {
            ::kill(-c.pid, SIGKILL);  // anything of this test's process group still around
            return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
        }
        if (std::chrono::steady_clock::now() > end) {
            ::kill(-c.pid, SIGKILL);
            ::waitpid(c.pid, &st, 0);
            return -1000;
        }
        std::this_thread::sleep_for(20ms);
    }
}

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

int run(const std::vector<std::string>& argv, const std::string& log, int timeout_s = 180) {
    return wait_for(spawn(argv, log), std::chrono::seconds(timeout_s));
}

// The pids of the direct children of pid (the ranks, for mpirun).
std::vector<pid_t> children_of(pid_t pid) {
    std::vector<pid_t> out;
    for (const auto& e : fs::directory_iterator("/proc")) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::ifstream f(e.path() / "stat");
        std::string stat;
        std::getline(f, stat);
        const auto close = stat.rfind(')');
        if (close == std::string::npos) continue;
        std::istringstream rest(stat.substr(close + 2));
        char state;
        pid_t ppid;
        if (rest >> state >> ppid && ppid == pid) out.push_back(pid_t(std::stoi(name)));
    }
    return out;
}

size_t count_lines(const std::string& path) { return read_results(path).lines.size(); }

// (setting, seed) -> how many lines
std::map<std::pair<std::string, uint64_t>, int> jobs_in(const std::string& path) {
    std::map<std::pair<std::string, uint64_t>, int> m;
    for (const auto& l : read_results(path).lines)
        m[{l["fingerprint"].get<std::string>(), l["seed"].get<uint64_t>()}]++;
    return m;
}

#define SKIP_WITHOUT_MPI()                                                                   \
    do {                                                                                     \
        if (!SPEEDRUN_HAVE_MPI_FLAG)                                                         \
            GTEST_SKIP() << "this build has no MPI (install libopenmpi-dev openmpi-bin and " \
                            "reconfigure)";                                                  \
    } while (0)
#if SPEEDRUN_HAVE_MPI
constexpr bool SPEEDRUN_HAVE_MPI_FLAG = true;
#else
constexpr bool SPEEDRUN_HAVE_MPI_FLAG = false;
#endif

// 2 ranks, 4 jobs (2 settings x 2 seeds): 4 lines, each job once, the summary by setting.
TEST(Mpi, SweepOfFourJobsOnTwoRanks) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("sweep2");
    const std::string results = (dir / "r.jsonl").string(), log = (dir / "log").string();
    const int rc =
        run(mpirun(2) +
                std::vector<std::string>{SPEEDRUN_BINARY, "sweep", "--runs", "2", "--grid",
                                         "opt.lr=10,12", "--epochs", "1", "--results", results} +
                kTiny,
            log);
    const std::string out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    const auto jobs = jobs_in(results);
    EXPECT_EQ(jobs.size(), 4u) << out;
    for (const auto& [job, n] : jobs) EXPECT_EQ(n, 1) << job.first << " seed " << job.second;
    std::set<int> ranks;
    for (const auto& l : read_results(results).lines) ranks.insert(l["rank"].get<int>());
    EXPECT_EQ(ranks, (std::set<int>{0, 1})) << "both ranks should have run jobs";
    const auto summary = nlohmann::json::parse(slurp((dir / "r.summary.json").string()));
    ASSERT_EQ(summary["settings"].size(), 2u);
    for (const auto& s : summary["settings"]) EXPECT_EQ(s["n"], 2);
    EXPECT_EQ(summary["ranks"], 2);
    EXPECT_NE(out.find("opt.lr=12"), std::string::npos) << out;  // the table
    fs::remove_all(dir);
}

// A rank SIGKILLed mid-sweep ends the job (mpirun takes the other rank down); the file keeps
// the finished runs; the same command again runs only the missing ones: every job exactly once.
TEST(Mpi, SweepRestartAfterAKilledRankRunsOnlyTheRest) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("sweepkill");
    const std::string results = (dir / "r.jsonl").string();
    // 4 jobs of 2 epochs: long enough that the kill lands while the second ones run
    const auto cmd = mpirun(2) +
                     std::vector<std::string>{SPEEDRUN_BINARY, "sweep", "--runs",    "4",
                                              "--epochs",      "2",     "--results", results} +
                     kTiny;
    const Child c = spawn(cmd, (dir / "log1").string());
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (count_lines(results) < 1 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    const size_t before = count_lines(results);
    ASSERT_GE(before, 1u) << "no run finished in 120 s:\n" << slurp((dir / "log1").string());
    const auto ranks = children_of(c.pid);
    ASSERT_FALSE(ranks.empty()) << "no rank process found under mpirun";
    ::kill(ranks.back(), SIGKILL);
    const int rc1 = wait_for(c, 60s);
    EXPECT_NE(rc1, 0) << "mpirun should report the killed rank";
    const size_t kept = count_lines(results);
    ASSERT_LT(kept, 4u) << "every run had finished before the kill: nothing left to restart";
    std::printf("[ result ] %zu of 4 runs finished before a rank was killed\n", kept);

    const int rc2 = run(cmd, (dir / "log2").string());
    const std::string out2 = slurp((dir / "log2").string());
    ASSERT_EQ(rc2, 0) << out2;
    EXPECT_NE(out2.find(std::to_string(kept) + " finished already (skipped), " +
                        std::to_string(4 - kept) + " to run"),
              std::string::npos)
        << out2;
    const auto jobs = jobs_in(results);
    EXPECT_EQ(jobs.size(), 4u);
    for (const auto& [job, n] : jobs)
        EXPECT_EQ(n, 1) << "seed " << job.second << " ran " << n << " times";
    fs::remove_all(dir);
}

// One data-parallel step (2 steps, so momentum is in it) over TCP, sync-BN: gradients and
// weights equal one process on the full batch to 1e-3 of each tensor's rms (the tolerance of
// test_data_parallel.cpp, with its reasoning), and both ranks hold the same weights exactly.
TEST(Mpi, DataParallelStepEqualsOneProcessOnTheFullBatch) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("distcheck");
    const std::string log = (dir / "log").string();
    const int rc =
        run(mpirun(2) + std::vector<std::string>{SPEEDRUN_BINARY, "dist-check", "--device", "cpu",
                                                 "--sync-bn", "--steps", "2", "--tolerance", "1e-3",
                                                 "--set", "net.widths=[8,16,16]", "--set",
                                                 "opt.batch_size=64"},
            log);
    const std::string out = slurp(log);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("dist-check: PASS"), std::string::npos) << out;
    std::printf("%s", out.substr(out.find("gradients      worst")).c_str());
    fs::remove_all(dir);
}

// The same check without sync-BN (per-rank statistics): the sum of the slices' gradients.
TEST(Mpi, DataParallelStepPerRankBn) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("distcheck2");
    const std::string log = (dir / "log").string();
    const int rc =
        run(mpirun(2) + std::vector<std::string>{SPEEDRUN_BINARY, "dist-check", "--device", "cpu",
                                                 "--set", "net.widths=[8,16,16]", "--set",
                                                 "opt.batch_size=64"},
            log);
    const std::string out = slurp(log);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("dist-check: PASS"), std::string::npos) << out;
    fs::remove_all(dir);
}

// Presets whose optimizer is not plain SGD (hiverge's Muon, tricks10's Nesterov with ghost BN):
// dist-check runs the recipe's own update at its schedule's peak step (it refused them before).
TEST(Mpi, DataParallelStepOfMuonAndGhostBnPresets) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("distcheck3");
    const std::string log = (dir / "log").string();
    for (const auto& [preset, widths, batch] : {std::tuple<std::string, std::string, std::string>{"hiverge", "[8,16,16]", "64"},
                                                {"tricks10", "[8,8,16,16]", "48"}}) {
        const int rc = run(mpirun(2) + std::vector<std::string>{SPEEDRUN_BINARY, "dist-check", "--device", "cpu", "--preset",
                                                                preset, "--set", "net.widths=" + widths, "--batch-size",
                                                                batch, "--steps", "2", "--threads", "1"},
                           log);
        const std::string out = slurp(log);
        EXPECT_EQ(rc, 0) << preset << ":\n" << out;
        EXPECT_NE(out.find("dist-check: PASS"), std::string::npos) << preset << ":\n" << out;
    }
    fs::remove_all(dir);
}

// train --distributed --sync-bn: two epochs on 2 ranks; rank 0 alone prints the table and writes
// the summary; its losses and accuracy are those of one process on the global batch.
TEST(Mpi, TrainDistributedOnlyRankZeroReports) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("traindist");
    const std::string log = (dir / "log").string(), summary = (dir / "s.json").string();
    const int rc =
        run(mpirun(2) +
                std::vector<std::string>{SPEEDRUN_BINARY, "train", "--distributed", "--sync-bn",
                                         "--deterministic", "--epochs", "2", "--summary-json", summary} +
                kTiny,
            log);
    const std::string out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    size_t summaries = 0;
    for (size_t at = 0; (at = out.find("summary: n=", at)) != std::string::npos; ++at) ++summaries;
    EXPECT_EQ(summaries, 1u) << "only rank 0 reports:\n" << out;
    EXPECT_NE(out.find("distributed   MPI"), std::string::npos) << out;
    const auto j = nlohmann::json::parse(slurp(summary));
    ASSERT_EQ(j["runs"].size(), 1u);
    const auto& ep = j["runs"][0]["epochs"];
    ASSERT_EQ(ep.size(), 2u);
    EXPECT_LT(ep[1]["train_loss"].get<double>(), ep[0]["train_loss"].get<double>()) << out;
    EXPECT_LT(ep[1]["train_loss"].get<double>(), std::log(10.0)) << out;
    // the run of one process with the same global batch (sync-BN: the same statistics) ends
    // where the two ranks end, to rounding: the loss is the global batch's and the weights
    // rank 0 evaluates are the trained ones (chance, an untrained net, is 0.1)
    const std::string one = (dir / "one.json").string();
    // (--deterministic on both: the same convolution paths, not each process's fastest by timing)
    ASSERT_EQ(run(std::vector<std::string>{SPEEDRUN_BINARY, "train", "--deterministic", "--epochs", "2",
                                           "--summary-json", one} + kTiny,
                  (dir / "one.log").string()), 0) << slurp((dir / "one.log").string());
    const auto j1 = nlohmann::json::parse(slurp(one));
    const auto& ep1 = j1["runs"][0]["epochs"];
    for (int e = 0; e < 2; ++e)
        EXPECT_NEAR(ep[e]["train_loss"].get<double>(), ep1[e]["train_loss"].get<double>(),
                    1e-5 * ep1[e]["train_loss"].get<double>()) << "epoch " << e;
    EXPECT_GT(j["runs"][0]["test_accuracy_tta"].get<double>(), 0.2);
    EXPECT_NEAR(j["runs"][0]["test_accuracy_tta"].get<double>(), j1["runs"][0]["test_accuracy_tta"].get<double>(),
                1.5 / 256) << "more than one of the 256 test images classified otherwise";
    fs::remove_all(dir);
}

// A note every rank would make (here: more threads than cores) is said once, by rank 0.
TEST(Mpi, TrainDistributedNotesComeFromRankZeroOnly) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("distnotes");
    const std::string log = (dir / "log").string();
    const std::string threads = std::to_string(std::max(1u, std::thread::hardware_concurrency()) + 1);
    const int rc = run(mpirun(2) + std::vector<std::string>{SPEEDRUN_BINARY, "train", "--distributed", "--epochs",
                                                            "1", "--no-epoch-eval", "--threads", threads} +
                           kTiny,
                       log);
    const std::string out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    const std::string note = "speedrun: note: --threads " + threads + " is more than the";
    size_t notes = 0;
    for (size_t at = 0; (at = out.find(note, at)) != std::string::npos; ++at) ++notes;
    EXPECT_EQ(notes, 1u) << out;
    fs::remove_all(dir);
}

// SIGINT to one rank only (a signal reaches the ranks at different moments): every rank stops
// after the same step, and rank 0 saves the checkpoint. Before, the signalled rank stopped alone
// and the job hung (checked): rank 0 waited in the next step's gradient sum, nothing saved.
TEST(Mpi, TrainDistributedSigintToOneRankStopsEveryRankAndSaves) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("distsigint");
    const std::string log = (dir / "log").string(), ckpt = (dir / "run.safetensors").string();
    // 200 epochs of 8 steps: far longer than the test waits
    const Child c = spawn(mpirun(2) + std::vector<std::string>{SPEEDRUN_BINARY, "train", "--distributed",
                                                               "--epochs", "200", "--checkpoint", ckpt} +
                              kTiny,
                          log);
    struct EndJob {  // (an ASSERT below returns before wait_for: the 200 epochs must not run on)
        pid_t pid;
        ~EndJob() { ::kill(-pid, SIGKILL); }
    } end_job{c.pid};
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (slurp(log).find("\n    1 |") == std::string::npos && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    ASSERT_NE(slurp(log).find("\n    1 |"), std::string::npos) << "training did not start in 120 s:\n" << slurp(log);
    const auto ranks = children_of(c.pid);
    ASSERT_EQ(ranks.size(), 2u) << "rank processes under mpirun";
    ::kill(ranks.back(), SIGINT);
    const int rc = wait_for(c, 60s);
    const std::string out = slurp(log);
    ASSERT_NE(rc, -1000) << "still running 60 s after the signal:\n" << out;
    const std::string stop = "interrupted: stopped after step ";
    std::vector<std::string> steps;  // each rank's "S of T"
    for (size_t at = 0; (at = out.find(stop, at)) != std::string::npos; ++at)
        steps.push_back(out.substr(at + stop.size(), out.find(';', at) - at - stop.size()));
    ASSERT_EQ(steps.size(), 2u) << "both ranks stop:\n" << out;
    EXPECT_EQ(steps[0], steps[1]) << "after the same step:\n" << out;
    EXPECT_NE(out.find("; resume with --resume"), std::string::npos) << out;
    EXPECT_TRUE(fs::exists(ckpt)) << out;
    std::printf("[ result ] exit status %d; both ranks stopped after step %s\n", rc, steps[0].c_str());
    fs::remove_all(dir);
}

// An error of rank 0 alone in a later run of --runs N (here its periodic checkpoint cannot be
// written: the file's name was taken by a folder after the start's checks) ends the job, the
// finished run reported. Rank 0 returned and waited in MPI_Finalize while rank 1 waited for it in
// the run's next barrier, which has no time limit: the job hung.
TEST(Mpi, TrainDistributedErrorOfOneRankInALaterRunEndsTheJob) {
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("distlater");
    const std::string log = (dir / "log").string(), ckpt = (dir / "ck.safetensors").string();
    // runs of 4 epochs of 8 steps, saved at step 16 of each
    const Child c = spawn(mpirun(2) + std::vector<std::string>{SPEEDRUN_BINARY, "train", "--distributed", "--runs", "3",
                                                               "--epochs", "4", "--checkpoint", ckpt,
                                                               "--checkpoint-every", "16"} +
                              kTiny,
                          log);
    struct EndJob {  // (an ASSERT below returns before wait_for)
        pid_t pid;
        ~EndJob() { ::kill(-pid, SIGKILL); }
    } end_job{c.pid};
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (slurp(log).find("run 2 of 3") == std::string::npos && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(2ms);
    ASSERT_NE(slurp(log).find("run 2 of 3"), std::string::npos) << "run 2 did not start in 120 s:\n" << slurp(log);
    fs::create_directories(dir / "ck.seed1.safetensors");  // run 2's checkpoint (seed 1)
    const int rc = wait_for(c, 60s);
    const std::string out = slurp(log);
    ASSERT_NE(rc, -1000) << "still running 60 s after rank 0's error:\n" << out;
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find("ck.seed1.safetensors"), std::string::npos) << out;
    EXPECT_NE(out.find("speedrun: error (rank 0 of 2)"), std::string::npos) << out;
    EXPECT_NE(out.find("summary of the 1 finished run of 3"), std::string::npos) << "run 1 reported:\n" << out;
    fs::remove_all(dir);
}

TEST(Mpi, AMissingDataSetIsDownloadedByRankZeroAlone) {
    // No data anywhere and a mirror that fails: rank 0 tries first and its error ends the job;
    // the other rank never starts a download of its own (each rank downloaded at once before);
    // train --distributed and sweep alike
    SKIP_WITHOUT_MPI();
    const fs::path dir = temp_dir("download");
    const fs::path cwd = dir / "a" / "b";  // (no ../shared/data from there)
    fs::create_directories(cwd);
    const std::string log = (dir / "log").string();
    const std::string url = "file:///speedrun-no-such-mirror/cifar-10-binary.tar.gz";
    for (const auto& command : {std::vector<std::string>{"train", "--distributed", "--device", "cpu"},
                                std::vector<std::string>{"sweep", "--runs", "2", "--device", "cpu", "--results",
                                                         (dir / "r.jsonl").string()}}) {
        SCOPED_TRACE(command[0]);
        const Child c = spawn(mpirun(2) +
                                  std::vector<std::string>{"-wdir", cwd.string(), "-x", "CIFAR10_DIR=", "-x",
                                                           "XDG_CACHE_HOME=" + (dir / "cache").string(), "-x",
                                                           "SPEEDRUN_CIFAR10_URL=" + url, SPEEDRUN_BINARY} +
                                  command,
                              log);
        const int rc = wait_for(c, 60s);
        const std::string out = slurp(log);
        ASSERT_NE(rc, -1000) << "still running after 60 s:\n" << out;
        EXPECT_NE(rc, 0) << out;
        size_t downloads = 0;
        for (size_t at = out.find("downloading " + url + " to"); at != std::string::npos;
             at = out.find("downloading " + url + " to", at + 1))
            ++downloads;
        EXPECT_EQ(downloads, 1u) << out;
        EXPECT_NE(out.find("speedrun: error (rank 0 of 2): downloading " + url + " failed"), std::string::npos)
            << out;
    }
    fs::remove_all(dir);
}

// A data-parallel job of 200 epochs (far longer than a test waits) with SPEEDRUN_MPI_TIMEOUT set;
// returns once epoch 1 is printed (training goes on), or fails.
struct DistJob {
    fs::path dir;
    std::string log;
    Child c;
    ~DistJob() { ::kill(-c.pid, SIGKILL); }  // (an ASSERT returns before wait_for)
};
void start_dist_job(DistJob& job, const std::string& name, const std::string& limit, int epochs = 200) {
    job.dir = temp_dir(name);
    job.log = (job.dir / "log").string();
    job.c = spawn(mpirun(2) + std::vector<std::string>{"-x", "SPEEDRUN_MPI_TIMEOUT=" + limit, SPEEDRUN_BINARY,
                                                       "train", "--distributed", "--epochs",
                                                       std::to_string(epochs)} +
                      kTiny,
                  job.log);
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (slurp(job.log).find("\n    1 |") == std::string::npos && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    ASSERT_NE(slurp(job.log).find("\n    1 |"), std::string::npos)
        << "training did not start in 120 s:\n" << slurp(job.log);
}

const char* const kWaitedTooLong = "MPI: a collective over the ranks has waited ";

// One rank stopped (SIGSTOP: alive, so the launcher sees nothing wrong) left the other waiting in
// its next collective forever. With a 2 s limit the waiting rank ends itself, saying why, and the
// launcher ends the job.
TEST(Mpi, TrainDistributedEndsWhenARankStops) {
    SKIP_WITHOUT_MPI();
    DistJob job;
    ASSERT_NO_FATAL_FAILURE(start_dist_job(job, "diststop", "2"));
    const auto ranks = children_of(job.c.pid);
    ASSERT_EQ(ranks.size(), 2u) << "rank processes under mpirun";
    const auto stopped = std::chrono::steady_clock::now();
    ::kill(ranks.back(), SIGSTOP);
    const int rc = wait_for(job.c, 60s);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
    const std::string out = slurp(job.log);
    ASSERT_NE(rc, -1000) << "still running 60 s after a rank stopped:\n" << out;
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find(kWaitedTooLong), std::string::npos) << out;
    EXPECT_NE(out.find("SPEEDRUN_MPI_TIMEOUT"), std::string::npos) << out;
    EXPECT_GE(took, 2.0) << "ended before the limit:\n" << out;
    std::printf("[ result ] exit status %d, %.1f s after the rank stopped\n", rc, took);
    fs::remove_all(job.dir);
}

// What must not end a job: the whole job paused (both ranks stopped, as a suspended Slurm job is)
// for longer than the limit, and a limit of 0 (none) with one rank stopped for a while.
void expect_pause_survived(const std::string& name, const std::string& limit, bool every_rank) {
    DistJob job;
    ASSERT_NO_FATAL_FAILURE(start_dist_job(job, name, limit, 8));
    const auto ranks = children_of(job.c.pid);
    ASSERT_EQ(ranks.size(), 2u) << "rank processes under mpirun";
    for (size_t i = every_rank ? 0 : 1; i < ranks.size(); ++i) ::kill(ranks[i], SIGSTOP);
    std::this_thread::sleep_for(7s);
    for (pid_t r : ranks) ::kill(r, SIGCONT);
    const int rc = wait_for(job.c, 120s);
    const std::string out = slurp(job.log);
    ASSERT_NE(rc, -1000) << "still running 120 s later:\n" << out;
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out.find(kWaitedTooLong), std::string::npos) << out;
    EXPECT_NE(out.find("summary: n="), std::string::npos) << "the run ends as usual:\n" << out;
    fs::remove_all(job.dir);
}

TEST(Mpi, TrainDistributedGoesOnAfterTheWholeJobWasPaused) {
    SKIP_WITHOUT_MPI();
    expect_pause_survived("distpause", "3", true);
}

TEST(Mpi, TrainDistributedWithoutLimitWaitsForAStoppedRank) {
    SKIP_WITHOUT_MPI();
    expect_pause_survived("distnolimit", "0", false);
}

// A run whose loss becomes non-finite (lr 1e30) is recorded as diverged, the sweep goes on and
// its summary counts it; a restart does not run it again. A sweep that cannot keep its results
// apart is refused before it runs: the summary and the results as one file, settings that train
// one recipe, a results "file" that is a device.
TEST(Sweep, ADivergedRunIsRecordedAndWhatCannotBeKeptApartIsRefused) {
    const fs::path dir = temp_dir("sweepdiv");
    const std::string results = (dir / "r.jsonl").string(), log = (dir / "log").string();
    const std::vector<std::string> base = {SPEEDRUN_BINARY, "sweep", "--runs", "1", "--epochs", "1",
                                           "--threads", "1"};
    const std::vector<std::string> cmd =
        base + std::vector<std::string>{"--grid", "opt.lr=10,1e30", "--results", results, "--epoch-eval"};
    int rc = run(cmd + kTiny, log);
    std::string out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("job 2/2 diverged: seed 0, opt.lr=1e30: the training loss became"), std::string::npos) << out;
    EXPECT_NE(out.find("note: its run diverged (non-finite loss): no accuracy or seconds"), std::string::npos) << out;
    const auto lines = read_results(results).lines;
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_FALSE(lines[0].value("diverged", false));
    // --epoch-eval: the run's epochs, each with its test accuracy
    ASSERT_EQ(lines[0]["epochs"].size(), 1u) << lines[0].dump();
    EXPECT_TRUE(lines[0]["epochs"][0]["test_acc"].is_number()) << lines[0].dump();
    EXPECT_TRUE(lines[1].value("diverged", false)) << lines[1].dump();
    const auto summary = nlohmann::json::parse(slurp((dir / "r.summary.json").string()));
    EXPECT_EQ(summary["settings"][1]["n"], 1);
    EXPECT_EQ(summary["settings"][1]["diverged"], 1);
    EXPECT_TRUE(summary["settings"][1]["accuracy_mean"].is_null());
    EXPECT_EQ(summary["settings"][0]["diverged"], 0);
    EXPECT_EQ(summary["jobs_finished"], 2);
    rc = run(cmd + kTiny, log);
    out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("2 finished already (skipped), 0 to run"), std::string::npos) << out;

    // --epochs 1 and --set opt.epochs=1 are one recipe: the same jobs
    rc = run(std::vector<std::string>{SPEEDRUN_BINARY, "sweep", "--runs", "1", "--set", "opt.epochs=1", "--threads", "1",
                                      "--grid", "opt.lr=10,1e30", "--results", results} + kTiny, log);
    out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("2 finished already (skipped), 0 to run"), std::string::npos) << out;

    // a warm-up run that diverges is noted, and the job's own seed still runs (it was recorded
    // as the job's divergence, and every job of the setting repeated the warm-up instead)
    const std::string warm = (dir / "warm.jsonl").string();
    rc = run(base + std::vector<std::string>{"--grid", "opt.lr=1e30", "--results", warm, "--warmup", "1"} + kTiny, log);
    out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("the warm-up run of opt.lr=1e30 diverged"), std::string::npos) << out;
    EXPECT_NE(out.find("job 1/1 diverged: seed 0, opt.lr=1e30"), std::string::npos) << out;
    EXPECT_EQ(count_lines(warm), 1u);

    auto refused = [&](const std::vector<std::string>& c, const std::string& why) {
        const size_t before = count_lines(results);
        const int r = run(c + kTiny, log);
        const std::string o = slurp(log);
        EXPECT_EQ(r, 1) << o;
        EXPECT_NE(o.find(why), std::string::npos) << o;
        EXPECT_EQ(count_lines(results), before) << "ran before refusing: " << o;
    };
    refused(base + std::vector<std::string>{"--grid", "opt.lr=10,20", "--results", results, "--summary-json", results},
            "are the same file: each needs its own");
    refused(base + std::vector<std::string>{"--grid", "opt.epochs=1,2", "--results", results},
            "--grid settings opt.epochs=1 and opt.epochs=2 train the same recipe (--epochs and --batch-size win");
    refused(base + std::vector<std::string>{"--grid", "opt.lr=10,10", "--results", results},
            "--grid settings opt.lr=10 and opt.lr=10 train the same recipe");
    refused(base + std::vector<std::string>{"--results", "/dev/null"}, "--results /dev/null: not a regular file");
    fs::remove_all(dir);
}

// Without mpirun, sweep runs the jobs one after another in one process, with the same output.
TEST(Sweep, OneProcessRunsEveryJob) {
    const fs::path dir = temp_dir("sweep1");
    const std::string results = (dir / "r.jsonl").string(), log = (dir / "log").string();
    // one thread: the tiny network is all overhead for a team of OpenMP threads on a busy machine
    const std::vector<std::string> cmd = {
        SPEEDRUN_BINARY, "sweep", "--runs",    "2",     "--grid",    "aug.translate=0,2",
        "--epochs",      "1",     "--results", results, "--threads", "1"};
    int rc = run(cmd + kTiny, log);
    std::string out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_EQ(jobs_in(results).size(), 4u);
    EXPECT_NE(out.find("0 finished already (skipped), 4 to run on single process"),
              std::string::npos)
        << out;
    // the summary names the build (as train's does), each line the commit that ran it
    const auto summary = nlohmann::json::parse(slurp((dir / "r.summary.json").string()));
    EXPECT_EQ(summary["program"]["version"], program_version());
    const auto git = summary["program"]["git"].get<std::string>();
    EXPECT_FALSE(git.empty());
    // each setting's whole recipe: the base flags (--epochs, --set) and its grid value resolved
    ASSERT_EQ(summary["settings"].size(), 2u);
    for (int i = 0; i < 2; ++i) {
        const auto& rj = summary["settings"][i]["recipe"];
        EXPECT_EQ(rj["opt"]["epochs"].get<double>(), 1.0) << rj.dump();
        EXPECT_EQ(rj["net"]["widths"], nlohmann::json::parse("[8,16,16]")) << rj.dump();
        EXPECT_EQ(rj["aug"]["translate"].get<int>(), 2 * i) << rj.dump();
        EXPECT_TRUE(rj["lookahead"].contains("start_epoch")) << "the preset's defaults too: " << rj.dump();
    }
    for (const auto& l : read_results(results).lines) {
        EXPECT_EQ(l["git"], git);
        EXPECT_EQ(l["epochs"], nlohmann::json::array()) << "no --epoch-eval: no epochs";
    }
    rc = run(cmd + kTiny, log);  // again: nothing to do, the same summary
    out = slurp(log);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("4 finished already (skipped), 0 to run"), std::string::npos) << out;
    EXPECT_EQ(count_lines(results), 4u);
    fs::remove_all(dir);
}

// --distributed in a build without MPI says so; with MPI but no launcher it runs as one rank.
TEST(Mpi, DistributedWithoutMpirun) {
    const fs::path dir = temp_dir("nompirun");
    const std::string log = (dir / "log").string();
    const int rc = run(std::vector<std::string>{SPEEDRUN_BINARY, "train", "--distributed",
                                                "--epochs", "1", "--no-epoch-eval"} +
                           kTiny,
                       log);
    const std::string out = slurp(log);
    if (SPEEDRUN_HAVE_MPI_FLAG) {
        EXPECT_EQ(rc, 0) << out;
        EXPECT_NE(out.find("--distributed without mpirun or srun: one rank"), std::string::npos)
            << out;
    } else {
        EXPECT_EQ(rc, 1) << out;
        EXPECT_NE(out.find("this build has no MPI"), std::string::npos) << out;
    }
    fs::remove_all(dir);
}

}  // namespace
}  // namespace sr
