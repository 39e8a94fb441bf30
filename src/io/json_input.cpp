// json_input.cpp: see json_input.h.
#include "io/json_input.h"

#include <set>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"

namespace sr {
namespace {
// A first pass over the text (SAX: no values built) for the limits; the document is then parsed
// without a callback (nlohmann's callback parser rescans a container at each close: quadratic
// in a list of 80,000 objects).
struct LimitsSax : StructureSax {
    int max_depth = 0, depth = 0;
    std::vector<std::set<std::string>> keys;  // the keys of each open object
    std::string error;
    bool open(bool object) {
        if (++depth > max_depth) return error = fmt::format("nested deeper than {} levels", max_depth), false;
        if (object) keys.emplace_back();
        return true;
    }
    bool start_object(std::size_t) override { return open(true); }
    bool key(string_t& k) override {
        if (!keys.back().insert(k).second)
            return error = fmt::format("the key '{}' appears twice in one object", k.size() <= 60 ? k : k.substr(0, 60) + "..."), false;
        return true;
    }
    bool end_object() override { return keys.pop_back(), --depth, true; }
    bool start_array(std::size_t) override { return open(false); }
    bool end_array() override { return --depth, true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        const std::string m = e.what();  // (it quotes the bad token whole: a 200 KB string, say)
        error = "not valid JSON (" + (m.size() <= 300 ? m : m.substr(0, 300) + "...") + ")";
        return false;
    }
};
}  // namespace

nlohmann::json parse_json_input(std::string_view text, const std::string& what, int max_depth) {
    // (the parser ends its input at a NUL byte: what follows one would go unread, not refused)
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
        fail("{}: not valid JSON (a NUL byte at offset {})", what, nul);
    LimitsSax limits;
    limits.max_depth = max_depth;
    if (!nlohmann::json::sax_parse(text.begin(), text.end(), &limits)) fail("{}: {}", what, limits.error);
    try {
        return nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception& e) {  // (the first pass would have said)
        fail("{}: not valid JSON ({})", what, std::string(e.what()).substr(0, 300));
    }
}

std::string json_text(const nlohmann::json& v, int indent) {
    return v.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string json_brief(const nlohmann::json& v, size_t max_chars) {
    // (containers are summarised before any text is made: dump() of a huge one is huge)
    if (v.is_array() && v.size() > max_chars / 2) return fmt::format("an array of {} values", v.size());
    if (v.is_object() && v.size() > max_chars / 4) return fmt::format("an object of {} keys", v.size());
    const std::string s = json_text(v);
    if (s.size() <= max_chars) return s;
    return s.substr(0, max_chars) + fmt::format("... ({} characters)", s.size());
}

}  // namespace sr
