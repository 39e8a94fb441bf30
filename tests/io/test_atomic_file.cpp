// test_atomic_file.cpp: the checks made before a run on the files it will write
// (check_output_path), the writes themselves (write_file_atomic, JsonlLog), and the PATH lookup
// of the report tools (program_on_path).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/atomic_file.h"
#include "test_util.h"

namespace sr {
namespace {
namespace fs = std::filesystem;

TEST(AtomicFile, OutputPathsAreCheckedBeforeTheWork) {
    const fs::path dir = test::temp_path("outputs");
    fs::remove_all(dir);
    // missing folders are fine (the writers make them) and are not made by the check, so a run
    // that stops early leaves none behind; nor is the file made
    const fs::path nested = dir / "a" / "b" / "summary.json";
    check_output_path(nested.string(), "--summary-json");
    EXPECT_FALSE(fs::exists(dir));
    check_output_path("relative-name.json", "--log");  // the current directory
    EXPECT_FALSE(fs::exists("relative-name.json"));
    // a relative path whose first folder is missing: the current directory is where it goes
    const std::string rel = "speedrun-rel-" + std::to_string(::getpid());
    check_output_path(rel + "/a/summary.json", "--summary-json");
    EXPECT_FALSE(fs::exists(rel));
    // a name that ends in a slash is a folder's
    std::string why0 = test::error_of([&] { check_output_path(rel + "/", "--checkpoint"); });
    EXPECT_TRUE(test::contains(why0, "--checkpoint " + rel + "/: names a folder, not a file")) << why0;
    // a directory where the file should be, and a file where a directory should be
    fs::create_directories(dir);
    std::string why = test::error_of([&] { check_output_path(dir.string(), "--checkpoint"); });
    EXPECT_TRUE(test::contains(why, "--checkpoint " + dir.string() + ": is a directory")) << why;
    const fs::path file = dir / "plain";
    std::ofstream(file) << "x";
    why = test::error_of([&] { check_output_path((file / "sub" / "c.safetensors").string(), "--checkpoint"); });
    EXPECT_TRUE(test::contains(why, "--checkpoint " + (file / "sub" / "c.safetensors").string())) << why;
    EXPECT_TRUE(test::contains(why, file.string() + " is not a directory")) << why;
    // a folder where no file can be made although access() says it can for root: /proc
    if (fs::is_directory("/proc/self")) {
        why = test::error_of([&] { check_output_path("/proc/speedrun-summary.json", "--summary-json"); });
        EXPECT_TRUE(test::contains(why, "--summary-json /proc/speedrun-summary.json: cannot write in /proc"))
            << why;
    }
    // a dangling link in the folder chain stops the check (it did walk past it to ".")
    const fs::path dangling = dir / "dangling";
    fs::create_symlink(dir / "no-such-folder", dangling);
    why = test::error_of([&] { check_output_path((dangling / "x.json").string(), "--log"); });
    EXPECT_TRUE(test::contains(why, "--log " + (dangling / "x.json").string() + ": " + dangling.string()))
        << why;
    fs::remove(dangling);
    // the probe file is gone again
    check_output_path((dir / "s.json").string(), "--summary-json");
    size_t entries = 0;
    for (const auto& e : fs::directory_iterator(dir)) entries += e.path() != file;
    EXPECT_EQ(entries, 0u);
    fs::remove_all(dir);
}

std::string slurp(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// An empty folder of the tests' own, made anew.
fs::path fresh_dir(const std::string& name) {
    const fs::path dir = test::temp_path(name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

// Files in dir other than the given ones (temporary files left behind).
std::vector<std::string> others_in(const fs::path& dir, const std::vector<std::string>& known) {
    std::vector<std::string> left;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();
        if (std::find(known.begin(), known.end(), n) == known.end()) left.push_back(n);
    }
    return left;
}

TEST(AtomicFile, NamesOfTwoHundredAndFiftySixBytesAreRefusedBeforeTheWork) {
    const fs::path dir = fresh_dir("longname");
    const std::string ok(255, 'a'), too_long(256, 'a');
    check_output_path((dir / ok).string(), "--summary-json");
    write_file_atomic((dir / ok).string(), "x");  // (its temporary name is short)
    EXPECT_EQ(slurp(dir / ok), "x");
    const std::string why = test::error_of([&] { check_output_path((dir / too_long).string(), "--log"); });
    EXPECT_TRUE(test::contains(why, "the file name is 256 bytes long; at most 255")) << why;
    fs::remove_all(dir);
}

TEST(AtomicFile, TheTemporaryFileIsANewFileOfItsOwn) {
    // a link placed where a temporary name was predictable (path.tmp.<pid>, as written before)
    // is not written through, and the target becomes a file, not that link
    const fs::path dir = fresh_dir("tmplink");
    const fs::path target = dir / "out.json", sentinel = dir / "sentinel";
    std::ofstream(sentinel) << "keep";
    const std::string old_tmp = fmt::format("out.json.tmp.{}", ::getpid());
    fs::create_symlink(sentinel, dir / old_tmp);
    write_file_atomic(target.string(), "new");
    EXPECT_EQ(slurp(sentinel), "keep");
    EXPECT_FALSE(fs::is_symlink(target));
    EXPECT_EQ(slurp(target), "new");
    // the mode: a new file gets 0644 less the umask (as open(O_CREAT, 0644)), a replaced one keeps its own
    const mode_t mask = ::umask(022);
    ::umask(mask);
    struct stat st {};
    ASSERT_EQ(::stat(target.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u & ~mask);
    fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
    write_file_atomic(target.string(), "newer");
    ASSERT_EQ(::stat(target.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
    EXPECT_EQ(slurp(target), "newer");
    EXPECT_EQ(others_in(dir, {"out.json", "sentinel", old_tmp}),
              std::vector<std::string>{});
    fs::remove_all(dir);
}

TEST(AtomicFile, AWriteThatFailsPartwayLeavesTheOldFileAndNoTemporaryOne) {
    const fs::path dir = fresh_dir("efbig");
    const fs::path target = dir / "ck.safetensors";
    std::ofstream(target) << "old";
    // a file size limit of 4 KiB (SIGXFSZ ignored: write() fails with EFBIG) in a child process,
    // which reports through its exit status: 0 all as expected, else the number of the check
    std::fflush(stdout);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        std::signal(SIGXFSZ, SIG_IGN);
        const rlimit lim{4096, 4096};
        ::setrlimit(RLIMIT_FSIZE, &lim);
        const std::string why = test::error_of([&] { write_file_atomic(target.string(), std::string(65536, 'x')); });
        if (why.find(target.string() + " (temporary file ") == std::string::npos) ::_exit(1);
        if (why.find("File too large") == std::string::npos) ::_exit(2);
        ::_exit(0);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 0) << "1: the message does not name the target and its temporary file; 2: not EFBIG";
    EXPECT_EQ(slurp(target), "old");
    EXPECT_EQ(others_in(dir, {"ck.safetensors"}), std::vector<std::string>{});
    // a rename that fails (a folder holding a file where the file goes): named, nothing left
    const fs::path folder = dir / "folder";
    fs::create_directories(folder / "inside");
    const std::string why = test::error_of([&] { write_file_atomic(folder.string(), "x"); });
    EXPECT_TRUE(test::contains(why, folder.string() + ": cannot rename the temporary file into place")) << why;
    EXPECT_EQ(others_in(dir, {"ck.safetensors", "folder"}), std::vector<std::string>{});
    fs::remove_all(dir);
}

TEST(AtomicFile, ALogWhoseLastLineWasCutGoesOnOnANewLine) {
    const fs::path dir = fresh_dir("tornlog");
    const fs::path log = dir / "log.jsonl";
    std::ofstream(log) << "{\"a\":1}\n{\"b\":";  // a full disk cut the second line
    {
        JsonlLog l(log.string());
        l.write({{"c", 3}});
        l.write({{"d", 4}});
    }
    EXPECT_EQ(slurp(log), "{\"a\":1}\n{\"b\":\n{\"c\":3}\n{\"d\":4}\n");
    {
        JsonlLog l(log.string());  // (whole lines: nothing added)
        l.write({{"e", 5}});
    }
    EXPECT_EQ(slurp(log), "{\"a\":1}\n{\"b\":\n{\"c\":3}\n{\"d\":4}\n{\"e\":5}\n");
    fs::remove_all(dir);
}

TEST(AtomicFile, AnOutputThatIsAnInputIsRefused) {
    const fs::path dir = fresh_dir("inputs");
    const fs::path cfg = dir / "cfg.json", hard = dir / "hard.json", soft = dir / "soft.json";
    std::ofstream(cfg) << "{}";
    fs::create_hard_link(cfg, hard);
    fs::create_symlink(cfg, soft);
    for (const fs::path& out : {cfg, hard, soft, dir / "." / "cfg.json"}) {
        const std::string why = test::error_of([&] { check_inputs_kept({{out.string(), "--log"}}, {{cfg.string(), "--config"}}); });
        EXPECT_TRUE(test::contains(why, "--log " + out.string() + " is the file --config " + cfg.string() + " names"))
            << why;
    }
    // another file, a file not there yet, and what no output replaces (a terminal or pipe read
    // as /dev/stdin beside /dev/stdout) are fine
    std::ofstream(dir / "other.json") << "{}";
    EXPECT_NO_THROW(check_inputs_kept({{(dir / "other.json").string(), "--log"}, {(dir / "new.json").string(), "--svg"}, {"", "--plot"}},
                                      {{cfg.string(), "--config"}, {"", "--resume"}}));
    EXPECT_NO_THROW(check_inputs_kept({{"/dev/stdout", "--log"}}, {{"/dev/stdin", "--config"}}));
    fs::remove_all(dir);
}

TEST(AtomicFile, ProgramsAreFoundOnThePath) {
    EXPECT_TRUE(program_on_path("sh"));
    EXPECT_FALSE(program_on_path("speedrun-no-such-program"));
}

}  // namespace
}  // namespace sr
