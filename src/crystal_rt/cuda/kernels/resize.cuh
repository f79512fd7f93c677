// OpenCV's INTER_LINEAR source coordinates (resize.cpp semantics, OpenCV's own code, not IPP),
// shared by letterbox.cu and paste.cu. Double-precision steps are rounded one by one as on the CPU.
#pragma once
#include "common.cuh"

namespace crt_resize {

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ double dmul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double dadd(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double ddiv(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double dfma(double a, double b, double c) { return __fma_rn(a, b, c); }
#else
__device__ __forceinline__ double dmul(double a, double b) { return a * b; }
__device__ __forceinline__ double dadd(double a, double b) { return a + b; }
__device__ __forceinline__ double ddiv(double a, double b) { return a / b; }
__device__ __forceinline__ double dfma(double a, double b, double c) { return std::fma(a, b, c); }
#endif

// a*b + c*d in float32 as OpenCV computes it: each operation rounded (x86 wheels), or with GCC/NEON's
// contraction on aarch64 (fma != 0: the left product fused, fma(a, b, c*d); OpenCV's v_muladd).
__device__ __forceinline__ float mul_add2(float a, float b, float c, float d, int fma) {
    return fma ? __fmaf_rn(a, b, __fmul_rn(c, d)) : __fadd_rn(__fmul_rn(a, b), __fmul_rn(c, d));
}

// OpenCV's source position for destination index d along an axis (scale = 1 / (dst_len / src_len)).
// i0, i1: the two source indices (clamped into [0, src_len)), f: the weight of i1.
// clamp_frac: horizontal axis (fraction forced to 0 outside the image, as OpenCV does for x only).
struct Coord {
    int i0, i1;
    float f;
};

__device__ __forceinline__ Coord linear_coord(int d, double scale, int src_len, bool clamp_frac, int fma) {
    const double pos = fma ? dfma((double)d + 0.5, scale, -0.5) : dadd(dmul((double)d + 0.5, scale), -0.5);
    float fx = (float)pos;
    int sx = (int)floorf(fx);
    fx = __fsub_rn(fx, (float)sx);
    if (clamp_frac) {
        if (sx < 0) {
            fx = 0.0f;
            sx = 0;
        }
        if (sx >= src_len - 1) {
            fx = 0.0f;
            sx = src_len - 1;
        }
    }
    Coord c;
    c.i0 = crt::clamp_int(sx, 0, src_len - 1);
    c.i1 = crt::clamp_int(sx + 1, 0, src_len - 1);
    c.f = fx;
    return c;
}

__device__ __forceinline__ double axis_scale(int src_len, int dst_len) {
    return ddiv(1.0, ddiv((double)dst_len, (double)src_len));
}

}  // namespace crt_resize
