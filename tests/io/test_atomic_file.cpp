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
    // a missing directory is made, as the writers would make it; the file itself is not
    const fs::path nested = dir / "a" / "b" / "summary.json";
    check_output_path(nested.string(), "--summary-json");
    EXPECT_TRUE(fs::is_directory(nested.parent_path()));
    EXPECT_FALSE(fs::exists(nested));
    check_output_path("relative-name.json", "--log");  // the current directory
    // a directory where the file should be, and a file where a directory should be
    std::string why = test::error_of([&] { check_output_path(dir.string(), "--checkpoint"); });
    EXPECT_TRUE(test::contains(why, "--checkpoint " + dir.string() + ": is a directory")) << why;
    const fs::path file = dir / "plain";
    std::ofstream(file) << "x";
    why = test::error_of([&] { check_output_path((file / "c.safetensors").string(), "--checkpoint"); });
    EXPECT_TRUE(test::contains(why, "--checkpoint")) << why;
    EXPECT_TRUE(test::contains(why, "cannot create directory " + file.string())) << why;
    fs::remove_all(dir);
}

TEST(AtomicFile, ProgramsAreFoundOnThePath) {
    EXPECT_TRUE(program_on_path("sh"));
    EXPECT_FALSE(program_on_path("speedrun-no-such-program"));
}

}  // namespace
}  // namespace sr
