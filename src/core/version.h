// version.h: what this program is, for --version and for the JSON files a run writes (so a
// result can be traced to the source and build that produced it).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace sr {

const char* program_version();  // the project's version (CMakeLists.txt), e.g. "0.1.0"
const char* git_revision();     // the source commit at build time, "-dirty.<hash of the change>" if its sources changed; or "unknown"

// Several lines: version and commit, compiler and build type, and each optional part built in or
// not (CUDA with its toolkit and GPU architectures, MPI, NCCL, ONNX), oneDNN's version.
std::string build_description();

// {"version", "git", "build_type", "compiler", "cuda", "onednn", "mpi", "nccl", "onnx_export"}:
// the same in a JSON object (the last three true or false).
nlohmann::json build_json();

}  // namespace sr
