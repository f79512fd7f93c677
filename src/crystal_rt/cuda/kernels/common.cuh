// common.cuh - small generic device helpers shared by the crystal-rt kernels.
// Keep this file small and stable: other kernels (letterbox.cu, paste.cu) include it.
// Compiles with nvcc/NVRTC and with the CPU emulator (tests/cuda_emu/cuda_emu.hpp, which defines CUDA_EMU).
#pragma once

#if defined(__CUDACC_RTC__)
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#elif !defined(CUDA_EMU)
#include <stdint.h>
#endif

// Dynamic shared memory: `CRT_DYNAMIC_SMEM(int, buf);` declares `buf` as an int array in the
// launch's dynamic shared memory (C++ cannot express `extern __shared__` for the emulator).
#if defined(CUDA_EMU)
#define CRT_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_smem())
#else
#define CRT_DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

namespace crt {

// cv::borderInterpolate(p, n, BORDER_REFLECT_101): "c b | a b c d | c b a", repeated for p far outside.
__device__ __forceinline__ int reflect101(int p, int n) {
    if (n == 1) return 0;
    while (p < 0 || p >= n) p = p < 0 ? -p : 2 * n - 2 - p;
    return p;
}

// Clamp to a range (saturate_cast semantics on an already rounded int).
__device__ __forceinline__ int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// cv::saturate_cast<uchar/ushort>(float): round half to even, then clamp.
__device__ __forceinline__ uint8_t sat_u8(float v) { return (uint8_t)clamp_int(__float2int_rn(v), 0, 255); }
__device__ __forceinline__ uint16_t sat_u16(float v) { return (uint16_t)clamp_int(__float2int_rn(v), 0, 65535); }
__device__ __forceinline__ uint8_t sat_u8(int v) { return (uint8_t)clamp_int(v, 0, 255); }
__device__ __forceinline__ uint16_t sat_u16(int v) { return (uint16_t)clamp_int(v, 0, 65535); }

// Row `y` of a pitched image (pitch in bytes).
template <typename T>
__device__ __forceinline__ const T* row_ptr(const T* base, long long pitch_bytes, int y) {
    return reinterpret_cast<const T*>(reinterpret_cast<const unsigned char*>(base) + (long long)y * pitch_bytes);
}
template <typename T>
__device__ __forceinline__ T* row_ptr(T* base, long long pitch_bytes, int y) {
    return reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(base) + (long long)y * pitch_bytes);
}

}  // namespace crt
