/* matmul_neon.c - matmul kernels for AArch64 Advanced SIMD (NEON).  NEON is
 * part of the AArch64 baseline, so this file needs no extra target flags and
 * dispatch.c needs no CPU check: on aarch64 it is the default level, and
 * SMOLVISION_ISA=portable lowers it.  x86 builds compile it to nothing.
 *
 * Same shapes as matmul_avx2.c with 4-wide vectors, two per 8 columns.
 * Widening in registers: BF16 is a shift left by 16 (vshll), F16 the FCVTL
 * instruction (vcvt_f32_f16, baseline on AArch64).  Weights are read with
 * byte loads (vld1q_u8) and reinterpreted, because tensors in a mapped
 * safetensors file need not be aligned to their element size.  Column tails
 * (K % 8) are widened from zero-padded stack buffers.
 *
 * Tested under qemu-aarch64 against the portable kernels (tools/neon_check.sh);
 * tile sizes and dot_max_n have not been measured on ARM hardware. */
#include "isa.h"

#ifdef SV_NEON_KERNELS
#include <arm_neon.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
/* Tiles keep their accumulators in registers only if their small loops are fully unrolled. */
#define UNROLL _Pragma("GCC unroll 16")

enum {
    ROWS = 4,       /* weight rows per dot tile */
    XROWS = 2,      /* input rows per dot tile: 2 x 4 x 2 = 16 accumulators of the 32 registers */
    PANEL = 16,     /* packed panel width for gemm: four vectors per row of the panel */
    GEMM_XROWS = 6  /* input rows per gemm tile: 24 accumulators */
};

/* Two vectors: columns k..k+3 and k+4..k+7. */
typedef struct {
    float32x4_t lo, hi;
} f32x8;

/* 8 weights W[row, k:k+8] as fp32. */
INLINE f32x8 load_w(const void *row, int64_t k, st_dtype dtype) {
    f32x8 v;
    if (dtype == ST_F32) {
        const uint8_t *p = (const uint8_t *)row + k * 4;
        v.lo = vreinterpretq_f32_u8(vld1q_u8(p));
        v.hi = vreinterpretq_f32_u8(vld1q_u8(p + 16));
        return v;
    }
    uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8((const uint8_t *)row + k * 2));
    if (dtype == ST_BF16) {
        v.lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        v.hi = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(h), 16));
    } else {
        v.lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
        v.hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
    }
    return v;
}

/* W[row, k:K] as fp32, zero-padded to 8 (K - k < 8). */
INLINE f32x8 load_w_tail(const void *row, int64_t k, int64_t K, st_dtype dtype) {
    uint8_t buf[32] = {0};
    size_t elem = dtype == ST_F32 ? 4 : 2;
    memcpy(buf, (const uint8_t *)row + k * (int64_t)elem, (size_t)(K - k) * elem);
    return load_w(buf, 0, dtype);
}

/* x[0:m] zero-padded to 8 (m < 8). */
INLINE f32x8 load_x_tail(const float *x, int64_t m) {
    float buf[8] = {0};
    memcpy(buf, x, (size_t)m * sizeof(float));
    f32x8 v = {vld1q_f32(buf), vld1q_f32(buf + 4)};
    return v;
}

INLINE f32x8 load_x(const float *x) {
    f32x8 v = {vld1q_f32(x), vld1q_f32(x + 4)};
    return v;
}

/* acc += x * w, lane-wise, the two halves in separate accumulators. */
INLINE void fma8(float32x4_t acc[2], f32x8 x, f32x8 w) {
    acc[0] = vfmaq_f32(acc[0], x.lo, w.lo);
    acc[1] = vfmaq_f32(acc[1], x.hi, w.hi);
}

/* y[i, r] = x[i, :] . w_r + b[r] for i < NI, r < NR, where w_r is the weight row at w + r * stride bytes. */
INLINE void dot_tile(float *y, int64_t ldy, const float *x, int64_t K, const uint8_t *w, size_t stride,
                     st_dtype dtype, const float *b, const int NI, const int NR) {
    float32x4_t acc[XROWS][ROWS][2];
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) acc[i][r][0] = acc[i][r][1] = vdupq_n_f32(0.0f);
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        f32x8 wv[ROWS];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load_w(w + r * stride, k, dtype);
        UNROLL
        for (int i = 0; i < NI; i++) {
            f32x8 xv = load_x(x + i * K + k);
            UNROLL
            for (int r = 0; r < NR; r++) fma8(acc[i][r], xv, wv[r]);
        }
    }
    if (k < K) {
        f32x8 wv[ROWS];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load_w_tail(w + r * stride, k, K, dtype);
        UNROLL
        for (int i = 0; i < NI; i++) {
            f32x8 xv = load_x_tail(x + i * K + k, K - k);
            UNROLL
            for (int r = 0; r < NR; r++) fma8(acc[i][r], xv, wv[r]);
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++)
            y[i * ldy + r] = vaddvq_f32(vaddq_f32(acc[i][r][0], acc[i][r][1])) + (b ? b[r] : 0.0f);
}

/* One input block of NI rows against weight rows [r0, r1): tiles of ROWS rows, then single rows. */
INLINE void dot_rows(float *yb, int64_t ldy, const float *xb, int64_t K, const uint8_t *w, size_t stride,
                     st_dtype dtype, const float *b, int64_t r0, int64_t r1, const int NI) {
    int64_t r = r0;
    for (; r + ROWS <= r1; r += ROWS)
        dot_tile(yb + r, ldy, xb, K, w + r * stride, stride, dtype, b ? b + r : NULL, NI, ROWS);
    for (; r < r1; r++) dot_tile(yb + r, ldy, xb, K, w + r * stride, stride, dtype, b ? b + r : NULL, NI, 1);
}

INLINE void dot_dtype(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b,
                      int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    const uint8_t *w = W->data;
    int64_t ib = 0;
    for (; ib + XROWS <= n; ib += XROWS) dot_rows(y + ib * ldy, ldy, x + ib * K, K, w, stride, dtype, b, r0, r1, XROWS);
    if (ib < n) dot_rows(y + ib * ldy, ldy, x + ib * K, K, w, stride, dtype, b, r0, r1, 1);
}

static void dot(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b, int64_t r0,
                int64_t r1) {
    switch (W->dtype) {
    case ST_F32: dot_dtype(y, ldy, x, n, W, b, r0, r1, ST_F32); break;
    case ST_F16: dot_dtype(y, ldy, x, n, W, b, r0, r1, ST_F16); break;
    default: dot_dtype(y, ldy, x, n, W, b, r0, r1, ST_BF16); break;
    }
}

INLINE void widen_dtype(float *dst, const sv_matrix *W, int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)W->data + r * stride;
        float *d = dst + (r - r0) * K;
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
            f32x8 v = load_w(row, k, dtype);
            vst1q_f32(d + k, v.lo);
            vst1q_f32(d + k + 4, v.hi);
        }
        if (k < K) {
            float t[8];
            f32x8 v = load_w_tail(row, k, K, dtype);
            vst1q_f32(t, v.lo);
            vst1q_f32(t + 4, v.hi);
            memcpy(d + k, t, (size_t)(K - k) * sizeof(float));
        }
    }
}

static void widen(float *dst, const sv_matrix *W, int64_t r0, int64_t r1) {
    switch (W->dtype) {
    case ST_F32: widen_dtype(dst, W, r0, r1, ST_F32); break;
    case ST_F16: widen_dtype(dst, W, r0, r1, ST_F16); break;
    default: widen_dtype(dst, W, r0, r1, ST_BF16); break;
    }
}

/* The packed-panel GEMM is offered only to builds without BLAS: where one is
 * linked (Accelerate on macOS, OpenBLAS on Linux; both have their own tuned
 * AArch64 sgemm) the driver runs that above dot_max_n, because this GEMM has
 * not been measured against them on hardware. */
#if defined(SV_BLAS_SCIPY_OPENBLAS) || defined(SV_BLAS_OPENBLAS) || defined(SV_BLAS_ACCELERATE)
#define OWN_GEMM 0
#else
#define OWN_GEMM 1
#endif

#if OWN_GEMM
/* In-register transpose: v[i] element j becomes v[j] element i (4 x 4). */
INLINE void transpose4(float32x4_t v[4]) {
    float32x4_t t0 = vtrn1q_f32(v[0], v[1]), t1 = vtrn2q_f32(v[0], v[1]); /* [a0 b0 a2 b2], [a1 b1 a3 b3] */
    float32x4_t t2 = vtrn1q_f32(v[2], v[3]), t3 = vtrn2q_f32(v[2], v[3]); /* [c0 d0 c2 d2], [c1 d1 c3 d3] */
    v[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    v[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    v[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    v[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

/* panel[k, c] = W[r0 + c, k]: 4 rows x 8 columns are widened into registers,
 * transposed there as two 4 x 4 blocks and stored as 8 panel rows of 4;
 * columns past r1 - r0 are zero. */
INLINE void pack_dtype(float *panel, const sv_matrix *W, int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    for (int64_t k = 0; k < K; k += 8) {
        int64_t len = K - k < 8 ? K - k : 8;
        for (int h = 0; h < PANEL; h += 4) {
            float32x4_t lo[4], hi[4];
            UNROLL
            for (int c = 0; c < 4; c++) {
                lo[c] = hi[c] = vdupq_n_f32(0.0f);
                if (r0 + h + c >= r1) continue;
                const uint8_t *row = (const uint8_t *)W->data + (r0 + h + c) * stride;
                f32x8 v = len == 8 ? load_w(row, k, dtype) : load_w_tail(row, k, K, dtype);
                lo[c] = v.lo;
                hi[c] = v.hi;
            }
            transpose4(lo);
            transpose4(hi);
            for (int64_t j = 0; j < len; j++) vst1q_f32(panel + (k + j) * PANEL + h, j < 4 ? lo[j] : hi[j - 4]);
        }
    }
}

static void pack(float *panel, const sv_matrix *W, int64_t r0, int64_t r1) {
    switch (W->dtype) {
    case ST_F32: pack_dtype(panel, W, r0, r1, ST_F32); break;
    case ST_F16: pack_dtype(panel, W, r0, r1, ST_F16); break;
    default: pack_dtype(panel, W, r0, r1, ST_BF16); break;
    }
}

/* y[i, c] = x[i, :] . panel[:, c] + bias[c] for i < NI, c < width. */
INLINE void gemm_tile(float *y, int64_t ldy, const float *x, int64_t K, const float *panel, int64_t width,
                      const float *bias, const int NI) {
    float32x4_t acc[GEMM_XROWS][PANEL / 4];
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int v = 0; v < PANEL / 4; v++) acc[i][v] = vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < K; k++) {
        float32x4_t w[PANEL / 4];
        UNROLL
        for (int v = 0; v < PANEL / 4; v++) w[v] = vld1q_f32(panel + k * PANEL + 4 * v);
        UNROLL
        for (int i = 0; i < NI; i++) {
            float xk = x[i * K + k];
            UNROLL
            for (int v = 0; v < PANEL / 4; v++) acc[i][v] = vfmaq_n_f32(acc[i][v], w[v], xk);
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++) {
        float t[PANEL];
        float *out = width == PANEL ? y + i * ldy : t;
        UNROLL
        for (int v = 0; v < PANEL / 4; v++) vst1q_f32(out + 4 * v, vaddq_f32(acc[i][v], vld1q_f32(bias + 4 * v)));
        if (width < PANEL) memcpy(y + i * ldy, t, (size_t)width * sizeof(float));
    }
}

static void gemm(float *y, int64_t ldy, const float *x, int64_t n, int64_t K, const float *panel, int64_t width,
                 const float *b) {
    float bias[PANEL] = {0};
    if (b) memcpy(bias, b, (size_t)width * sizeof(float));
    int64_t i = 0;
    for (; i + GEMM_XROWS <= n; i += GEMM_XROWS)
        gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, width, bias, GEMM_XROWS);
    for (; i + 2 <= n; i += 2) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, width, bias, 2);
    for (; i < n; i++) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, width, bias, 1);
}
#endif

const sv_isa sv_isa_neon = {
    .name = "neon",
    .dot = dot,
    .dot_max_n = 8, /* unmeasured: between the portable 6 and AVX2's measured 16 */
    .widen = widen,
#if OWN_GEMM
    .panel_width = PANEL,
    .pack = pack,
    .gemm = gemm,
#else
    .panel_width = 0,
    .pack = NULL,
    .gemm = NULL,
#endif
};

#endif
