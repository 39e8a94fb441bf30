#include "core/env.h"

#include <cctype>
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

}  // namespace sr
