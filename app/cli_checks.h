// cli_checks.h: the number checks the subcommands' options share (app/speedrun.cpp, dist_cli.cpp).
#pragma once
#include <cmath>
#include <string>

#include <CLI/CLI.hpp>

namespace sr::app {

// Values that must be finite and positive (a negative or NaN --epochs would otherwise read as
// "not given"), or finite and at least zero (a negative --seed would wrap to 2^64 - 5).
inline CLI::Validator finite_number(bool zero_allowed) {
    return CLI::Validator(
        [zero_allowed](std::string& v) -> std::string {
            double x = 0;
            const bool ok = CLI::detail::lexical_cast(v, x) && std::isfinite(x) &&
                            (zero_allowed ? x >= 0 : x > 0);
            if (ok) return "";
            return (zero_allowed ? "must be >= 0 (got " : "must be a positive number (got ") + v + ")";
        },
        zero_allowed ? ">= 0" : "> 0");
}
inline const CLI::Validator kPositive = finite_number(false);
inline const CLI::Validator kNonNegative = finite_number(true);

}  // namespace sr::app
