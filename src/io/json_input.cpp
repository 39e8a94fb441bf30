// json_input.cpp: see json_input.h.
#include "io/json_input.h"

#include <set>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"

namespace sr {
namespace {
struct TooDeep {};
struct RepeatedKey {
    std::string key;
};
}  // namespace

nlohmann::json parse_json_input(std::string_view text, const std::string& what, int max_depth) {
    using json = nlohmann::json;
    std::vector<std::set<std::string>> keys;  // the keys of each object being read
    const json::parser_callback_t check = [&](int depth, json::parse_event_t ev, json& parsed) {
        if (depth > max_depth) throw TooDeep{};
        if (ev == json::parse_event_t::object_start) keys.emplace_back();
        if (ev == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
        if (ev == json::parse_event_t::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
            throw RepeatedKey{parsed.get<std::string>()};
        return true;
    };
    try {
        return json::parse(text.begin(), text.end(), check);
    } catch (const TooDeep&) {
        fail("{}: nested deeper than {} levels", what, max_depth);
    } catch (const RepeatedKey& r) {
        fail("{}: the key '{}' appears twice in one object", what, r.key);
    } catch (const json::exception& e) {
        fail("{}: not valid JSON ({})", what, e.what());
    }
}

std::string json_brief(const nlohmann::json& v, size_t max_chars) {
    // (containers are summarised before any text is made: dump() of a huge one is huge)
    if (v.is_array() && v.size() > max_chars / 2) return fmt::format("an array of {} values", v.size());
    if (v.is_object() && v.size() > max_chars / 4) return fmt::format("an object of {} keys", v.size());
    const std::string s = v.dump();
    if (s.size() <= max_chars) return s;
    return s.substr(0, max_chars) + fmt::format("... ({} characters)", s.size());
}

}  // namespace sr
