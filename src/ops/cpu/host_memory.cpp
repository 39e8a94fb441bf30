// host_memory.cpp: see host_memory.h.
#include "ops/cpu/host_memory.h"

#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sr::cpu {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugeFrom = size_t(4) << 20;  // smaller buffers: cache-line alignment only
}  // namespace

void* alloc_host(size_t bytes) {
    if (bytes < kHugeFrom) {
        const size_t n = (bytes + 63) / 64 * 64;
        return std::aligned_alloc(64, n ? n : 64);
    }
    const size_t n = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, n);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) madvise(p, n, MADV_HUGEPAGE);  // a hint: refused or ignored, the pages stay small
#endif
    return p;
}

void free_host(void* p) { std::free(p); }

}  // namespace sr::cpu
