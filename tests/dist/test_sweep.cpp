// test_sweep.cpp: the pieces of `speedrun sweep` on their own: the grid, the results file (whole
// lines under concurrent appends, a line cut off by a crash), the per-setting summary. The
// sweeps themselves run in test_mpi.cpp.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <fcntl.h>
#include <chrono>

#include <gtest/gtest.h>

#include "core/error.h"
#include "dist/sweep.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
    const fs::path d = fs::temp_directory_path() / fmt::format("speedrun-{}-{}", name, ::getpid());
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

TEST(Sweep, GridValuesSplitOutsideBrackets) {
    EXPECT_EQ(split_grid_values("10,11.5"), (std::vector<std::string>{"10", "11.5"}));
    EXPECT_EQ(split_grid_values("[8,16,16],[16,32,32]"),
              (std::vector<std::string>{"[8,16,16]", "[16,32,32]"}));
    EXPECT_EQ(split_grid_values("{\"a\":1,\"b\":2},\"x,y\""),
              (std::vector<std::string>{"{\"a\":1,\"b\":2}", "\"x,y\""}));
    EXPECT_EQ(split_grid_values("7"), (std::vector<std::string>{"7"}));
}

TEST(Sweep, GridIsTheCartesianProductFirstAxisSlowest) {
    const auto s = grid_settings({"opt.lr=10,12", "aug.translate=0,1,2"});
    ASSERT_EQ(s.size(), 6u);
    EXPECT_EQ(s[0].label, "opt.lr=10 aug.translate=0");
    EXPECT_EQ(s[1].label, "opt.lr=10 aug.translate=1");
    EXPECT_EQ(s[5].label, "opt.lr=12 aug.translate=2");
    EXPECT_EQ(s[5].overrides, (std::vector<std::string>{"opt.lr=12", "aug.translate=2"}));
    const auto none = grid_settings({});
    ASSERT_EQ(none.size(), 1u);
    EXPECT_TRUE(none[0].overrides.empty());
    EXPECT_EQ(none[0].label, "");
}

TEST(Sweep, MalformedGridNamesTheAxis) {
    for (const std::string bad : {"opt.lr", "=1,2", "opt.lr=", "opt.lr=1,,2"}) {
        EXPECT_TRUE(test::contains(test::error_of([&] { grid_settings({bad}); }), bad));
    }
    EXPECT_THROW(grid_settings({"opt.lr=1", "opt.lr=2"}), Error);  // the same key twice
}

TEST(Sweep, FingerprintIsStable) {
    // FNV-1a-64 of "" and of "a" (published test vectors)
    EXPECT_EQ(fingerprint(""), "cbf29ce484222325");
    EXPECT_EQ(fingerprint("a"), "af63dc4c8601ec8c");
}

// Four processes append 50 lines each at once: 200 whole lines, none torn or lost.
TEST(Sweep, ConcurrentAppendsKeepWholeLines) {
    const fs::path dir = temp_dir("append");
    const std::string path = (dir / "sub" / "results.jsonl").string();
    std::vector<pid_t> kids;
    for (int p = 0; p < 4; ++p) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            try {
                for (int i = 0; i < 50; ++i)
                    append_result_line(
                        path, {{"p", p}, {"i", i}, {"pad", std::string(300, char('a' + p))}});
            } catch (...) {
                ::_exit(1);
            }
            ::_exit(0);
        }
        kids.push_back(pid);
    }
    for (pid_t k : kids) {
        int st = 0;
        ::waitpid(k, &st, 0);
        EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    const ResultsFile rf = read_results(path);
    EXPECT_TRUE(rf.bad_lines.empty());
    ASSERT_EQ(rf.lines.size(), 200u);
    std::set<std::pair<int, int>> seen;
    for (const auto& l : rf.lines) seen.insert({l["p"].get<int>(), l["i"].get<int>()});
    EXPECT_EQ(seen.size(), 200u);
    fs::remove_all(dir);
}

// The lock itself (a local file's O_APPEND writes are whole without it, so the test above cannot
// tell): a writer that holds it while its line is half written (a slow write on a network file
// system) makes the next append wait for the rest, not glue onto the half or cut it.
TEST(Sweep, AppendWaitsForAWriterHoldingTheLock) {
    const fs::path dir = temp_dir("lock");
    const std::string path = (dir / "results.jsonl").string();
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT, 0644);
        struct flock lock {};
        lock.l_type = F_WRLCK;
        lock.l_whence = SEEK_SET;
        if (fd < 0 || ::fcntl(fd, F_SETLKW, &lock) != 0) ::_exit(1);
        const std::string head = "{\"writer\": \"slow\", ", tail = "\"done\": true}\n";
        if (::write(fd, head.data(), head.size()) != ssize_t(head.size())) ::_exit(1);
        if (::write(ready[1], "x", 1) != 1) ::_exit(1);
        ::usleep(400000);
        if (::write(fd, tail.data(), tail.size()) != ssize_t(tail.size())) ::_exit(1);
        ::_exit(0);  // (closing releases the lock)
    }
    char c;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    const auto t0 = std::chrono::steady_clock::now();
    append_result_line(path, {{"writer", "sweep"}});
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int st = 0;
    ::waitpid(pid, &st, 0);
    ::close(ready[0]);
    ::close(ready[1]);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    EXPECT_GE(waited, 0.2) << "the append did not wait for the lock";
    const ResultsFile rf = read_results(path);
    EXPECT_TRUE(rf.bad_lines.empty()) << "a line was torn";
    ASSERT_EQ(rf.lines.size(), 2u);
    EXPECT_EQ(rf.lines[0]["writer"], "slow");
    EXPECT_EQ(rf.lines[1]["writer"], "sweep");
    fs::remove_all(dir);
}

// A line cut off mid-write (a crash) is reported and skipped, and the next append starts on a
// line of its own instead of gluing onto it.
TEST(Sweep, CutOffLineIsSkippedAndNotGluedTo) {
    const fs::path dir = temp_dir("cutoff");
    const std::string path = (dir / "r.jsonl").string();
    append_result_line(path, {{"seed", 0}});
    {
        std::ofstream f(path, std::ios::app);
        f << "{\"seed\": 1, \"test_acc";
    }
    append_result_line(path, {{"seed", 2}});
    const ResultsFile rf = read_results(path);
    ASSERT_EQ(rf.lines.size(), 2u);
    EXPECT_EQ(rf.lines[1]["seed"], 2);
    EXPECT_EQ(rf.bad_lines, std::vector<int>{2});
    EXPECT_TRUE(read_results((dir / "absent.jsonl").string()).lines.empty());
    fs::remove_all(dir);
}

// Statistics over one setting's lines: only its fingerprint and seeds, each seed once.
TEST(Sweep, SummaryTakesEachSeedOnceAndOnlyThisSetting) {
    const SweepSetting s{{"opt.lr=10"}, "opt.lr=10"};
    std::vector<nlohmann::json> lines = {
        {{"fingerprint", "f1"},
         {"seed", 0u},
         {"test_accuracy_tta", 0.93},
         {"test_accuracy", 0.92},
         {"train_seconds", 10.0}},
        {{"fingerprint", "f1"},
         {"seed", 1u},
         {"test_accuracy_tta", 0.95},
         {"test_accuracy", 0.94},
         {"train_seconds", 12.0},
         {"git", "abc123"}},
        {{"fingerprint", "f1"},
         {"seed", 1u},
         {"test_accuracy_tta", 0.10},
         {"test_accuracy", 0.10},
         {"train_seconds", 99.0}},
        {{"fingerprint", "f2"},
         {"seed", 2u},
         {"test_accuracy_tta", 0.10},
         {"test_accuracy", 0.10},
         {"train_seconds", 99.0}},
        {{"fingerprint", "f1"},
         {"seed", 7u},
         {"test_accuracy_tta", 0.10},
         {"test_accuracy", 0.10},
         {"train_seconds", 99.0}},
    };
    const auto j = summarize_setting(s, "f1", lines, {0, 1, 2});
    EXPECT_EQ(j["n"], 2);
    EXPECT_NEAR(j["accuracy_mean"].get<double>(), 0.94, 1e-12);
    EXPECT_NEAR(j["accuracy_std"].get<double>(), std::sqrt(0.0002), 1e-12);
    EXPECT_NEAR(j["accuracy_min"].get<double>(), 0.93, 1e-12);
    EXPECT_NEAR(j["share_at_least_94"].get<double>(), 0.5, 1e-12);
    EXPECT_NEAR(j["train_seconds_mean"].get<double>(), 11.0, 1e-12);
    EXPECT_EQ(j["seeds"], (std::vector<uint64_t>{0, 1}));
    // the commits of the runs taken (seed 0's line names none: an older build's)
    EXPECT_EQ(j["git"], (std::vector<std::string>{"abc123", "unknown"}));
    EXPECT_EQ(j["diverged"], 0);
    // a diverged run (seed 2) counts among the runs, not in the accuracy or the seconds, and
    // is not a run at >= 94%
    lines.push_back({{"fingerprint", "f1"}, {"seed", 2u}, {"diverged", true}, {"error", "the training loss became nan"}});
    const auto d = summarize_setting(s, "f1", lines, {0, 1, 2});
    EXPECT_EQ(d["n"], 3);
    EXPECT_EQ(d["diverged"], 1);
    EXPECT_NEAR(d["accuracy_mean"].get<double>(), 0.94, 1e-12);
    EXPECT_NEAR(d["accuracy_min"].get<double>(), 0.93, 1e-12);
    EXPECT_NEAR(d["share_at_least_94"].get<double>(), 1.0 / 3, 1e-12);
    EXPECT_NEAR(d["train_seconds_mean"].get<double>(), 11.0, 1e-12);
    EXPECT_EQ(d["seeds"], (std::vector<uint64_t>{0, 1, 2}));
    // every run diverged: no figures (null, not 0)
    const auto all = summarize_setting(s, "f1", {lines.back()}, {0, 1, 2});
    EXPECT_EQ(all["n"], 1);
    EXPECT_EQ(all["diverged"], 1);
    EXPECT_TRUE(all["accuracy_mean"].is_null()) << all.dump();
    EXPECT_TRUE(all["train_seconds_max"].is_null()) << all.dump();
    EXPECT_EQ(all["share_at_least_94"], 0.0);
}

}  // namespace
}  // namespace sr
