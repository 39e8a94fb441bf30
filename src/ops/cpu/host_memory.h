// host_memory.h: the CPU backend's large buffers (activations, conv workspaces), aligned and,
// from 4 MiB up, on 2 MiB boundaries with a transparent-huge-page hint (madvise), so the kernel
// maps them with 2 MiB pages where it can: a 4 GiB arena then costs ~2,000 page faults instead
// of ~1,000,000 (each expensive in a virtual machine), and the training loop's sweeps over it
// miss the TLB less. Without THP (or with it off) the hint is ignored and pages stay 4 KiB.
#pragma once
#include <cstddef>

namespace sr::cpu {

// At least `bytes` (rounded up to the alignment), 64-byte aligned, uninitialised; nullptr when
// the memory is not there. Free with free_host.
void* alloc_host(size_t bytes);
void free_host(void* p);

}  // namespace sr::cpu
