#include "core/env.h"

#include <cctype>
#include <climits>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace sr {

bool env_switch(const char* name, bool fallback) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    std::string s(v);
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (s == "1" || s == "on" || s == "yes" || s == "true") return true;
    if (s == "0" || s == "off" || s == "no" || s == "false") return false;
    fail("environment variable {}='{}': expected 1 or 0 (also on/off, yes/no, true/false)", name,
         v);
}

int env_count(const char* name, int fallback, int least) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    long long x = 0;
    bool digits = true;
    for (const char* c = v; *c; ++c) {
        if (*c < '0' || *c > '9' || x > INT_MAX) {
            digits = false;
            break;
        }
        x = x * 10 + (*c - '0');
    }
    if (!digits || x < least || x > INT_MAX)
        fail("environment variable {}='{}': expected a count, {} to {}", name, v, least, INT_MAX);
    return int(x);
}

}  // namespace sr
