// safetensors.h: a small, strict reader and writer of the safetensors format
// (https://github.com/huggingface/safetensors), used for checkpoints.
//
// Layout: an 8-byte little-endian u64 N, then N bytes of JSON header, then the data section.
// The header is one object: an optional "__metadata__": {string: string}, and for each tensor
// "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, the offsets being
// relative to the start of the data section. Data is raw little-endian, row-major.
//
// The writer pads the header with spaces so that N is a multiple of 8, lays the tensors out
// back to back in name order and writes the file atomically (write_file_atomic).
//
// The reader accepts only what the format allows and throws sr::Error naming the file and the
// fault otherwise: too short, header length beyond the file or over 100 MiB, header not a JSON
// object (or nested deeper than any header needs, or with a key twice), a tensor entry that is
// not an object or lacks or adds a key, an unsupported dtype, a shape that is not a list of
// non-negative integers or whose element count overflows, data_offsets that are not two
// integers begin <= end inside the data section, a byte length other than elements * dtype
// size, tensors that overlap or leave holes in the data section (the format forbids both), and
// metadata that is not an object of strings, and an array of more than 64 values (no shape has
// that many dimensions). It never reads out of bounds, and what it allocates is bounded by a small
// multiple of the file's (or buffer's) size.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sr {

// The dtypes we read and write (the format has more: F16, BF16, BOOL, ...; those are refused).
enum class DType { F32, F64, I32, I64, U8, U64 };

const char* dtype_name(DType t);  // "F32", ...
size_t dtype_size(DType t);       // bytes per element

struct StTensor {
    DType dtype = DType::F32;
    std::vector<int64_t> shape;  // [] is a scalar (one element)
    std::vector<uint8_t> data;   // prod(shape) * dtype_size(dtype) bytes, little-endian
};

struct StFile {
    std::map<std::string, std::string> metadata;
    std::map<std::string, StTensor> tensors;
    std::string source;  // where it was read from (for messages); not written
};

// The largest header the reader accepts (the reference implementation's limit is 100 MB).
constexpr uint64_t kSafetensorsMaxHeader = uint64_t(100) << 20;

// The whole file as bytes. Throws (naming the tensor) if a tensor's data size does not match
// its shape and dtype, a dimension is negative, or a name is "__metadata__".
std::string serialize_safetensors(const StFile& f);
// serialize_safetensors, written atomically: the target is replaced whole or not at all.
void write_safetensors(const std::string& path, const StFile& f);

// Strict reader; throws sr::Error "<path>: <fault>".
StFile read_safetensors(const std::string& path);
// The same checks on bytes in memory; name_for_errors starts every message.
StFile parse_safetensors(const std::string& name_for_errors, const uint8_t* bytes, size_t n);

// ---- typed helpers --------------------------------------------------------------------------
// T is one of float (F32), double (F64), int32_t (I32), int64_t (I64), uint8_t (U8),
// uint64_t (U64).

// "[2,3]"
std::string shape_string(const std::vector<int64_t>& shape);

// A tensor holding values; throws "tensor 'name': shape [a,b] holds N elements, got M values".
template <typename T>
StTensor make_tensor(const std::string& name, const std::vector<int64_t>& shape, const std::vector<T>& values);

// make_tensor, stored in f under name (replacing any tensor of that name).
template <typename T>
void put_tensor(StFile& f, const std::string& name, const std::vector<int64_t>& shape, const std::vector<T>& values);

// The tensor, checked: "checkpoint X: missing tensor 'Y'", "checkpoint X: tensor 'Y' has
// dtype F64, expected F32", "checkpoint X: tensor 'Y' has shape [a,b], expected [c,d]"
// (X is f.source, or "(in memory)").
const StTensor& expect_tensor(const StFile& f, const std::string& name, DType dtype,
                              const std::vector<int64_t>& shape);

// expect_tensor with T's dtype, then the values.
template <typename T>
std::vector<T> get_tensor(const StFile& f, const std::string& name, const std::vector<int64_t>& shape);

// The values of a tensor of T's dtype; throws naming the tensor if the dtype differs.
template <typename T>
std::vector<T> tensor_values(const std::string& name, const StTensor& t);

}  // namespace sr
