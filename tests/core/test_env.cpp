// The environment switches' one parser (core/env.h).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/env.h"
#include "core/error.h"

namespace {

constexpr const char* kName = "SPEEDRUN_TEST_ENV_SWITCH";

struct Unset {
    ~Unset() { ::unsetenv(kName); }
};

bool with(const char* value, bool fallback) {
    ::setenv(kName, value, 1);
    return sr::env_switch(kName, fallback);
}

}  // namespace

TEST(EnvSwitch, UnsetOrEmptyGivesTheDefault) {
    Unset guard;
    ::unsetenv(kName);
    EXPECT_TRUE(sr::env_switch(kName, true));
    EXPECT_FALSE(sr::env_switch(kName, false));
    EXPECT_TRUE(with("", true));
    EXPECT_FALSE(with("", false));
}

TEST(EnvSwitch, OnAndOffSpellingsInAnyCase) {
    Unset guard;
    for (const char* on : {"1", "on", "ON", "yes", "Yes", "true", "TRUE"}) {
        EXPECT_TRUE(with(on, false)) << on;
    }
    for (const char* off : {"0", "off", "Off", "no", "NO", "false", "False"}) {
        EXPECT_FALSE(with(off, true)) << off;
    }
}

TEST(EnvSwitch, AnythingElseIsAnErrorNamingTheVariable) {
    Unset guard;
    for (const char* bad : {"2", "of", "enable", " 1", "-1"}) {
        try {
            with(bad, true);
            ADD_FAILURE() << "no error for '" << bad << "'";
        } catch (const sr::Error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find(kName), std::string::npos) << what;
            EXPECT_NE(what.find(std::string("'") + bad + "'"), std::string::npos) << what;
        }
    }
}

TEST(EnvCount, UnsetOrEmptyGivesTheDefaultElseTheCount) {
    Unset guard;
    ::unsetenv(kName);
    EXPECT_EQ(sr::env_count(kName, 256), 256);
    ::setenv(kName, "", 1);
    EXPECT_EQ(sr::env_count(kName, 7), 7);
    ::setenv(kName, "1", 1);
    EXPECT_EQ(sr::env_count(kName, 256), 1);
    ::setenv(kName, "2147483647", 1);
    EXPECT_EQ(sr::env_count(kName, 256), 2147483647);
}

TEST(EnvCount, AnythingButACountIsAnErrorNamingTheVariable) {
    Unset guard;
    for (const char* bad : {"0", "-1", "+3", " 4", "4 ", "12x", "on", "2147483648",
                            "99999999999999999999"}) {
        ::setenv(kName, bad, 1);
        try {
            sr::env_count(kName, 256);
            ADD_FAILURE() << "no error for '" << bad << "'";
        } catch (const sr::Error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find(kName), std::string::npos) << what;
            EXPECT_NE(what.find(std::string("'") + bad + "'"), std::string::npos) << what;
        }
    }
}

// A count that may be 0 (SPEEDRUN_NCCL_TIMEOUT=0: no time limit): 0 is read, a sign still is not.
TEST(EnvCount, ALeastOfZeroAcceptsZero) {
    Unset guard;
    ::setenv(kName, "0", 1);
    EXPECT_EQ(sr::env_count(kName, 600, 0), 0);
    ::setenv(kName, "30", 1);
    EXPECT_EQ(sr::env_count(kName, 600, 0), 30);
    for (const char* bad : {"-1", "", "x"}) {
        ::setenv(kName, bad, 1);
        if (!*bad) {
            EXPECT_EQ(sr::env_count(kName, 600, 0), 600);  // empty: the default
            continue;
        }
        EXPECT_THROW(sr::env_count(kName, 600, 0), sr::Error) << bad;
    }
}
