// Notes on stderr (core/notes.h): said once per command, not by the quiet ranks of a
// data-parallel job.
#include <gtest/gtest.h>

#include "core/notes.h"

namespace {

std::string noted(int x) {
    testing::internal::CaptureStderr();
    sr::note("{} of {}", x, "these");
    return testing::internal::GetCapturedStderr();
}

TEST(Notes, SaidUnlessQuiet) {
    ASSERT_FALSE(sr::notes_quiet());
    EXPECT_EQ(noted(3), "speedrun: note: 3 of these\n");
    sr::set_notes_quiet(true);  // (a rank other than 0)
    EXPECT_EQ(noted(4), "");
    sr::set_notes_quiet(false);
    EXPECT_EQ(noted(5), "speedrun: note: 5 of these\n");
}

}  // namespace
