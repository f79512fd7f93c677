// paste.cu - paste M x M mask probabilities into their boxes and threshold (> 0.5), per instance.
//
// Semantics: crystal_rt.runtime.postprocess.paste_mask (torchvision paste_masks_in_image with
// padding=1): the M x M map is zero-padded to P x P (P = M + 2), resized with OpenCV's float32
// INTER_LINEAR to the expanded box (box_w x box_h) and thresholded (prob > 0.5f) inside the part of
// the box that lies in the image. The expanded box (float32 arithmetic, truncated to int) and the
// crop are computed on the host (crystal_rt.cuda.launches.paste_layout) with the same numpy code as
// paste_mask, and passed here per instance as 9 ints:
//   meta[i*9 + 0..8] = prob_index, ex1, ey1, box_w, box_h, x0, y0, crop_w, crop_h
// (prob_index: which M x M map of `probs`; (ex1, ey1): top-left of the expanded box in image
// pixels; (x0, y0): top-left of the crop in image pixels; crop = [y0, y0+crop_h) x [x0, x0+crop_w)).
// Output: one uint8 buffer; instance i's crop is crop_h rows of crop_w bytes (0 or 1), row-major,
// starting at byte offsets[i] (the host's exclusive prefix sum of crop_w * crop_h).
//
// The resize reproduces OpenCV's portable float path, chosen as cv2.resize chooses it:
//   * box P x P                  -> copy;
//   * box (P/2) x (P/2) exactly  -> "area fast": 2x2 mean, sum * 0.25f. OpenCV sums the first
//                                   4*floor(box_w/4) columns of each row with its 128-bit SIMD code
//                                   as (a + b) + (c + d) and the rest with scalar code as
//                                   ((a + b) + c) + d (a, b: top pair, c, d: bottom pair); so do we;
//   * otherwise bilinear, half-pixel centres, float32 weights (1 - f, f), h = p0*w0 + p1*w1 per
//     row then v = h0*v0 + h1*v1, each operation rounded; coordinates as in letterbox.cu. With fma
//     (last parameter) != 0, aarch64 OpenCV's contracted arithmetic instead (see letterbox.cu).
// The threshold is `v > 0.5f`: a pixel at exactly 0.5 is background, as on the CPU. Against cv2 with
// IPP disabled (and cv2 on ARM) the result is identical. The x86 opencv-python wheels resize float32
// through Intel IPP, whose bilinear arithmetic differs from OpenCV's by up to ~2e-6 absolute: only
// pixels whose interpolated probability lies within that distance of 0.5 can differ (tests count them).
//
// Launch: block (256), grid (any x, n_instances); threads stride over each instance's crop.
#include "common.cuh"
#include "resize.cuh"

namespace crt_paste {

using namespace crt_resize;

// The padded map: 0 on the one-pixel border, the M x M probabilities inside.
__device__ __forceinline__ float padded(const float* __restrict__ prob, int m, int y, int x) {
    if (y < 1 || x < 1 || y > m || x > m) return 0.0f;
    return prob[(y - 1) * m + (x - 1)];
}

}  // namespace crt_paste

enum { CRT_PASTE_META = 9 };

extern "C" __global__ void
    crt_paste_masks(const float* __restrict__ probs, int m, const int* __restrict__ meta,
                    const long long* __restrict__ offsets, int n_instances, unsigned char* __restrict__ out,
                    int fma) {
    using namespace crt_paste;
    const int inst = blockIdx.y;
    if (inst >= n_instances) return;
    const int* mt = meta + (long long)inst * CRT_PASTE_META;
    const int prob_index = mt[0], ex1 = mt[1], ey1 = mt[2], box_w = mt[3], box_h = mt[4];
    const int x0 = mt[5], y0 = mt[6], crop_w = mt[7], crop_h = mt[8];
    const long long area = (long long)crop_w * crop_h;
    if (area <= 0) return;
    const float* prob = probs + (long long)prob_index * m * m;
    unsigned char* dst = out + offsets[inst];
    const int p = m + 2;
    int mode = 2;  // linear
    if (box_w == p && box_h == p) {
        mode = 0;  // copy
    } else if (p == 2 * box_w && p == 2 * box_h) {
        mode = 1;  // area fast
    }
    const double scale_x = axis_scale(p, box_w);
    const double scale_y = axis_scale(p, box_h);
    const int simd_cols = (box_w / 4) * 4;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < area; i += stride) {
        const int cy = (int)(i / crop_w), cx = (int)(i - (long long)cy * crop_w);
        const int bx = x0 - ex1 + cx, by = y0 - ey1 + cy;  // pixel in the resized box
        float v;
        if (mode == 0) {
            v = padded(prob, m, by, bx);
        } else if (mode == 1) {
            const float a = padded(prob, m, 2 * by, 2 * bx), b = padded(prob, m, 2 * by, 2 * bx + 1);
            const float c = padded(prob, m, 2 * by + 1, 2 * bx), d = padded(prob, m, 2 * by + 1, 2 * bx + 1);
            const float sum = bx < simd_cols ? __fadd_rn(__fadd_rn(a, b), __fadd_rn(c, d))
                                             : __fadd_rn(__fadd_rn(__fadd_rn(a, b), c), d);
            v = __fmul_rn(sum, 0.25f);
        } else {
            const Coord kx = linear_coord(bx, scale_x, p, true, fma);
            const Coord ky = linear_coord(by, scale_y, p, false, fma);
            const float a0 = __fsub_rn(1.0f, kx.f), b0 = __fsub_rn(1.0f, ky.f);
            const float h0 = mul_add2(padded(prob, m, ky.i0, kx.i0), a0, padded(prob, m, ky.i0, kx.i1), kx.f, fma);
            const float h1 = mul_add2(padded(prob, m, ky.i1, kx.i0), a0, padded(prob, m, ky.i1, kx.i1), kx.f, fma);
            v = mul_add2(h0, b0, h1, ky.f, fma);
        }
        dst[i] = v > 0.5f ? 1 : 0;
    }
}
