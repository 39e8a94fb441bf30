// test_atomic_file.cpp: the checks made before a run on the files it will write
// (check_output_path), and the PATH lookup of the report tools (program_on_path).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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

TEST(AtomicFile, ProgramsAreFoundOnThePath) {
    EXPECT_TRUE(program_on_path("sh"));
    EXPECT_FALSE(program_on_path("speedrun-no-such-program"));
}

}  // namespace
}  // namespace sr
