// cuda_off.cpp: what a build without a CUDA toolkit links instead of src/ops/cuda/.
#include "ops/backend.h"

namespace sr {

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
int cuda_compute_capability(int) { return 0; }
std::string cublas_load_error() { return "this build has no CUDA backend"; }

std::unique_ptr<Backend> make_cuda_backend(int, std::string* why_not, Storage, bool) {
    if (why_not)
        *why_not = "this build has no CUDA backend (CMake found no CUDA toolkit with cuDNN; "
                   "see README, 'GPU build')";
    return nullptr;
}

}  // namespace sr
