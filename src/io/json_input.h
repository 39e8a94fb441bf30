// json_input.h: JSON that comes from outside the program (a --config file, a --set value, a
// checkpoint's metadata, a results file's line), read with limits, and JSON values shown in
// messages at a bounded length.
#pragma once
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace sr {

// A SAX handler that takes every scalar (the checks of the ones below are about structure: depth,
// keys); they override the container events and parse_error.
struct StructureSax : nlohmann::json_sax<nlohmann::json> {
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
};

// Parses text; fails, naming `what`, where it is not JSON, nests deeper than max_depth (printing
// or freeing a deeper value recurses that deep: a 100,000-deep array ended the program) or an
// object repeats a key (JSON leaves the meaning open; the last one would win unseen).
nlohmann::json parse_json_input(std::string_view text, const std::string& what, int max_depth = 32);

// v's JSON text for a file we write (indent as dump's): bytes of a string that are not UTF-8 (a
// --data path in another encoding) become U+FFFD, where dump() would throw and lose the file.
std::string json_text(const nlohmann::json& v, int indent = -1);

// v for a message: whole where its JSON text is short, else its start and what it is ("an array
// of 300000 values").
std::string json_brief(const nlohmann::json& v, size_t max_chars = 80);

}  // namespace sr
