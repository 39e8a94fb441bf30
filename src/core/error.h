// error.h: the project's one error policy.
// Every failure the user can cause (bad file, bad flag, bad config) throws sr::Error with a
// message that names the file or the option and what is wrong. app/ catches it, prints it and
// exits with status 1. Programming errors use SR_CHECK, which throws too, with file:line.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace sr {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
    throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace sr

#define SR_CHECK(cond)                                                                       \
    do {                                                                                     \
        if (!(cond)) ::sr::fail("internal check failed at {}:{}: {}", __FILE__, __LINE__, #cond); \
    } while (0)
