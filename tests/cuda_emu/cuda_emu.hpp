// cuda_emu.hpp - run unchanged CUDA .cu kernels on the CPU with g++ (C++20), for tests.
//
// Compile with:  g++ -O1 -std=c++20 -pthread -ffp-contract=off  (no FMA contraction, so float
// arithmetic rounds every operation like CUDA's __fmul_rn/__fadd_rn or nvcc --fmad=false).
// Include this header first, then the .cu sources, then host code that calls emu::launch:
//
//   emu::launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, kernel, args...);
//
// Model: every block of the grid runs, one block at a time, on blockDim.x*y*z std::threads (one
// OS thread per CUDA thread, created once per launch and reused for every block). __syncthreads()
// is a std::barrier over the threads of the block; a thread that returns from the kernel drops out
// of that barrier (like exited threads on Volta and later). Because blocks run one after the other,
// `__shared__` can be plain `static` storage; dynamic shared memory is one buffer per launch.
//
// Limits (know them before trusting a green test):
//  * Blocks run sequentially, never concurrently: inter-block races and inter-block deadlocks
//    (spin-waiting on another block) are NOT exercised; "last block" patterns with atomics work.
//  * No warps: there are no warp intrinsics (__shfl_*, __ballot_sync, __syncwarp, cooperative
//    groups) and no warp-synchronous execution; code relying on implicit lock-step is not modelled.
//    A missing __syncthreads shows up as a ThreadSanitizer report (-fsanitize=thread) or, by
//    chance, a wrong result.
//  * `extern __shared__ T x[];` cannot be expressed in C++: kernels use the macro
//    CRT_DYNAMIC_SMEM(T, x) (see src/crystal_rt/cuda/kernels/common.cuh), which maps to
//    emu::dynamic_smem() here. `__shared__` variables are not re-initialised between blocks or
//    launches (like the GPU: they are undefined at block start). One launch at a time per process
//    (a global mutex serialises emu::launch).
//  * Memory model: host memory, no address spaces, no caches; __ldg/__ldcg are plain loads;
//    __threadfence is a seq_cst fence. Atomics are std::atomic_ref (int, unsigned, float add).
//  * Float intrinsics: only the *_rn / _rz ones listed below; host libm for floorf/rintf etc.
//    No half/bfloat, no textures, no streams, no dynamic parallelism, no printf formatting checks.
//  * Up to 1024 threads per block; one OS thread each, so keep test blocks small for speed.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define CUDA_EMU 1

// ---- qualifiers -----------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already.

// ---- vector types -----------------------------------------------------------------------------
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT(google-explicit-constructor)
    constexpr operator uint3() const { return {x, y, z}; }
};
struct alignas(4) uchar4 {
    unsigned char x, y, z, w;
};
struct alignas(8) ushort4 {
    unsigned short x, y, z, w;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) {
    return {x, y, z, w};
}
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

constexpr int warpSize = 32;

// ---- built-in indices (per OS thread = per CUDA thread) ---------------------------------------
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace emu {

struct LaunchState;
inline thread_local LaunchState* tl_state = nullptr;

struct BlockBarrierReset {
    LaunchState* state;
    void operator()() noexcept;
};

struct LaunchState {
    unsigned nthreads = 1;
    dim3 grid;
    unsigned long long nblocks = 0;
    unsigned long long next_block = 0;  // written only by the gate's completion step
    bool done = false;
    unsigned char* dyn = nullptr;
    std::size_t dyn_bytes = 0;
    alignas(std::barrier<>) unsigned char block_bar_storage[sizeof(std::barrier<>)];
    std::barrier<>* block_bar = nullptr;
    std::barrier<BlockBarrierReset>* gate = nullptr;
};

// Runs once per block boundary while every thread waits on the gate: starts the next block.
inline void BlockBarrierReset::operator()() noexcept {
    if (state->block_bar != nullptr) {
        state->block_bar->~barrier();
        state->block_bar = nullptr;
    }
    if (state->next_block >= state->nblocks) {
        state->done = true;
        return;
    }
    state->block_bar = new (state->block_bar_storage) std::barrier<>(static_cast<std::ptrdiff_t>(state->nthreads));
    ++state->next_block;
}

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

inline void* dynamic_smem() { return tl_state != nullptr ? tl_state->dyn : nullptr; }
inline std::size_t dynamic_smem_bytes() { return tl_state != nullptr ? tl_state->dyn_bytes : 0; }

inline void syncthreads() {
    if (tl_state == nullptr || tl_state->block_bar == nullptr) {
        std::fprintf(stderr, "cuda_emu: __syncthreads() outside a kernel launch\n");
        std::abort();
    }
    tl_state->block_bar->arrive_and_wait();
}

template <class... P, class... A>
void launch(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, void (*kernel)(P...), A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "emu::launch: wrong number of kernel arguments");
    const unsigned long long nthreads = 1ULL * block.x * block.y * block.z;
    const unsigned long long nblocks = 1ULL * grid.x * grid.y * grid.z;
    if (nthreads == 0 || nthreads > 1024) throw std::invalid_argument("emu::launch: block must have 1..1024 threads");
    if (nblocks == 0) throw std::invalid_argument("emu::launch: empty grid");
    if (dynamic_shared_bytes > (256u << 10)) throw std::invalid_argument("emu::launch: dynamic smem > 256 KiB");

    std::lock_guard<std::mutex> lock(launch_mutex());
    const std::tuple<std::decay_t<P>...> params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    std::vector<std::max_align_t> dyn(dynamic_shared_bytes / sizeof(std::max_align_t) + 1);

    LaunchState state;
    state.nthreads = static_cast<unsigned>(nthreads);
    state.grid = grid;
    state.nblocks = nblocks;
    state.dyn = reinterpret_cast<unsigned char*>(dyn.data());
    state.dyn_bytes = dynamic_shared_bytes;
    std::barrier<BlockBarrierReset> gate(static_cast<std::ptrdiff_t>(nthreads), BlockBarrierReset{&state});
    state.gate = &gate;

    auto body = [&](unsigned tid) {
        tl_state = &state;
        threadIdx = uint3{tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
        blockDim = block;
        gridDim = grid;
        for (;;) {
            gate.arrive_and_wait();  // completion step picked the next block (or finished)
            if (state.done) break;
            const unsigned long long b = state.next_block - 1;
            blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                             static_cast<unsigned>(b / (1ULL * grid.x * grid.y))};
            std::apply(kernel, params);
            state.block_bar->arrive_and_drop();
        }
        tl_state = nullptr;
    };
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(body, t);
    for (auto& th : threads) th.join();
}

template <class T>
inline T atomic_cas_loop_max(T* addr, T val) {
    std::atomic_ref<T> a(*addr);
    T old = a.load();
    while (old < val && !a.compare_exchange_weak(old, val)) {
    }
    return old;
}
template <class T>
inline T atomic_cas_loop_min(T* addr, T val) {
    std::atomic_ref<T> a(*addr);
    T old = a.load();
    while (old > val && !a.compare_exchange_weak(old, val)) {
    }
    return old;
}

}  // namespace emu

// ---- synchronisation ----------------------------------------------------------------------------
inline void __syncthreads() { emu::syncthreads(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- atomics ---------------------------------------------------------------------------------------
template <class T>
concept emu_atomic_int = std::is_same_v<T, int> || std::is_same_v<T, unsigned> ||
                         std::is_same_v<T, unsigned long long>;

template <emu_atomic_int T>
inline T atomicAdd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_add(v); }
inline float atomicAdd(float* a, float v) { return std::atomic_ref<float>(*a).fetch_add(v); }
template <emu_atomic_int T>
inline T atomicSub(T* a, T v) { return std::atomic_ref<T>(*a).fetch_sub(v); }
template <emu_atomic_int T>
inline T atomicExch(T* a, T v) { return std::atomic_ref<T>(*a).exchange(v); }
template <emu_atomic_int T>
inline T atomicMax(T* a, T v) { return emu::atomic_cas_loop_max(a, v); }
template <emu_atomic_int T>
inline T atomicMin(T* a, T v) { return emu::atomic_cas_loop_min(a, v); }
template <emu_atomic_int T>
inline T atomicAnd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_and(v); }
template <emu_atomic_int T>
inline T atomicOr(T* a, T v) { return std::atomic_ref<T>(*a).fetch_or(v); }
template <emu_atomic_int T>
inline T atomicCAS(T* a, T compare, T val) {
    std::atomic_ref<T>(*a).compare_exchange_strong(compare, val);
    return compare;  // the old value either way
}
inline unsigned atomicInc(unsigned* a, unsigned limit) {
    std::atomic_ref<unsigned> r(*a);
    unsigned old = r.load();
    while (!r.compare_exchange_weak(old, old >= limit ? 0u : old + 1u)) {
    }
    return old;
}

// ---- loads ------------------------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }

// ---- float intrinsics (no contraction: compile with -ffp-contract=off) ---------------------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
inline float __int2float_rn(int i) { return static_cast<float>(i); }
inline float __uint2float_rn(unsigned i) { return static_cast<float>(i); }

namespace emu {
// CUDA float->int conversions saturate and map NaN to 0.
inline int sat_float_to_int(float r) {
    if (std::isnan(r)) return 0;
    if (r >= 2147483648.0f) return std::numeric_limits<int>::max();
    if (r < -2147483648.0f) return std::numeric_limits<int>::min();
    return static_cast<int>(r);
}
}  // namespace emu
inline int __float2int_rn(float x) { return emu::sat_float_to_int(std::nearbyint(x)); }  // half to even
inline int __float2int_rz(float x) { return emu::sat_float_to_int(std::trunc(x)); }
inline int __float2int_rd(float x) { return emu::sat_float_to_int(std::floor(x)); }
inline int __float2int_ru(float x) { return emu::sat_float_to_int(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) {
    if (std::isnan(x) || x <= 0.0f) return 0;
    const float r = std::nearbyint(x);
    return r >= 4294967296.0f ? 0xffffffffu : static_cast<unsigned>(r);
}

// ---- min / max as CUDA's overload set (mixed int/unsigned use the common type) ----------------------------
template <class A, class B>
    requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin(static_cast<C>(a), static_cast<C>(b));
    else return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}
template <class A, class B>
    requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax(static_cast<C>(a), static_cast<C>(b));
    else return static_cast<C>(a) > static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}
