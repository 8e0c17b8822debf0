/* matmul_avx512.c - matmul kernels for x86-64 CPUs with AVX-512 (F, BW, VL)
 * plus FMA and F16C.  CMake compiles this one file with those target flags;
 * dispatch.c only hands its table out after checking the CPU and the OS.
 *
 * Weights are widened to fp32 in registers (BF16: zero-extend to 32 bits and
 * shift left 16; F16: vcvtph2ps), so results equal the portable kernels up
 * to fp32 summation order. */
#ifdef SV_X86_KERNELS
#include <immintrin.h>

#include "isa.h"
#include "transpose_avx512.h"

#define INLINE static inline __attribute__((always_inline))
/* Tiles keep their accumulators in registers only if their small loops are fully unrolled. */
#define UNROLL _Pragma("GCC unroll 16")

enum {
    ROWS = 4,        /* weight rows per dot tile (n >= 2) */
    XROWS = 4,       /* input rows per dot tile: 16 accumulators */
    PANEL = 32,      /* packed panel width for gemm: two zmm per row of the panel */
    GEMM_XROWS = 12  /* input rows per gemm tile: 24 accumulators */
};

/* 16 weights W[row, k:k+16] as fp32; mask selects the valid ones at a tail. */
INLINE __m512 load_w(const void *row, int64_t k, st_dtype dtype, __mmask16 mask) {
    if (dtype == ST_F32) return _mm512_maskz_loadu_ps(mask, (const char *)row + k * 4);
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const char *)row + k * 2);
    if (dtype == ST_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* y[i, r] = x[i, :] . w_r + b[r] for i < NI, r < NR, where w_r is the weight row at w + r * stride bytes. */
INLINE void dot_tile(float *y, int64_t ldy, const float *x, int64_t K, const char *w, size_t stride, st_dtype dtype,
                     const float *b, const int NI, const int NR) {
    __m512 acc[XROWS][ROWS];
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) acc[i][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[ROWS];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load_w(w + r * stride, k, dtype, 0xFFFF);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m512 xv = _mm512_loadu_ps(x + i * K + k);
            UNROLL
            for (int r = 0; r < NR; r++) acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 wv[ROWS];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load_w(w + r * stride, k, dtype, m);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + i * K + k);
            UNROLL
            for (int r = 0; r < NR; r++) acc[i][r] = _mm512_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) y[i * ldy + r] = _mm512_reduce_add_ps(acc[i][r]) + (b ? b[r] : 0.0f);
}

/* y[r] = x . w_r + b[r] for one input row, r0 <= r < r1: each weight row read start to end, so the
 * whole range is one sequential stream (what the hardware prefetchers follow best; n = 1 is memory
 * bound), with four accumulators to hide the FMA latency. */
INLINE void gemv_rows(float *y, const float *x, int64_t K, const char *w, size_t stride, st_dtype dtype,
                      const float *b, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const char *row = w + r * stride;
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int64_t k = 0;
        for (; k + 64 <= K; k += 64)
            UNROLL
            for (int u = 0; u < 4; u++)
                acc[u] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * u), load_w(row, k + 16 * u, dtype, 0xFFFF), acc[u]);
        for (; k < K; k += 16) {
            __mmask16 m = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + k), load_w(row, k, dtype, m), acc[0]);
        }
        __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        y[r] = _mm512_reduce_add_ps(sum) + (b ? b[r] : 0.0f);
    }
}

/* All n input rows against the NR weight rows at w: blocks of XROWS input rows, then the rest. */
INLINE void dot_inputs(float *y, int64_t ldy, const float *x, int64_t n, int64_t K, const char *w, size_t stride,
                       st_dtype dtype, const float *b, const int NR) {
    int64_t i = 0;
    for (; i + XROWS <= n; i += XROWS) dot_tile(y + i * ldy, ldy, x + i * K, K, w, stride, dtype, b, XROWS, NR);
    switch (n - i) {
    case 1: dot_tile(y + i * ldy, ldy, x + i * K, K, w, stride, dtype, b, 1, NR); break;
    case 2: dot_tile(y + i * ldy, ldy, x + i * K, K, w, stride, dtype, b, 2, NR); break;
    case 3: dot_tile(y + i * ldy, ldy, x + i * K, K, w, stride, dtype, b, 3, NR); break;
    default: break;
    }
}

/* n = 1: one stream over the rows (gemv_rows).  n > 1: a tile of ROWS weight rows at a time against every
 * input row, so the weights are read from memory once however many input rows there are. */
INLINE void dot_dtype(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b,
                      int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    const char *w = W->data;
    if (n == 1) {
        gemv_rows(y, x, K, w, stride, dtype, b, r0, r1);
        return;
    }
    int64_t r = r0;
    for (; r + ROWS <= r1; r += ROWS) dot_inputs(y + r, ldy, x, n, K, w + r * stride, stride, dtype, b ? b + r : NULL, ROWS);
    for (; r < r1; r++) dot_inputs(y + r, ldy, x, n, K, w + r * stride, stride, dtype, b ? b + r : NULL, 1);
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
    const __mmask16 tail = (__mmask16)((1u << (K % 16)) - 1);
    for (int64_t r = r0; r < r1; r++) {
        const char *row = (const char *)W->data + r * stride;
        float *d = dst + (r - r0) * K;
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) _mm512_storeu_ps(d + k, load_w(row, k, dtype, 0xFFFF));
        if (k < K) _mm512_mask_storeu_ps(d + k, tail, load_w(row, k, dtype, tail));
    }
}

static void widen(float *dst, const sv_matrix *W, int64_t r0, int64_t r1) {
    switch (W->dtype) {
    case ST_F32: widen_dtype(dst, W, r0, r1, ST_F32); break;
    case ST_F16: widen_dtype(dst, W, r0, r1, ST_F16); break;
    default: widen_dtype(dst, W, r0, r1, ST_BF16); break;
    }
}

/* panel[k, c] = W[r0 + c, k]: 16 rows x 16 columns are widened into
 * registers, transposed there and stored as 16 panel rows; columns past
 * r1 - r0 are zero. */
INLINE void pack_dtype(float *panel, const sv_matrix *W, int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    for (int64_t k = 0; k < K; k += 16) {
        int64_t len = K - k < 16 ? K - k : 16;
        __mmask16 m = (__mmask16)((1u << len) - 1);
        for (int h = 0; h < PANEL; h += 16) {
            __m512 v[16];
            UNROLL
            for (int c = 0; c < 16; c++)
                v[c] = r0 + h + c < r1 ? load_w((const char *)W->data + (r0 + h + c) * stride, k, dtype, m)
                                       : _mm512_setzero_ps();
            transpose16(v);
            for (int64_t j = 0; j < len; j++) _mm512_store_ps(panel + (k + j) * PANEL + h, v[j]);
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

/* y[i, c] = x[i, :] . panel[:, c] + b[c] for i < NI, c < width (masks m0, m1 select c). */
INLINE void gemm_tile(float *y, int64_t ldy, const float *x, int64_t K, const float *panel, __mmask16 m0,
                      __mmask16 m1, __m512 b0, __m512 b1, const int NI) {
    __m512 acc[GEMM_XROWS][2];
    UNROLL
    for (int i = 0; i < NI; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m512 w0 = _mm512_load_ps(panel + k * PANEL), w1 = _mm512_load_ps(panel + k * PANEL + 16);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m512 xb = _mm512_set1_ps(x[i * K + k]);
            acc[i][0] = _mm512_fmadd_ps(xb, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(xb, w1, acc[i][1]);
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++) {
        _mm512_mask_storeu_ps(y + i * ldy, m0, _mm512_add_ps(acc[i][0], b0));
        _mm512_mask_storeu_ps(y + i * ldy + 16, m1, _mm512_add_ps(acc[i][1], b1));
    }
}

static void gemm(float *y, int64_t ldy, const float *x, int64_t n, int64_t K, const float *panel, int64_t width,
                 const float *b) {
    __mmask16 m0 = width >= 16 ? 0xFFFF : (__mmask16)((1u << width) - 1);
    __mmask16 m1 = width >= 32 ? 0xFFFF : width > 16 ? (__mmask16)((1u << (width - 16)) - 1) : 0;
    __m512 b0 = b ? _mm512_maskz_loadu_ps(m0, b) : _mm512_setzero_ps();
    __m512 b1 = b ? _mm512_maskz_loadu_ps(m1, b + 16) : _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + GEMM_XROWS <= n; i += GEMM_XROWS) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, m0, m1, b0, b1, GEMM_XROWS);
    for (; i + 4 <= n; i += 4) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, m0, m1, b0, b1, 4);
    for (; i < n; i++) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, m0, m1, b0, b1, 1);
}

const sv_isa sv_isa_avx512 = {
    .name = "avx512",
    .dot = dot,
    .dot_max_n = 16, /* packing from n = 16..24 on (K = 1152..8192) */
    .widen = widen,
    .panel_width = PANEL,
    .pack = pack,
    .gemm = gemm,
};

#endif
