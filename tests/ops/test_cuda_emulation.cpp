// test_cuda_emulation.cpp: the host emulation of the CUDA execution model itself
// (src/ops/cuda/emulation.h), on kernels written here: every thread of every block runs once
// with its own indices, __syncthreads() orders shared-memory traffic within a block as on a GPU,
// dynamic shared memory works (48 KiB at most, as a GPU gives by default), a barrier that not
// every thread of a block reaches fails the launch, and the order of work varies (threads between
// barriers, blocks of a launch) and shared memory, static and dynamic, starts each block as NaN,
// so that kernels that depend on either show it; a misaligned vector access fails the launch.
// Also the kernels of the backend that no Backend op runs, so that BackendOps never checks them:
// fill_uniform (the cuDNN wrapper's pseudo-random operands for checking its graph-API plans) and
// the storage conversions to_storage / from_storage.
// Compiled with the emulation's flags (tests/CMakeLists.txt); in builds without the CUDA
// toolkit's headers the one test says it is skipped.
#include <gtest/gtest.h>

#ifdef SR_CUDA_EMULATION
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iterator>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cuda/cuda_common.cuh"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/storage.cuh"
#include "ops/storage_backend.h"  // pack_storage, unpack_storage

namespace sr::cuda {
namespace {

// out[i] = global thread index of the thread that wrote it, for a 2-D block over a 2-D grid
__global__ void write_index(int* out, int n) {
    const int tx = int(blockIdx.x * blockDim.x + threadIdx.x);
    const int ty = int(blockIdx.y * blockDim.y + threadIdx.y);
    const int width = int(gridDim.x * blockDim.x);
    const int i = ty * width + tx;
    if (i < n) out[i] += i + 1;  // (+=: a thread run twice would show)
}

// A tree reduction in shared memory: each block sums its 256 values; wrong without barriers.
__global__ void block_sums(float* sums, const float* x) {
    SR_SHARED(float, sh, [256]);
    const unsigned t = threadIdx.x;
    sh[t] = x[blockIdx.x * 256 + t];
    __syncthreads();
    for (unsigned s = 128; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    if (t == 0) sums[blockIdx.x] = sh[0];
}

// Reverses each block's slice through dynamic shared memory.
__global__ void reverse_blocks(float* y, const float* x) {
    float* sh = dynamic_shared<float>();
    const unsigned t = threadIdx.x, n = blockDim.x;
    sh[t] = x[blockIdx.x * n + t];
    __syncthreads();
    y[blockIdx.x * n + t] = sh[n - 1 - t];
}

// Thread 0 leaves before the barrier the others wait at: undefined on a GPU, an error here.
__global__ void divergent_barrier(float* x) {
    if (threadIdx.x == 0) return;
    x[threadIdx.x] = 1.f;
    __syncthreads();
}

// A race: each thread reads its neighbour's shared value with no barrier between the write and
// the read. On a GPU what it sees depends on scheduling; here it depends on the block.
__global__ void missing_barrier(float* y) {
    SR_SHARED(float, sh, [64]);
    const unsigned t = threadIdx.x;
    sh[t] = float(blockIdx.x * 64 + t);
    y[blockIdx.x * 64 + t] = sh[(t + 1) % 64];
}

// Another race: block b reads what block b - 1 of the same launch writes.
__global__ void reads_the_previous_block(float* y) {
    const unsigned b = blockIdx.x;
    y[2 * b] = 1.f;
    y[2 * b + 1] = b > 0 ? y[2 * (b - 1)] : 1.f;
}

// Reads dynamic shared memory that nothing wrote.
__global__ void uninitialised_shared(float* y) {
    y[blockIdx.x * blockDim.x + threadIdx.x] = dynamic_shared<float>()[threadIdx.x];
}

// Block 0 writes its static shared array, the others read theirs unwritten.
__global__ void static_shared_written_by_block_0(float* y) {
    SR_SHARED(float, sh, [32]);
    if (blockIdx.x == 0) sh[threadIdx.x] = float(threadIdx.x);
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = sh[threadIdx.x];
}

// Eight floats at x + offset, one 16-byte vector load each (load_act8), doubled into y.
__global__ void load8_at(float* y, const float* x, int offset) {
    float v[8];
    load_act8(x + offset, size_t(threadIdx.x) * 8, v);
    for (int j = 0; j < 8; ++j) y[threadIdx.x * 8 + j] = 2.f * v[j];
}

// The message of the failure of the launch(es) in f; a test failure if none fails.
std::string launch_error(const std::function<void()>& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    ADD_FAILURE() << "the launch did not fail";
    return "";
}

TEST(CudaEmulation, EveryThreadRunsOnceWithItsIndices) {
    const int n = 3 * 16 * 2 * 8 - 5;  // the grid's last threads have nothing to do
    std::vector<int> out(n, 0);
    launch_kernel(write_index, dim3(3, 2), dim3(16, 8), 0, nullptr, out.data(), n);
    for (int i = 0; i < n; ++i) ASSERT_EQ(out[i], i + 1) << i;
}

TEST(CudaEmulation, BarriersOrderSharedMemory) {
    const int blocks = 5;
    std::vector<float> x(blocks * 256), sums(blocks, -1.f);
    std::iota(x.begin(), x.end(), 0.f);
    launch_kernel(block_sums, blocks, 256, 0, nullptr, sums.data(), x.data());
    for (int b = 0; b < blocks; ++b)  // 256 consecutive integers from 256 b
        EXPECT_EQ(sums[b], 256.f * 256.f * b + 255.f * 256.f / 2.f) << b;
}

TEST(CudaEmulation, DynamicSharedMemory) {
    const int blocks = 3, n = 96;
    std::vector<float> x(blocks * n), y(blocks * n, 0.f);
    std::iota(x.begin(), x.end(), 0.f);
    launch_kernel(reverse_blocks, blocks, n, n * sizeof(float), nullptr, y.data(), x.data());
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < n; ++t) ASSERT_EQ(y[b * n + t], x[b * n + n - 1 - t]);
}

TEST(CudaEmulation, AMissingBarrierGivesDifferentResultsInDifferentBlocks) {
    const int blocks = 4;
    std::vector<float> y(blocks * 64, 0.f);
    launch_kernel(missing_barrier, blocks, 64, 0, nullptr, y.data());
    // thread 0 of each block: its neighbour's value (64 b + 1) where the threads ran last to
    // first before it, the previous block's (or the initial) value where they ran first to last
    int right = 0, stale = 0;
    for (int b = 0; b < blocks; ++b) (y[b * 64] == float(b * 64 + 1) ? right : stale) += 1;
    EXPECT_GT(right, 0);
    EXPECT_GT(stale, 0);
}

TEST(CudaEmulation, BlocksOfALaunchRunInAnOrderThatVaries) {
    const int blocks = 6;
    std::vector<float> y(2 * blocks, 0.f);
    // two launches: in one the earlier blocks run first, in the other last
    int saw_unwritten = 0;
    for (int launch = 0; launch < 2; ++launch) {
        std::fill(y.begin(), y.end(), 0.f);
        launch_kernel(reads_the_previous_block, blocks, 1, 0, nullptr, y.data());
        if (y[3] == 0.f) ++saw_unwritten;
    }
    EXPECT_EQ(saw_unwritten, 1);
}

TEST(CudaEmulation, DynamicSharedMemoryStartsAsNaN) {
    const int blocks = 2, n = 32;
    std::vector<float> y(blocks * n, 0.f);
    launch_kernel(uninitialised_shared, blocks, n, n * sizeof(float), nullptr, y.data());
    for (float v : y) ASSERT_TRUE(std::isnan(v)) << v;
}

TEST(CudaEmulation, StaticSharedMemoryStartsEachBlockAsNaN) {
    const int blocks = 3, n = 32;
    // twice: block 0 runs first in one launch and last in the other, so in one of them the
    // blocks after it would find its values if the array kept them from block to block
    for (int launch = 0; launch < 2; ++launch) {
        std::vector<float> y(blocks * n, 0.f);
        launch_kernel(static_shared_written_by_block_0, blocks, n, 0, nullptr, y.data());
        for (int t = 0; t < n; ++t) ASSERT_EQ(y[t], float(t)) << launch;
        for (int i = n; i < blocks * n; ++i) ASSERT_TRUE(std::isnan(y[i])) << launch << " " << i;
    }
}

TEST(CudaEmulation, ABarrierNotEveryThreadReachesFails) {
    std::vector<float> x(64, 0.f);
    const std::string e =
        launch_error([&] { launch_kernel(divergent_barrier, 1, 64, 0, nullptr, x.data()); });
    EXPECT_NE(e.find("__syncthreads() reached by 63 of 64 threads"), std::string::npos) << e;
}

// 48 KiB of dynamic shared memory is what a launch gets without raising the kernel's limit
// (cudaFuncAttributeMaxDynamicSharedMemorySize), which no launcher here does: more fails on a
// GPU, and so here.
TEST(CudaEmulation, MoreThan48KiBOfDynamicSharedMemoryFails) {
    const int n = 32;
    std::vector<float> x(n, 1.f), y(n, 0.f);
    launch_kernel(reverse_blocks, 1, n, size_t(48) << 10, nullptr, y.data(), x.data());
    EXPECT_EQ(y[0], 1.f);
    const std::string e = launch_error([&] {
        launch_kernel(reverse_blocks, 1, n, (size_t(48) << 10) + 16, nullptr, y.data(), x.data());
    });
    EXPECT_NE(e.find("above the 48 KiB"), std::string::npos) << e;
}

// A GPU faults on a 16-byte load from an address that is not a multiple of 16 (the host may
// not): the emulation fails that launch, naming the access.
TEST(CudaEmulation, AMisalignedVectorAccessFails) {
    alignas(16) float x[40];
    std::iota(x, x + 40, 0.f);
    std::vector<float> y(32, 0.f);
    launch_kernel(load8_at, 1, 4, 0, nullptr, y.data(), x, 8);  // 32 bytes in: aligned
    EXPECT_EQ(y[0], 16.f);
    EXPECT_EQ(y[31], 78.f);
    const std::string e = launch_error(
        [&] { launch_kernel(load8_at, 1, 4, 0, nullptr, y.data(), x, 2); });  // 8 bytes in
    EXPECT_NE(e.find("misaligned 16-byte access"), std::string::npos) << e;
    std::fill(y.begin(), y.end(), 0.f);  // the emulator runs the next launch as usual
    launch_kernel(load8_at, 1, 4, 0, nullptr, y.data(), x, 0);
    EXPECT_EQ(y[31], 62.f);
}

TEST(EmulatedKernels, FillUniformIsUniformRoundedAndRepeatable) {
    const size_t n = 100003;  // not a multiple of a block
    const float scale = 0.5f;
    for (Storage s : {Storage::f32, Storage::f16, Storage::bf16}) {
        SCOPED_TRACE(testing::Message() << "storage " << int(s));
        auto fill = [&](uint32_t seed) {
            std::vector<float> buf(n, -7.f);  // room for n values of any storage
            fill_uniform(nullptr, s, buf.data(), n, seed, scale);
            std::vector<float> v(n);
            unpack_storage(v.data(), buf.data(), n, s);
            return std::make_pair(buf, v);
        };
        const auto [raw, v] = fill(7);
        double sum = 0, sumsq = 0;
        size_t inner = 0;
        for (float x : v) {
            ASSERT_TRUE(std::isfinite(x));
            ASSERT_GE(x, -scale);
            ASSERT_LE(x, scale);
            sum += x;
            sumsq += double(x) * x;
            inner += std::fabs(x) < scale / 2;
        }
        // uniform on [-scale, scale): mean 0, variance scale^2 / 3, half of it within scale / 2
        // (standard errors about 5e-4, 2e-4 and 1.6e-3 at this n)
        EXPECT_NEAR(sum / n, 0.0, 4e-3);
        EXPECT_NEAR(sumsq / n, scale * scale / 3, 2e-3);
        EXPECT_NEAR(double(inner) / n, 0.5, 1e-2);
        // stored rounded to the format: packing the values again changes nothing
        std::vector<float> again(n, -7.f);
        pack_storage(again.data(), v.data(), n, s);
        EXPECT_EQ(std::memcmp(again.data(), raw.data(), n * storage_bytes(s)), 0);
        // the same seed gives the same values; another seed, others
        EXPECT_EQ(fill(7).second, v);
        const auto other = fill(8).second;
        size_t same = 0;
        for (size_t i = 0; i < n; ++i) same += other[i] == v[i];
        EXPECT_LT(same, n / 100);
        // consecutive values are unrelated (a counter-based hash could repeat its input's pattern)
        double lag1 = 0;
        for (size_t i = 1; i < n; ++i) lag1 += double(v[i]) * v[i - 1];
        EXPECT_NEAR(lag1 / (n - 1) / (scale * scale / 3), 0.0, 0.02);
    }
}

// to_storage and from_storage (storage.cu), the conversions the cuDNN wrapper makes of the weights
// (a 16-bit copy before each forward and backward-data call; the 16-bit weight gradient widened)
// and the linear layer of its 16-bit input: neither is a Backend op, so BackendOps never runs
// them. They must equal the CPU reference's pack_storage and unpack_storage (ops/storage_backend.h)
// bit for bit: widening on every one of the 65536 16-bit patterns, rounding on every 4099th fp32
// pattern (about a million values of every exponent and sign) plus the edge cases below. A NaN
// needs only to stay a NaN.
TEST(EmulatedKernels, StorageConversionsEqualTheCpuPackingBitForBit) {
    auto bits = [](float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        return u;
    };
    auto from_bits = [](uint32_t u) {
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    };
    std::vector<float> src;
    for (uint64_t u = 0; u <= 0xffffffffull; u += 4099) src.push_back(from_bits(uint32_t(u)));
    const float edge[] = {0.f, -0.f, 1.f + 0x1p-11f, 1.f + 0x3p-11f, 1.f + 0x1p-8f, 1.f + 0x3p-8f,
                          65504.f, 65519.f, 65520.f, -65520.f, 1e6f, -1e30f, 0x1p-24f, 0x1p-25f,
                          0x1.8p-25f, -0x1p-26f, 1e-40f, -1e-45f, 3.3895313892515355e38f,
                          3.4028235e38f, -3.4028235e38f, INFINITY, -INFINITY, NAN};
    src.insert(src.end(), std::begin(edge), std::end(edge));
    const size_t n = src.size();
    for (Storage s : {Storage::f32, Storage::f16, Storage::bf16}) {
        SCOPED_TRACE(testing::Message() << "storage " << int(s));
        const size_t b = storage_bytes(s);
        std::vector<float> gpu(n, -7.f), cpu(n, -7.f);  // room for n values of any storage
        to_storage(nullptr, s, gpu.data(), src.data(), n);
        pack_storage(cpu.data(), src.data(), n, s);
        size_t mismatches = 0;
        for (size_t i = 0; i < n; ++i) {
            uint32_t g = 0, c = 0;
            std::memcpy(&g, reinterpret_cast<const char*>(gpu.data()) + i * b, b);
            std::memcpy(&c, reinterpret_cast<const char*>(cpu.data()) + i * b, b);
            if (g == c) continue;
            float gw, cw;  // a NaN on both sides counts as equal
            unpack_storage(&gw, reinterpret_cast<const char*>(gpu.data()) + i * b, 1, s);
            unpack_storage(&cw, reinterpret_cast<const char*>(cpu.data()) + i * b, 1, s);
            if (std::isnan(gw) && std::isnan(cw)) continue;
            if (++mismatches <= 5)
                ADD_FAILURE() << "to_storage(" << src[i] << ", bits " << std::hex << bits(src[i])
                              << "): " << g << " where the CPU packs " << c;
        }
        EXPECT_EQ(mismatches, 0u) << "of " << n << " values";
        // the tail of the buffer beyond n values of s is untouched
        if (b < 4) EXPECT_EQ(gpu[n - 1], -7.f);

        // widening: every 16-bit pattern (fp32: the values above, back unchanged)
        std::vector<float> packed(n, 0.f);
        size_t m = n;
        if (b == 2) {
            m = 65536;
            for (uint32_t u = 0; u < m; ++u) {
                const uint16_t h = uint16_t(u);
                std::memcpy(reinterpret_cast<char*>(packed.data()) + u * 2, &h, 2);
            }
        } else {
            packed = src;
        }
        std::vector<float> wide(m, -7.f), ref(m, -7.f);
        from_storage(nullptr, s, wide.data(), packed.data(), m);
        unpack_storage(ref.data(), packed.data(), m, s);
        mismatches = 0;
        for (size_t i = 0; i < m; ++i) {
            if (bits(wide[i]) == bits(ref[i]) || (std::isnan(wide[i]) && std::isnan(ref[i])))
                continue;
            if (++mismatches <= 5)
                ADD_FAILURE() << "from_storage of pattern " << std::hex << i << ": "
                              << bits(wide[i]) << " where the CPU unpacks " << bits(ref[i]);
        }
        EXPECT_EQ(mismatches, 0u) << "of " << m << " patterns";
    }
}

}  // namespace
}  // namespace sr::cuda

#else

TEST(CudaEmulation, Available) {
    GTEST_SKIP() << "no CUDA emulation in this build (CUDA toolkit headers not found)";
}

#endif
