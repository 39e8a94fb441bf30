// version.cpp: see version.h. The build's facts arrive as compile definitions (CMakeLists.txt);
// the commit from the file that cmake/git_revision.cmake writes at each build.
#include "core/version.h"

#include <oneapi/dnnl/dnnl.h>
#include <fmt/format.h>

#ifndef SPEEDRUN_VERSION
#define SPEEDRUN_VERSION "unknown"
#endif
#ifndef SPEEDRUN_BUILD_TYPE
#define SPEEDRUN_BUILD_TYPE "unknown"
#endif

namespace sr {

const char* program_version() { return SPEEDRUN_VERSION; }

namespace {

std::string onednn_version() {
    const dnnl_version_t* v = dnnl_version();
    return fmt::format("{}.{}.{}", v->major, v->minor, v->patch);
}

std::string cuda_text() {
#ifdef SPEEDRUN_HAVE_CUDA
    return fmt::format("on (nvcc {}, GPU code for {})", SPEEDRUN_CUDA_COMPILER_VERSION, SPEEDRUN_CUDA_ARCHS);
#else
    return "off (built without a CUDA toolkit with cuDNN)";
#endif
}

const char* on_off(bool on) { return on ? "on" : "off"; }

#ifdef SPEEDRUN_HAVE_MPI
constexpr bool kMpi = true;
#else
constexpr bool kMpi = false;
#endif
#ifdef SPEEDRUN_HAVE_NCCL
constexpr bool kNccl = true;
#else
constexpr bool kNccl = false;
#endif
#ifdef SPEEDRUN_HAVE_ONNX
constexpr bool kOnnx = true;
#else
constexpr bool kOnnx = false;
#endif

}  // namespace

std::string build_description() {
    return fmt::format(
        "speedrun {} (git {})\n"
        "built with {} {}, {} build; oneDNN {}\n"
        "CUDA backend: {}\n"
        "MPI: {}, NCCL: {}, ONNX export: {}",
        program_version(), git_revision(),
#ifdef __clang__
        "clang",
#else
        "g++",
#endif
        __VERSION__, SPEEDRUN_BUILD_TYPE, onednn_version(), cuda_text(), on_off(kMpi), on_off(kNccl),
        on_off(kOnnx));
}

nlohmann::json build_json() {
    return {{"version", program_version()}, {"git", git_revision()},
            {"build_type", SPEEDRUN_BUILD_TYPE}, {"compiler", __VERSION__},
            {"cuda", cuda_text()}, {"onednn", onednn_version()}, {"mpi", kMpi}, {"nccl", kNccl},
            {"onnx_export", kOnnx}};
}

}  // namespace sr
