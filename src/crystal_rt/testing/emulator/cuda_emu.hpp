// cuda_emu.hpp - run unchanged CUDA .cu kernels on the CPU with g++ (C++20), for tests.
//
// Compile with:  g++ -O1 -std=c++20 -pthread -ffp-contract=off  (no FMA contraction, so float
// arithmetic rounds every operation like CUDA's __fmul_rn/__fadd_rn or nvcc --fmad=false).
// Include this header first, then the .cu sources, then host code that calls emu::launch:
//
//   emu::launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, kernel, args...);
//
// Model: every block of the grid runs, one block at a time. Two ways to run its threads:
//  * fibers (default): every CUDA thread is a fiber on the launching OS thread; the fibers run in
//    order until each returns or reaches __syncthreads(), and the barrier opens when every live
//    thread waits at it (a thread that returned drops out, like exited threads on Volta and later).
//    Deterministic and fast: a switch saves a few registers (x86-64 assembly; ucontext elsewhere).
//  * -DCUDA_EMU_THREADS: one std::thread per CUDA thread and a std::barrier, so ThreadSanitizer can
//    see the threads of a block race (the TSan tests use it).
// Because blocks run one after the other, `__shared__` can be plain `static` storage; dynamic
// shared memory is one buffer per launch.
//
// Limits (know them before trusting a green test):
//  * Blocks run sequentially, never concurrently: inter-block races and inter-block deadlocks
//    (spin-waiting on another block) are NOT exercised; "last block" patterns with atomics work.
//  * No warps: there are no warp intrinsics (__shfl_*, __ballot_sync, __syncwarp, cooperative
//    groups) and no warp-synchronous execution; code relying on implicit lock-step is not modelled.
//    A missing __syncthreads shows up as a ThreadSanitizer report (threads mode, -fsanitize=thread)
//    or a wrong result.
//  * `extern __shared__ T x[];` cannot be expressed in C++: kernels use the macro
//    CRT_DYNAMIC_SMEM(T, x) (see src/crystal_rt/cuda/kernels/common.cuh), which maps to
//    emu::dynamic_smem() here. `__shared__` variables are not re-initialised between blocks or
//    launches (like the GPU: they are undefined at block start). One launch at a time per process
//    (a global mutex serialises emu::launch).
//  * Memory model: host memory, no address spaces, no caches; __ldg/__ldcg are plain loads;
//    __threadfence is a seq_cst fence. Atomics are std::atomic_ref (int, unsigned, float add).
//  * Float intrinsics: only the *_rn / _rz ones listed below; host libm for floorf/rintf etc.
//    No half/bfloat, no textures, no streams, no dynamic parallelism, no printf formatting checks.
//  * Up to 1024 threads per block. The fibers mode keeps one translation unit per library (its
//    switch routine is top-level assembly).
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

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

inline void check_launch(unsigned long long nthreads, unsigned long long nblocks, std::size_t smem) {
    if (nthreads == 0 || nthreads > 1024) throw std::invalid_argument("emu::launch: block must have 1..1024 threads");
    if (nblocks == 0) throw std::invalid_argument("emu::launch: empty grid");
    if (smem > (256u << 10)) throw std::invalid_argument("emu::launch: dynamic smem > 256 KiB");
}

inline uint3 index3(unsigned long long i, dim3 d) {
    return uint3{static_cast<unsigned>(i % d.x), static_cast<unsigned>((i / d.x) % d.y),
                 static_cast<unsigned>(i / (1ULL * d.x * d.y))};
}

#if defined(CUDA_EMU_THREADS)
// ---- threads mode: one std::thread per CUDA thread (for ThreadSanitizer builds) --------------------

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
    check_launch(nthreads, nblocks, dynamic_shared_bytes);

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
        threadIdx = index3(tid, block);
        blockDim = block;
        gridDim = grid;
        for (;;) {
            gate.arrive_and_wait();  // completion step picked the next block (or finished)
            if (state.done) break;
            blockIdx = index3(state.next_block - 1, grid);
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

#else
// ---- fibers mode (default): every CUDA thread of a block is a fiber on the launching OS thread ------
//
// The threads of a block run one after another until each returns or reaches __syncthreads();
// when every live thread waits at the barrier, all are released (threads that returned drop out,
// as on Volta and later). Switching is a few callee-saved registers (x86-64 assembly below; other
// CPUs use <ucontext.h>), so a launch costs about as much as the kernel's own arithmetic. The
// order is deterministic: a missing barrier shows up as a wrong result or under CUDA_EMU_THREADS
// with ThreadSanitizer.

#if !defined(__x86_64__)
}  // namespace emu
#include <ucontext.h>
namespace emu {
#endif

struct Fiber {
    void* sp = nullptr;  // saved stack pointer (x86-64)
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    unsigned char* stack = nullptr;
    uint3 tid{0, 0, 0};
    int state = 0;  // 0 runnable, 1 waiting at the barrier, 2 returned
};

struct FiberLaunch {
    Fiber* fibers = nullptr;
    unsigned count = 0;
    Fiber* current = nullptr;
    void* main_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t main_uc;
#endif
    void (*body)(void*) = nullptr;
    void* body_arg = nullptr;
    unsigned char* dyn = nullptr;
    std::size_t dyn_bytes = 0;
};

inline thread_local FiberLaunch* tl_fibers = nullptr;
constexpr std::size_t kFiberStack = 256u << 10;  // reserved per CUDA thread; pages are touched lazily

inline void* dynamic_smem() { return tl_fibers != nullptr ? tl_fibers->dyn : nullptr; }
inline std::size_t dynamic_smem_bytes() { return tl_fibers != nullptr ? tl_fibers->dyn_bytes : 0; }

#if defined(__x86_64__)
extern "C" void crt_emu_switch(void** save_sp, void* load_sp);
extern "C" void crt_emu_trampoline();
// System V x86-64: save the callee-saved registers, MXCSR and the x87 control word, switch stacks.
asm(R"(
    .text
    .p2align 4
    .globl crt_emu_switch
    .hidden crt_emu_switch
    .type crt_emu_switch,@function
crt_emu_switch:
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
    .size crt_emu_switch,.-crt_emu_switch
    .p2align 4
    .globl crt_emu_trampoline
    .hidden crt_emu_trampoline
    .type crt_emu_trampoline,@function
crt_emu_trampoline:
    movq %r12, %rdi
    call crt_emu_fiber_main
    ud2
    .size crt_emu_trampoline,.-crt_emu_trampoline
)");
#endif

extern "C" __attribute__((used, visibility("hidden"))) inline void crt_emu_fiber_main(Fiber* f) {
    FiberLaunch* L = tl_fibers;
    L->body(L->body_arg);
    f->state = 2;
#if defined(__x86_64__)
    crt_emu_switch(&f->sp, L->main_sp);
#else
    swapcontext(&f->uc, &L->main_uc);
#endif
    std::abort();  // a returned fiber is never resumed
}

#if !defined(__x86_64__)
inline void fiber_entry_uc(unsigned hi, unsigned lo) {
    crt_emu_fiber_main(reinterpret_cast<Fiber*>((static_cast<std::uintptr_t>(hi) << 32) | lo));
}
#endif

inline void fiber_start(FiberLaunch* L, Fiber* f) {
    f->state = 0;
#if defined(__x86_64__)
    // Initial frame, popped by crt_emu_switch: [mxcsr|fpucw] r15 r14 r13 r12(=f) rbx rbp, then `ret`
    // into the trampoline with rsp 16-byte aligned for its call.
    auto* top = reinterpret_cast<std::uint64_t*>(f->stack + kFiberStack);
    std::uint64_t* sp = top - 2;  // keeps (sp after `ret`) % 16 == 0
    *--sp = reinterpret_cast<std::uint64_t>(&crt_emu_trampoline);
    *--sp = 0;                                    // rbp
    *--sp = 0;                                    // rbx
    *--sp = reinterpret_cast<std::uint64_t>(f);   // r12
    *--sp = 0;                                    // r13
    *--sp = 0;                                    // r14
    *--sp = 0;                                    // r15
    std::uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(*reinterpret_cast<std::uint16_t*>(&csr[1])));
    --sp;
    std::memcpy(sp, csr, 8);
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = kFiberStack;
    f->uc.uc_link = nullptr;
    const auto p = reinterpret_cast<std::uintptr_t>(f);
    makecontext(&f->uc, reinterpret_cast<void (*)()>(&fiber_entry_uc), 2, static_cast<unsigned>(p >> 32),
                static_cast<unsigned>(p & 0xffffffffu));
#endif
    (void)L;
}

inline void fiber_resume(FiberLaunch* L, Fiber* f) {
    L->current = f;
    threadIdx = f->tid;
#if defined(__x86_64__)
    crt_emu_switch(&L->main_sp, f->sp);
#else
    swapcontext(&L->main_uc, &f->uc);
#endif
}

inline void syncthreads() {
    FiberLaunch* L = tl_fibers;
    if (L == nullptr || L->current == nullptr) {
        std::fprintf(stderr, "cuda_emu: __syncthreads() outside a kernel launch\n");
        std::abort();
    }
    Fiber* f = L->current;
    f->state = 1;
#if defined(__x86_64__)
    crt_emu_switch(&f->sp, L->main_sp);
#else
    swapcontext(&f->uc, &L->main_uc);
#endif
    threadIdx = f->tid;
}

// Fiber stacks, reserved once per process and reused by every launch (lazily committed pages).
// Called with launch_mutex() held; 1024 stacks of kFiberStack (256 MiB of address space, committed
// only where touched).
inline unsigned char* fiber_stacks() {
    static unsigned char* base = static_cast<unsigned char*>(::operator new(std::size_t{1024} * kFiberStack,
                                                                           std::align_val_t{64}));
    return base;
}

template <class... P, class... A>
void launch(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, void (*kernel)(P...), A&&... args) {
    static_assert(sizeof...(P) == sizeof...(A), "emu::launch: wrong number of kernel arguments");
    const unsigned long long nthreads = 1ULL * block.x * block.y * block.z;
    const unsigned long long nblocks = 1ULL * grid.x * grid.y * grid.z;
    check_launch(nthreads, nblocks, dynamic_shared_bytes);

    std::lock_guard<std::mutex> lock(launch_mutex());
    using Params = std::tuple<std::decay_t<P>...>;
    Params params(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
    std::vector<std::max_align_t> dyn(dynamic_shared_bytes / sizeof(std::max_align_t) + 1);
    std::vector<Fiber> fibers(nthreads);
    unsigned char* stacks = fiber_stacks();

    struct Call {
        void (*kernel)(P...);
        Params* params;
    } call{kernel, &params};
    FiberLaunch L;
    L.fibers = fibers.data();
    L.count = static_cast<unsigned>(nthreads);
    L.body = [](void* arg) {
        auto* c = static_cast<Call*>(arg);
        std::apply(c->kernel, *c->params);
    };
    L.body_arg = &call;
    L.dyn = reinterpret_cast<unsigned char*>(dyn.data());
    L.dyn_bytes = dynamic_shared_bytes;
    FiberLaunch* saved = tl_fibers;
    tl_fibers = &L;
    blockDim = block;
    gridDim = grid;
    for (unsigned t = 0; t < nthreads; ++t) {
        fibers[t].stack = stacks + std::size_t{t} * kFiberStack;
        fibers[t].tid = index3(t, block);
    }
    for (unsigned long long b = 0; b < nblocks; ++b) {
        blockIdx = index3(b, grid);
        for (auto& f : fibers) fiber_start(&L, &f);
        for (;;) {
            bool waiting = false;
            for (auto& f : fibers) {
                if (f.state == 0) fiber_resume(&L, &f);
                waiting = waiting || f.state == 1;
            }
            if (!waiting) break;
            for (auto& f : fibers) {
                if (f.state == 1) f.state = 0;  // every live thread reached the barrier: release it
            }
        }
    }
    L.current = nullptr;
    tl_fibers = saved;
}
#endif

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
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
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
