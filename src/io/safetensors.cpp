// safetensors.cpp: see safetensors.h.
//
// Reading is in two steps that both read_safetensors (a file) and parse_safetensors (bytes in
// memory) share, so both give the same answer and the same message for the same bytes:
//  1. check_prelude: the 8-byte header length against the total size (and the 100 MiB limit);
//  2. parse_header: the header bytes, first through a SAX pass (syntax, nesting depth,
//     duplicate keys, with nlohmann's message and position on a syntax error), then as a DOM,
//     entry by entry, and finally the layout of all tensors in the data section.
// Only then is any tensor data copied (the file reader reads the data section in offset order).
#include "io/safetensors.h"

#include "io/json_input.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is copied as is");

namespace sr {

using json = nlohmann::json;

namespace {

constexpr DType kAllDTypes[] = {DType::F32, DType::F64, DType::I32, DType::I64, DType::U8, DType::U64};
constexpr int kMaxDepth = 8;  // a valid header nests 3 deep (root, entry, shape)

// A name as it appears in a message: quoted, and cut short if it is long.
std::string q(const std::string& s) {
    constexpr size_t kMax = 80;
    if (s.size() <= kMax) return fmt::format("'{}'", s);
    return fmt::format("'{}...' ({} characters)", s.substr(0, kMax), s.size());
}

// A JSON value as it appears in a message (short).
std::string show(const json& v) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
    if (s.size() > 60) s = s.substr(0, 60) + "...";
    return s;
}

bool parse_dtype(const std::string& s, DType& out) {
    for (DType t : kAllDTypes)
        if (s == dtype_name(t)) return out = t, true;
    return false;
}

// prod(shape) * elem_size, false on a negative dimension or on overflow.
bool byte_count(const std::vector<int64_t>& shape, size_t elem_size, uint64_t& bytes) {
    uint64_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) return false;
        if (__builtin_mul_overflow(n, uint64_t(d), &n)) return false;
    }
    return !__builtin_mul_overflow(n, uint64_t(elem_size), &bytes);
}

uint64_t load_u64_le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

// ---- reading: shared checks -----------------------------------------------------------------

// The header length from the first 8 bytes of an n-byte file, checked against n.
uint64_t check_prelude(const std::string& who, uint64_t n, const uint8_t* first8) {
    if (n < 8)
        fail("{}: file is {} bytes, too short for a safetensors file (it starts with an 8-byte header "
             "length)",
             who, n);
    const uint64_t hn = load_u64_le(first8);
    if (hn > n - 8)
        fail("{}: not a safetensors file, or a truncated one: header length {} is larger than the "
             "file ({} bytes)", who, hn, n);
    if (hn > kSafetensorsMaxHeader)
        fail("{}: header length {} is over the limit of {} bytes (100 MiB)", who, hn, kSafetensorsMaxHeader);
    return hn;
}

// First pass over the header: syntax (nlohmann's message), depth, duplicate keys.
class HeaderSax : public StructureSax {
public:
    std::string error;

    bool start_object(std::size_t) override {
        if (!value() || !deeper()) return false;
        keys_.emplace_back();
        open_.push_back(-1);
        return true;
    }
    bool key(string_t& k) override {
        // only objects up to depth 2 can be valid (the root, tensor entries, __metadata__);
        // anything deeper is refused later anyway, so its keys need not be remembered
        if (keys_.size() <= 2 && !keys_.back().insert(k).second) {
            error = fmt::format("key {} appears twice in {}", q(k),
                                keys_.size() == 1 ? std::string("the header") : "an entry of the header");
            return false;
        }
        return true;
    }
    bool end_object() override {
        keys_.pop_back();
        open_.pop_back();
        --depth_;
        return true;
    }
    bool start_array(std::size_t) override {
        if (!value() || !deeper()) return false;
        open_.push_back(0);
        return true;
    }
    bool end_array() override {
        open_.pop_back();
        --depth_;
        return true;
    }
    bool null() override { return value(); }
    bool boolean(bool) override { return value(); }
    bool number_integer(number_integer_t) override { return value(); }
    bool number_unsigned(number_unsigned_t) override { return value(); }
    bool number_float(number_float_t, const string_t&) override { return value(); }
    bool string(string_t&) override { return value(); }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        std::string m = e.what();
        if (const size_t p = m.find("] "); m.rfind("[json.exception.", 0) == 0 && p != std::string::npos)
            m = m.substr(p + 2);
        error = "header is not valid JSON (" + m + ")";
        return false;
    }

private:
    bool deeper() {
        if (++depth_ > kMaxDepth) {
            error = fmt::format("header nests deeper than {} levels (a valid one nests 3)", kMaxDepth);
            return false;
        }
        return true;
    }
    // One more value in the innermost container: an array may hold at most kMaxArrayValues (a
    // shape has a few dimensions, data_offsets two; a shape of 50 million zeros, 0 bytes of data,
    // built a header of gigabytes in memory).
    bool value() {
        if (!open_.empty() && open_.back() >= 0 && ++open_.back() > kMaxArrayValues) {
            error = fmt::format("an array in the header holds more than {} values (a tensor's shape has a few)",
                                kMaxArrayValues);
            return false;
        }
        return true;
    }
    static constexpr int kMaxArrayValues = 64;
    int depth_ = 0;
    // std::unordered_set<std::string> per open object (up to depth 2 used)
    std::vector<std::unordered_set<std::string>> keys_;
    std::vector<int> open_;  // per open container: -1 an object, else the values of an array so far
};

struct Entry {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
};

// Reads one non-negative integer that fits int64 (JSON integers only; 2.0 is refused).
bool as_index(const json& v, int64_t& out) {
    if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        if (u > uint64_t(std::numeric_limits<int64_t>::max())) return false;
        out = int64_t(u);
        return true;
    }
    if (v.is_number_integer()) {
        out = v.get<int64_t>();
        return out >= 0;
    }
    return false;
}

// Reads one non-negative integer that fits uint64 (a data offset).
bool as_offset(const json& v, uint64_t& out) {
    if (v.is_number_unsigned()) return out = v.get<uint64_t>(), true;
    if (v.is_number_integer() && v.get<int64_t>() >= 0) return out = uint64_t(v.get<int64_t>()), true;
    return false;
}

Entry parse_entry(const std::string& who, const std::string& name, const json& v, uint64_t data_size) {
    const std::string t = fmt::format("{}: tensor {}", who, q(name));
    if (!v.is_object()) fail("{}: entry is not an object (got {})", t, show(v));
    for (const auto& [k, _] : v.items())
        if (k != "dtype" && k != "shape" && k != "data_offsets")
            fail("{}: unknown key {} (an entry has dtype, shape and data_offsets)", t, q(k));
    for (const char* k : {"dtype", "shape", "data_offsets"})
        if (!v.contains(k)) fail("{}: entry has no \"{}\"", t, k);

    Entry e;
    e.name = name;
    const json& dt = v["dtype"];
    if (!dt.is_string()) fail("{}: dtype is not a string (got {})", t, show(dt));
    if (!parse_dtype(dt.get_ref<const std::string&>(), e.dtype))
        fail("{}: unsupported dtype {} (supported: F32, F64, I32, I64, U8, U64)", t,
             q(dt.get_ref<const std::string&>()));

    const json& sh = v["shape"];
    if (!sh.is_array()) fail("{}: shape is not a list (got {})", t, show(sh));
    e.shape.reserve(sh.size());
    for (size_t i = 0; i < sh.size(); ++i) {
        int64_t d = 0;
        if (!as_index(sh[i], d))
            fail("{}: shape {} has dimension {} = {} (dimensions are integers >= 0)", t, show(sh), i,
                 show(sh[i]));
        e.shape.push_back(d);
    }
    uint64_t bytes = 0;
    if (!byte_count(e.shape, dtype_size(e.dtype), bytes))
        fail("{}: shape {} of {} has too many elements (the byte count overflows 64 bits)", t,
             shape_string(e.shape), dtype_name(e.dtype));

    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !as_offset(off[0], e.begin) || !as_offset(off[1], e.end))
        fail("{}: data_offsets is not a list of two integers >= 0 (got {})", t, show(off));
    if (e.begin > e.end) fail("{}: data_offsets [{}, {}] have begin > end", t, e.begin, e.end);
    if (e.end > data_size)
        fail("{}: data_offsets [{}, {}] end beyond the data section ({} bytes)", t, e.begin, e.end, data_size);
    if (e.end - e.begin != bytes)
        fail("{}: data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", t, e.begin, e.end,
             e.end - e.begin, dtype_name(e.dtype), shape_string(e.shape), bytes);
    return e;
}

// The header (hn bytes at h) of a file whose data section holds data_size bytes. Fills
// meta; returns the tensors in data-section order (checked: back to back, covering it all).
std::vector<Entry> parse_header(const std::string& who, const uint8_t* h, uint64_t hn, uint64_t data_size,
                                std::map<std::string, std::string>& meta) {
    if (hn == 0) fail("{}: header is empty (length 0; it must be a JSON object)", who);
    if (h[0] != '{')
        fail("{}: header does not start with '{{' (byte 0x{:02x}; it must be a JSON object)", who, h[0]);
    // nlohmann's lexer takes a NUL byte for the end of the input, so "{}\0junk" would pass
    if (const void* z = std::memchr(h, 0, size_t(hn)))
        fail("{}: header has a NUL byte at offset {} (it must be JSON text, padded with spaces)", who,
             static_cast<const uint8_t*>(z) - h);
    {
        HeaderSax sax;
        if (!json::sax_parse(h, h + hn, &sax) || !sax.error.empty())
            fail("{}: {}", who, sax.error.empty() ? std::string("header is not valid JSON") : sax.error);
    }
    const json root = json::parse(h, h + hn, nullptr, /*allow_exceptions=*/false);
    if (!root.is_object()) fail("{}: header is not a JSON object", who);  // not reached: '{', valid

    std::vector<Entry> entries;
    entries.reserve(root.size());
    for (const auto& [name, v] : root.items()) {
        if (name == "__metadata__") {
            if (!v.is_object()) fail("{}: __metadata__ is not an object (got {})", who, show(v));
            for (const auto& [k, mv] : v.items()) {
                if (!mv.is_string())
                    fail("{}: __metadata__ value {} is not a string (got {})", who, q(k), show(mv));
                meta.emplace(k, mv.get<std::string>());
            }
            continue;
        }
        entries.push_back(parse_entry(who, name, v, data_size));
    }

    // The data section must be covered exactly: no overlaps, no holes (the format forbids both).
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
        if (a.begin != b.begin) return a.begin < b.begin;
        return a.end != b.end ? a.end < b.end : a.name < b.name;  // names: the same message every time
    });
    uint64_t pos = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
        const Entry& e = entries[i];
        if (e.begin < pos) {
            const Entry& p = entries[i - 1];  // pos > 0, so there is one, and it ends at pos
            fail("{}: tensors {} [{}, {}] and {} [{}, {}] overlap", who, q(p.name), p.begin, p.end, q(e.name),
                 e.begin, e.end);
        }
        if (e.begin > pos)
            fail("{}: bytes {}..{} of the data section belong to no tensor (the format allows no holes)", who,
                 pos, e.begin);
        pos = e.end;
    }
    if (pos != data_size)
        fail("{}: bytes {}..{} of the data section belong to no tensor (the format allows no holes)", who, pos,
             data_size);
    return entries;
}

StTensor empty_tensor(const Entry& e) {
    StTensor t;
    t.dtype = e.dtype;
    t.shape = e.shape;
    return t;
}

// ---- writing --------------------------------------------------------------------------------

std::string serialize(const std::string& who, const StFile& f) {
    json header = json::object();
    if (!f.metadata.empty()) header["__metadata__"] = f.metadata;
    uint64_t pos = 0;
    for (const auto& [name, t] : f.tensors) {
        if (name == "__metadata__") fail("{}: a tensor cannot be named __metadata__", who);
        uint64_t bytes = 0;
        if (!byte_count(t.shape, dtype_size(t.dtype), bytes))
            fail("{}: tensor {} has shape {} (dimensions must be >= 0, the size must fit 64 bits)", who, q(name),
                 shape_string(t.shape));
        if (t.data.size() != bytes)
            fail("{}: tensor {} is {} {}, which needs {} bytes, but holds {}", who, q(name),
                 dtype_name(t.dtype), shape_string(t.shape), bytes, t.data.size());
        header[name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {pos, pos + bytes}}};
        pos += bytes;
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const json::exception& e) {  // a name or metadata string that is not UTF-8
        fail("{}: cannot write the header: {}", who, e.what());
    }
    while (text.size() % 8) text += ' ';
    if (text.size() > kSafetensorsMaxHeader)
        fail("{}: the header would be {} bytes, over the limit of {} bytes readers accept", who, text.size(),
             kSafetensorsMaxHeader);

    std::string out;
    out.reserve(8 + text.size() + pos);
    const uint64_t hn = text.size();
    for (int i = 0; i < 8; ++i) out += char((hn >> (8 * i)) & 0xff);
    out += text;
    for (const auto& [name, t] : f.tensors) out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
    return out;
}

// ---- the file reader ------------------------------------------------------------------------

struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

// Exactly n bytes at offset off, or a message naming the file.
void read_at(const std::string& path, int fd, uint8_t* dst, uint64_t n, uint64_t off) {
    uint64_t got = 0;
    while (got < n) {
        const size_t chunk = size_t(std::min<uint64_t>(n - got, uint64_t(1) << 30));
        const ssize_t r = ::pread(fd, dst + got, chunk, off_t(off + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            fail("{}: read failed at byte {}: {}", path, off + got, std::strerror(errno));
        }
        if (r == 0) fail("{}: the file ended at byte {} while reading (did it shrink?)", path, off + got);
        got += uint64_t(r);
    }
}

}  // namespace

// ---- public -----------------------------------------------------------------------------------

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F64: return "F64";
        case DType::I32: return "I32";
        case DType::I64: return "I64";
        case DType::U8: return "U8";
        case DType::U64: return "U64";
    }
    return "?";
}

size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::F64: return 8;
        case DType::I32: return 4;
        case DType::I64: return 8;
        case DType::U8: return 1;
        case DType::U64: return 8;
    }
    return 0;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ',';
        s += std::to_string(shape[i]);
    }
    s += ']';
    return s;
}

std::string serialize_safetensors(const StFile& f) { return serialize("safetensors (in memory)", f); }

void write_safetensors(const std::string& path, const StFile& f) { write_file_atomic(path, serialize(path, f)); }

StFile parse_safetensors(const std::string& name_for_errors, const uint8_t* bytes, size_t n) {
    const std::string& who = name_for_errors;
    if (n > 0 && !bytes) fail("{}: no data ({} bytes claimed at a null pointer)", who, n);
    const uint64_t hn = check_prelude(who, n, bytes);
    const uint8_t* data = bytes + 8 + hn;
    StFile f;
    f.source = who;
    for (const Entry& e : parse_header(who, bytes + 8, hn, n - 8 - hn, f.metadata)) {
        StTensor t = empty_tensor(e);
        t.data.assign(data + e.begin, data + e.end);
        f.tensors.emplace(e.name, std::move(t));
    }
    return f;
}

StFile read_safetensors(const std::string& path) {
    Fd fd;
    // O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting for a writer;
    // reads of a regular file do not see the flag
    fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd.fd < 0) {
        if (errno == ENOENT) fail("{}: missing (no such file)", path);
        fail("{}: cannot open: {}", path, std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd.fd, &st) != 0) fail("{}: cannot stat: {}", path, std::strerror(errno));
    if (S_ISDIR(st.st_mode)) fail("{}: is a directory, not a safetensors file", path);
    if (!S_ISREG(st.st_mode)) fail("{}: is not a regular file", path);
    const uint64_t n = uint64_t(st.st_size);

    uint8_t first8[8] = {};
    if (n >= 8) read_at(path, fd.fd, first8, 8, 0);
    const uint64_t hn = check_prelude(path, n, first8);
    std::vector<uint8_t> header(hn);
    read_at(path, fd.fd, header.data(), hn, 8);

    StFile f;
    f.source = path;
    // in data-section order, back to back: one sequential pass over the rest of the file
    for (const Entry& e : parse_header(path, header.data(), hn, n - 8 - hn, f.metadata)) {
        StTensor t = empty_tensor(e);
        t.data.resize(e.end - e.begin);
        read_at(path, fd.fd, t.data.data(), e.end - e.begin, 8 + hn + e.begin);
        f.tensors.emplace(e.name, std::move(t));
    }
    return f;
}

// ---- typed helpers ------------------------------------------------------------------------------

namespace {
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::U64; };

std::string checkpoint_name(const StFile& f) { return f.source.empty() ? "(in memory)" : f.source; }
}  // namespace

template <typename T>
StTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape, const std::vector<T>& values) {
    uint64_t bytes = 0;
    if (!byte_count(shape, sizeof(T), bytes))
        fail("tensor {}: shape {} is invalid (dimensions must be >= 0, the size must fit 64 bits)", q(name),
             shape_string(shape));
    if (bytes / sizeof(T) != values.size())
        fail("tensor {}: shape {} holds {} elements, got {} values", q(name), shape_string(shape),
             bytes / sizeof(T), values.size());
    StTensor t;
    t.dtype = DTypeOf<T>::value;
    t.shape = shape;
    t.data.resize(bytes);
    if (bytes) std::memcpy(t.data.data(), values.data(), bytes);
    return t;
}

template <typename T>
void put_tensor(StFile& f, const std::string& name, const std::vector<int64_t>& shape, const std::vector<T>& values) {
    f.tensors.insert_or_assign(name, make_tensor(name, shape, values));
}

template <typename T>
std::vector<T> tensor_values(const std::string& name, const StTensor& t) {
    if (t.dtype != DTypeOf<T>::value)
        fail("tensor {}: has dtype {}, read as {}", q(name), dtype_name(t.dtype), dtype_name(DTypeOf<T>::value));
    uint64_t bytes = 0;
    if (!byte_count(t.shape, sizeof(T), bytes) || bytes != t.data.size())
        fail("tensor {}: {} {} holds {} bytes (inconsistent)", q(name), dtype_name(t.dtype),
             shape_string(t.shape), t.data.size());
    std::vector<T> v(t.data.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), t.data.data(), t.data.size());
    return v;
}

const StTensor& expect_tensor(const StFile& f, const std::string& name, DType dtype,
                              const std::vector<int64_t>& shape) {
    const auto it = f.tensors.find(name);
    if (it == f.tensors.end()) fail("checkpoint {}: missing tensor {}", checkpoint_name(f), q(name));
    const StTensor& t = it->second;
    if (t.dtype != dtype)
        fail("checkpoint {}: tensor {} has dtype {}, expected {}", checkpoint_name(f), q(name),
             dtype_name(t.dtype), dtype_name(dtype));
    if (t.shape != shape)
        fail("checkpoint {}: tensor {} has shape {}, expected {}", checkpoint_name(f), q(name),
             shape_string(t.shape), shape_string(shape));
    return t;
}

template <typename T>
std::vector<T> get_tensor(const StFile& f, const std::string& name, const std::vector<int64_t>& shape) {
    return tensor_values<T>(name, expect_tensor(f, name, DTypeOf<T>::value, shape));
}

#define SR_SAFETENSORS_INSTANTIATE(T)                                                                       \
    template StTensor make_tensor<T>(const std::string&, const std::vector<int64_t>&, const std::vector<T>&); \
    template void put_tensor<T>(StFile&, const std::string&, const std::vector<int64_t>&, const std::vector<T>&); \
    template std::vector<T> tensor_values<T>(const std::string&, const StTensor&);                           \
    template std::vector<T> get_tensor<T>(const StFile&, const std::string&, const std::vector<int64_t>&);
SR_SAFETENSORS_INSTANTIATE(float)
SR_SAFETENSORS_INSTANTIATE(double)
SR_SAFETENSORS_INSTANTIATE(int32_t)
SR_SAFETENSORS_INSTANTIATE(int64_t)
SR_SAFETENSORS_INSTANTIATE(uint8_t)
SR_SAFETENSORS_INSTANTIATE(uint64_t)
#undef SR_SAFETENSORS_INSTANTIATE

}  // namespace sr
