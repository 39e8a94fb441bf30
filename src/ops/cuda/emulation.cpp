// emulation.cpp: the host emulation's runtime (emulation.h): fibers for the threads of a block,
// the barrier, and fail_at for the emulated launchers. Built only into the emulation test
// library (tests/CMakeLists.txt), never into the real CUDA backend.
//
// A fiber switch on x86-64 is the few instructions below (callee-saved registers, stack pointer,
// the SSE and x87 control words): ucontext's swapcontext makes a system call per switch (the
// signal mask), which cost the emulated tests most of their time (two switches per thread).
// Elsewhere (or with SR_EMU_UCONTEXT defined) ucontext does it.
#include "ops/cuda/emulation.h"

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cuda/cuda_common.cuh"

// Under AddressSanitizer (SPEEDRUN_SANITIZE=ON) the switches say which stack runs next
// (__sanitizer_start/finish_switch_fiber), and a fiber's stack is cleared of the shadow of the
// frames it had when last left (a thread that returned leaves its scheduler frame, one left
// waiting at a barrier by a failed launch its kernel's frames, redzones included) before it
// starts afresh: otherwise ASan reports the new frames' writes as overflows of the old ones.
#if defined(__SANITIZE_ADDRESS__)
#define SR_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && defined(__linux__) && !defined(SR_EMU_UCONTEXT)
#define SR_EMU_ASM_SWITCH 1
// sr_emu_switch(save, to): saves this context's stack pointer in *save, continues the one whose
// stack pointer is `to`.
extern "C" void sr_emu_switch(void** save, void* to);
asm(R"(
    .text
    .globl sr_emu_switch
    .type sr_emu_switch, @function
sr_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sr_emu_switch, .-sr_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

namespace sr::emu {

Launch g_launch;
unsigned long long g_block_serial = 0;

namespace {

constexpr size_t kStackBytes = size_t(64) << 10;  // per thread: the kernels keep small frames

// A switched-out context, and the switch: saves the running one in `save`, continues `to`.
#ifdef SR_EMU_ASM_SWITCH
struct Context {
    void* sp = nullptr;  // the stack pointer it was left at
};
void switch_context(Context& save, Context& to) { sr_emu_switch(&save.sp, to.sp); }
#else
using Context = ucontext_t;
void switch_context(Context& save, Context& to) { swapcontext(&save, &to); }
#endif

struct Fiber {
    Context context;
    uint3 index{0, 0, 0};
    bool done = false;
    std::unique_ptr<char[]> stack;
};

struct Scheduler {
    Context main;
    std::vector<Fiber> fibers;
    Fiber* current = nullptr;
    const std::function<void()>* body = nullptr;
    std::vector<float4> shared;  // the dynamic shared memory of the running block
    size_t launches = 0;         // (the blocks' order alternates from launch to launch)
    std::string fault;           // what a thread did that a GPU faults on (fiber_fault)
    const void* main_bottom = nullptr;  // the scheduler's stack (for ASan's switch annotations)
    size_t main_size = 0;
};
Scheduler g_sched;

[[noreturn]] void emu_fail(const std::string& what) {
    sr::cuda::fail_at("emulation", "launch", __FILE__, __LINE__, what.c_str());
}

// From the running fiber back to the scheduler, and from the scheduler into fiber f.
// A fiber that will not be switched to again (finished, or faulted) says so (`last`).
void to_scheduler(Fiber& f, bool last = false) {
#ifdef SR_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(last ? nullptr : &fake_stack, g_sched.main_bottom,
                                   g_sched.main_size);
    switch_context(f.context, g_sched.main);
    __sanitizer_finish_switch_fiber(fake_stack, &g_sched.main_bottom, &g_sched.main_size);
#else
    (void)last;
    switch_context(f.context, g_sched.main);
#endif
}
void to_fiber(Fiber& f) {
#ifdef SR_EMU_ASAN
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f.stack.get(), kStackBytes);
    switch_context(g_sched.main, f.context);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    switch_context(g_sched.main, f.context);
#endif
}

// A fiber's whole life: the kernel's body for its thread, then back to the scheduler for good.
[[noreturn]] void fiber_main() {
#ifdef SR_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched.main_bottom, &g_sched.main_size);
#endif
    (*g_sched.body)();
    Fiber& f = *g_sched.current;
    f.done = true;
    to_scheduler(f, /*last=*/true);
    __builtin_unreachable();  // (a finished fiber is never switched to again)
}

// From inside a kernel: ends the running thread and, with it, the launch, which fails saying
// `what` (an exception cannot leave a fiber's stack, so the scheduler throws it).
[[noreturn]] void fiber_fault(std::string what) {
    Fiber* f = g_sched.current;
    if (!f) emu_fail(what);
    g_sched.fault = std::move(what);
    to_scheduler(*f, /*last=*/true);
    __builtin_unreachable();  // (a faulted fiber is never switched to again)
}

// Sets fiber f up to start fiber_main on its own stack at the next to_fiber(f).
void start(Fiber& f) {
    f.done = false;
#ifdef SR_EMU_ASAN
    __asan_unpoison_memory_region(f.stack.get(), kStackBytes);
#endif
#ifdef SR_EMU_ASM_SWITCH
    // The frame sr_emu_switch pops: control words, r15 .. rbp (zeros), then fiber_main as the
    // return address, placed so that fiber_main starts with the stack alignment of a call.
    auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStackBytes) & ~uintptr_t(15);
    auto* frame = reinterpret_cast<uint64_t*>(top - 16);  // the return address: 16-aligned
    frame[0] = reinterpret_cast<uint64_t>(&fiber_main);
    frame[1] = 0;
    for (int r = 1; r <= 6; ++r) frame[-r] = 0;
    uint32_t control[2];
    asm volatile("stmxcsr %0" : "=m"(control[0]));
    asm volatile("fnstcw %0" : "=m"(control[1]));
    std::memcpy(&frame[-7], control, 8);
    f.context.sp = &frame[-7];
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;  // (fiber_main never returns)
    makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

}  // namespace

void misaligned(const void* p, unsigned bytes, const char* what) {
    const uint3& t = thread_index();
    const uint3& b = g_launch.block_index;
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", p);
    fiber_fault("misaligned " + std::to_string(bytes) + "-byte access to " + what + " (" + addr +
                ") in block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," +
                std::to_string(b.z) + "), thread (" + std::to_string(t.x) + "," +
                std::to_string(t.y) + "," + std::to_string(t.z) + "): a GPU faults there");
}

const uint3& thread_index() {
    if (!g_sched.current) emu_fail("threadIdx read outside a kernel");
    return g_sched.current->index;
}

void sync_threads() {
    Fiber* f = g_sched.current;
    if (!f) emu_fail("__syncthreads() outside a kernel");
    to_scheduler(*f);
}

void* dynamic_shared_memory() { return g_sched.shared.data(); }

void run_grid(dim3 grid, dim3 block, size_t shared_bytes,
              const std::function<void()>& thread_body) {
    if (g_sched.current) emu_fail("a kernel launched from inside a kernel");
    const size_t threads = size_t(block.x) * block.y * block.z;
    if (threads == 0 || threads > 1024) emu_fail("block of " + std::to_string(threads) + " threads");
    if (size_t(grid.x) * grid.y * grid.z == 0) emu_fail("grid of 0 blocks");
    if (grid.y > 65535 || grid.z > 65535) emu_fail("grid.y or grid.z above 65535");
    // A launch may ask for 48 KiB of dynamic shared memory; more (up to 227 KiB on an H100) needs
    // cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, ...) first, which no
    // launcher here calls: on a GPU the launch would fail.
    if (shared_bytes > (size_t(48) << 10))
        emu_fail(std::to_string(shared_bytes) +
                 " bytes of dynamic shared memory, above the 48 KiB a launch gets without "
                 "cudaFuncAttributeMaxDynamicSharedMemorySize");
    Scheduler& s = g_sched;
    if (s.fibers.size() < threads) s.fibers.resize(threads);
    for (size_t t = 0; t < threads; ++t)
        if (!s.fibers[t].stack) s.fibers[t].stack.reset(new char[kStackBytes]);
    s.shared.resize((shared_bytes + sizeof(float4) - 1) / sizeof(float4) + 1);
    s.body = &thread_body;
    g_launch.grid = grid;
    g_launch.block = block;
    // The order of work varies, as a GPU's does, so that a kernel whose result depends on it (a
    // thread reading another's shared value before the barrier, a block reading what another
    // block of the same launch writes) gives different results in different blocks or launches
    // and fails its comparison: every other launch runs its blocks last to first, and within a
    // block every other round (between barriers) runs its threads last to first, alternating
    // from block to block. Shared memory starts each block as all-ones bytes (NaN as float or
    // double, -1 as an integer), as a GPU gives no initial value: the dynamic array here, each
    // static one (SR_SHARED) when the block's first thread reaches its declaration.
    const bool blocks_reversed = (s.launches++ & 1) != 0;
    const size_t blocks = size_t(grid.x) * grid.y * grid.z;
    for (size_t i = 0; i < blocks; ++i) {
        const size_t b = blocks_reversed ? blocks - 1 - i : i;
        const unsigned bx = unsigned(b % grid.x), by = unsigned(b / grid.x % grid.y),
                       bz = unsigned(b / (size_t(grid.x) * grid.y));
        g_launch.block_index = uint3{bx, by, bz};
        ++g_block_serial;
        std::memset(static_cast<void*>(s.shared.data()), 0xff, s.shared.size() * sizeof(float4));
        for (size_t t = 0; t < threads; ++t) {
            Fiber& f = s.fibers[t];
            f.index = uint3{unsigned(t % block.x), unsigned(t / block.x % block.y),
                            unsigned(t / (size_t(block.x) * block.y))};
            start(f);
        }
        // rounds: every thread runs to its next barrier (or its end); a barrier is
        // passed when all threads wait at it
        for (size_t round = 0;; ++round) {
            size_t done = 0, waiting = 0;
            const bool reversed = ((b + round) & 1) != 0;
            for (size_t i_t = 0; i_t < threads; ++i_t) {
                const size_t t = reversed ? threads - 1 - i_t : i_t;
                Fiber& f = s.fibers[t];
                if (f.done) {
                    ++done;
                    continue;
                }
                s.current = &f;
                to_fiber(f);
                s.current = nullptr;
                if (!s.fault.empty()) {
                    s.body = nullptr;
                    std::string what;
                    what.swap(s.fault);
                    emu_fail(what);
                }
                if (f.done)
                    ++done;
                else
                    ++waiting;
            }
            if (done == threads) break;
            if (done > 0)
                emu_fail("__syncthreads() reached by " + std::to_string(waiting) + " of " +
                         std::to_string(threads) + " threads of block (" + std::to_string(bx) +
                         "," + std::to_string(by) + "," + std::to_string(bz) +
                         "); the others returned");
        }
    }
    s.body = nullptr;
}

}  // namespace sr::emu

namespace sr::cuda {

void fail_at(const char* lib, const char* call, const char* file, int line, const char* msg) {
    throw std::runtime_error(std::string(lib) + ": " + call + " failed at " + file + ":" +
                             std::to_string(line) + ": " + msg);
}

}  // namespace sr::cuda
