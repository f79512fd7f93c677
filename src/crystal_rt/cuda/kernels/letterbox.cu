// letterbox.cu - letterbox (or stretch) resize + gray->3 channels + normalisation + HWC->NCHW, one pass.
//
// Writes the engine input float32 [1, 3, H, W] directly (out_h x out_w; a stretch is the letterbox
// with new_w = out_w and new_h = out_h). Pixel (x, y) of the canvas is
//   inside the resized image (x < new_w, y < new_h):  r = resize(src)(x, y, c)  (integer, like
//                                                      cv2.resize(src, (new_w, new_h), INTER_LINEAR))
//   in the black padding:                               r = 0
//   out[c][y][x] = r * gain[c] + bias[c]   (float32, two rounded operations, never an FMA)
// which equals crystal_rt.runtime.preprocess.normalize(resize(src, step)) on the CPU.
//
// The resize reproduces OpenCV's portable (non-IPP) INTER_LINEAR code path, chosen as cv2 does:
//   * same size                       -> copy;
//   * exactly 2x smaller on both axes -> OpenCV switches INTER_LINEAR to its "area fast" path:
//                                        (a + b + c + d + 2) >> 2 over each 2x2 block (8 and 16 bit);
//   * otherwise bilinear with half-pixel centres. Source coordinate of output column dx:
//       fx = (float)((dx + 0.5) * scale_x - 0.5)   (double arithmetic, then rounded to float)
//       sx = floor(fx); fx -= sx
//     scale_x = 1 / (new_w / src_w) in double. Columns left of the image use (sx, fx) = (0, 0) and
//     right of it (src_w - 1, 0); rows keep their fraction but the two source rows are clamped
//     into the image (so a border row is blended with itself, with OpenCV's rounding).
//     uint8:  weights are 11-bit fixed point, w = rint(f * 2048) for f in {1 - fx, fx}; the
//             horizontal pass is an exact int sum h = s0*w0 + s1*w1; the vertical pass is OpenCV's
//             (((v0 * (h0 >> 4)) >> 16) + ((v1 * (h1 >> 4)) >> 16) + 2) >> 2.
//     uint16: float weights (1 - fx, fx); h = s0*w0 + s1*w1, v = h0*v0 + h1*v1 in float32 with
//             every product and sum rounded, then rint (half to even) and clamp to 16 bit.
//   fma (last parameter) != 0 reproduces aarch64 OpenCV builds instead (Jetson) for 16 bit, whose
//   compiler and NEON v_muladd fuse: the source coordinate (d + 0.5) * scale - 0.5 is one double FMA,
//   and each a*b + c*d above is fma(a, b, c*d). 8-bit ignores it: there the aarch64 wheels use a HAL,
//   and crystal-rt's CPU path computes OpenCV's portable 8-bit code itself (crystal_rt/arith.py).
//   On x86 the opencv-python wheels route 16-bit (and float) linear resize through Intel IPP,
//   whose arithmetic differs from OpenCV's own in the last bit (16-bit: by 1 for some pixels).
//   This kernel equals cv2 with cv2.ipp.setUseIPP(False), and cv2 on ARM (Jetson); see the tests.
//
// Source: uint8 or uint16, gray (channels = 1) or interleaved RGB (channels = 3), rows `src_pitch`
// bytes apart. Launch: any 2-D grid/block (grid-stride loops over the H x W canvas), e.g.
// block (32, 8), grid (ceil(W / 32), ceil(H / 8)).
#include "common.cuh"
#include "resize.cuh"

namespace crt_lb {

using namespace crt_resize;

// saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)
__device__ __forceinline__ int fixed_weight(float w) {
    return crt::clamp_int(__float2int_rn(__fmul_rn(w, 2048.0f)), -32768, 32767);
}

enum { kCopy = 0, kArea2 = 1, kLinear = 2 };

template <typename T>
__device__ __forceinline__ int px(const T* row, int channels, int x, int c) {
    return (int)row[x * channels + c];
}

// Resized integer value of channel c at (x, y) of the new image; cx/cy are the column/row coordinates.
template <typename T, bool kFixedPoint>
__device__ __forceinline__ int resized_value(const T* src, long long pitch, int channels, int mode, int x, int y,
                                             const Coord& cx, const Coord& cy, int c, int fma) {
    if (mode == kCopy) return px(crt::row_ptr(src, pitch, y), channels, x, c);
    if (mode == kArea2) {
        const T* r0 = crt::row_ptr(src, pitch, 2 * y);
        const T* r1 = crt::row_ptr(src, pitch, 2 * y + 1);
        const int sum = px(r0, channels, 2 * x, c) + px(r0, channels, 2 * x + 1, c) + px(r1, channels, 2 * x, c) +
                        px(r1, channels, 2 * x + 1, c);
        return (sum + 2) >> 2;
    }
    const T* r0 = crt::row_ptr(src, pitch, cy.i0);
    const T* r1 = crt::row_ptr(src, pitch, cy.i1);
    const int s00 = px(r0, channels, cx.i0, c), s01 = px(r0, channels, cx.i1, c);
    const int s10 = px(r1, channels, cx.i0, c), s11 = px(r1, channels, cx.i1, c);
    if (kFixedPoint) {
        const int a0 = fixed_weight(__fsub_rn(1.0f, cx.f)), a1 = fixed_weight(cx.f);
        const int b0 = fixed_weight(__fsub_rn(1.0f, cy.f)), b1 = fixed_weight(cy.f);
        const int h0 = s00 * a0 + s01 * a1;
        const int h1 = s10 * a0 + s11 * a1;
        const int v = (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2;
        return crt::clamp_int(v, 0, 255);
    }
    const float a0 = __fsub_rn(1.0f, cx.f), b0 = __fsub_rn(1.0f, cy.f);
    const float h0 = mul_add2((float)s00, a0, (float)s01, cx.f, fma);
    const float h1 = mul_add2((float)s10, a0, (float)s11, cx.f, fma);
    const float v = mul_add2(h0, b0, h1, cy.f, fma);
    return crt::clamp_int(__float2int_rn(v), 0, 65535);
}

template <typename T, bool kFixedPoint>
__device__ __forceinline__ void letterbox_normalize(const T* __restrict__ src, long long src_pitch, int src_w,
                                                    int src_h, int channels, int new_w, int new_h, int out_w, int out_h,
                                                    float gain0, float gain1, float gain2, float bias0, float bias1,
                                                    float bias2, float* __restrict__ out, int fma) {
    int mode = kLinear;
    if (new_w == src_w && new_h == src_h) {
        mode = kCopy;
    } else if (src_w == 2 * new_w && src_h == 2 * new_h) {
        mode = kArea2;
    }
    const double scale_x = axis_scale(src_w, new_w), scale_y = axis_scale(src_h, new_h);
    const long long plane = (long long)out_w * out_h;
    // 8-bit: one arithmetic everywhere (OpenCV's portable code, which crystal-rt's CPU path computes
    // itself on aarch64, where cv2's 8-bit resize is a HAL's); fma only for 16-bit (cv2's own code)
    if (kFixedPoint) fma = 0;
    for (int y = blockIdx.y * blockDim.y + threadIdx.y; y < out_h; y += gridDim.y * blockDim.y) {
        Coord cy = {0, 0, 0.0f};
        if (mode == kLinear && y < new_h) cy = linear_coord(y, scale_y, src_h, false, fma);
        for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < out_w; x += gridDim.x * blockDim.x) {
            int r0 = 0, r1 = 0, r2 = 0;
            if (x < new_w && y < new_h) {
                Coord cx = {0, 0, 0.0f};
                if (mode == kLinear) cx = linear_coord(x, scale_x, src_w, true, fma);
                if (channels == 1) {
                    r0 = resized_value<T, kFixedPoint>(src, src_pitch, 1, mode, x, y, cx, cy, 0, fma);
                    r1 = r0;
                    r2 = r0;
                } else {
                    r0 = resized_value<T, kFixedPoint>(src, src_pitch, 3, mode, x, y, cx, cy, 0, fma);
                    r1 = resized_value<T, kFixedPoint>(src, src_pitch, 3, mode, x, y, cx, cy, 1, fma);
                    r2 = resized_value<T, kFixedPoint>(src, src_pitch, 3, mode, x, y, cx, cy, 2, fma);
                }
            }
            const long long o = (long long)y * out_w + x;
            out[o] = __fadd_rn(__fmul_rn((float)r0, gain0), bias0);
            out[plane + o] = __fadd_rn(__fmul_rn((float)r1, gain1), bias1);
            out[2 * plane + o] = __fadd_rn(__fmul_rn((float)r2, gain2), bias2);
        }
    }
}

}  // namespace crt_lb

// uint8 source (gray or interleaved RGB) -> float32 [3, H, W].
extern "C" __global__ void
    crt_letterbox_normalize_u8(const uint8_t* __restrict__ src, long long src_pitch, int src_w, int src_h,
                               int channels, int new_w, int new_h, int out_w, int out_h, float gain0, float gain1,
                               float gain2, float bias0, float bias1, float bias2, float* __restrict__ out,
                               int fma) {
    crt_lb::letterbox_normalize<uint8_t, true>(src, src_pitch, src_w, src_h, channels, new_w, new_h, out_w, out_h,
                                                gain0, gain1, gain2, bias0, bias1, bias2, out, fma);
}

// uint16 source (gray or interleaved RGB) -> float32 [3, H, W].
extern "C" __global__ void
    crt_letterbox_normalize_u16(const uint16_t* __restrict__ src, long long src_pitch, int src_w, int src_h,
                                int channels, int new_w, int new_h, int out_w, int out_h, float gain0, float gain1,
                                float gain2, float bias0, float bias1, float bias2, float* __restrict__ out,
                                int fma) {
    crt_lb::letterbox_normalize<uint16_t, false>(src, src_pitch, src_w, src_h, channels, new_w, new_h, out_w, out_h,
                                                  gain0, gain1, gain2, bias0, bias1, bias2, out, fma);
}
