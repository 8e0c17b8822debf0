/* matmul_avx2.c - matmul kernels for x86-64 CPUs with AVX2, FMA and F16C
 * (Haswell and later, Zen).  CMake compiles this one file with those target
 * flags; dispatch.c only hands its table out after checking the CPU and OS.
 *
 * Same shapes as matmul_avx512.c with 8-wide vectors; AVX2 has 16 vector
 * registers, so the tiles are smaller.  Column tails (K % 8) are widened into
 * zero-padded stack buffers instead of masked loads. */
#ifdef SV_X86_KERNELS
#include <immintrin.h>
#include <string.h>

#include "isa.h"
#include "lanes_avx2.h"

#define INLINE static inline __attribute__((always_inline))
/* Tiles keep their accumulators in registers only if their small loops are fully unrolled. */
#define UNROLL _Pragma("GCC unroll 16")

enum {
    ROWS_GEMV = 8,  /* weight rows per dot tile when n = 1: more loads in flight */
    ROWS = 4,       /* weight rows per dot tile when n = 2, 3: 2 input rows, 8 accumulators */
    ROWS_MULTI = 3, /* weight rows per dot tile when n >= 4: XROWS input rows, 12 accumulators */
    XROWS = 4,      /* input rows per dot tile when n >= 4 (bench: 4 x 3 beat 2 x 4, 4 x 2, 3 x 4, 6 x 2, 8 x 1) */
    PANEL = 16,     /* packed panel width for gemm: two ymm per row of the panel */
    GEMM_XROWS = 6  /* input rows per gemm tile: 12 accumulators */
};

/* 8 weights W[row, k:k+8] as fp32. */
INLINE __m256 load_w(const void *row, int64_t k, st_dtype dtype) {
    if (dtype == ST_F32) return _mm256_loadu_ps((const float *)((const char *)row + k * 4));
    __m128i h = _mm_loadu_si128((const __m128i *)((const char *)row + k * 2));
    if (dtype == ST_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* W[row, k:K] as fp32, zero-padded to 8 (K - k < 8). */
INLINE __m256 load_w_tail(const void *row, int64_t k, int64_t K, st_dtype dtype) {
    unsigned char buf[32] = {0};
    memcpy(buf, (const char *)row + k * (dtype == ST_F32 ? 4 : 2), (size_t)(K - k) * (dtype == ST_F32 ? 4 : 2));
    return load_w(buf, 0, dtype);
}

INLINE __m256 load_x_tail(const float *x, int64_t n) {
    float buf[8] = {0};
    memcpy(buf, x, (size_t)n * 4);
    return _mm256_loadu_ps(buf);
}

/* y[i, r] = x[i, :] . w_r + b[r] for i < NI, r < NR, where w_r is the weight row at w + r * stride bytes.
 * next: NULL, or the next tile's rows (same stride), fetched into cache alongside: each weight row is its own
 * short stream (a 4 KB page at K = 2048 BF16), too short for the hardware prefetcher to get ahead on. */
INLINE void dot_tile(float *y, int64_t ldy, const float *x, int64_t K, const char *w, size_t stride, st_dtype dtype,
                     const float *b, const char *next, const int NI, const int NR) {
    const int64_t esize = dtype == ST_F32 ? 4 : 2;
    __m256 acc[XROWS][ROWS_GEMV]; /* NI x NR of them used */
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) acc[i][r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if (next && (k * esize) % 64 == 0)
            UNROLL
            for (int r = 0; r < NR; r++) _mm_prefetch(next + r * stride + k * esize, _MM_HINT_T0);
        __m256 wv[ROWS_GEMV];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load_w(w + r * stride, k, dtype);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * K + k);
            UNROLL
            for (int r = 0; r < NR; r++) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    if (k < K) {
        __m256 wv[ROWS_GEMV];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = load_w_tail(w + r * stride, k, K, dtype);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m256 xv = load_x_tail(x + i * K + k, K - k);
            UNROLL
            for (int r = 0; r < NR; r++) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) y[i * ldy + r] = hsum(acc[i][r]) + (b ? b[r] : 0.0f);
}

/* All n input rows against the NR weight rows at w: blocks of NI input rows, then single ones. The first
 * block reads the rows from memory (fetching `next` alongside), the others find them in L1/L2. */
INLINE void dot_inputs(float *y, int64_t ldy, const float *x, int64_t n, int64_t K, const char *w, size_t stride,
                       st_dtype dtype, const float *b, const char *next, const int NI, const int NR) {
    int64_t i = 0;
    for (; i + NI <= n; i += NI, next = NULL) dot_tile(y + i * ldy, ldy, x + i * K, K, w, stride, dtype, b, next, NI, NR);
    for (; i < n; i++, next = NULL) dot_tile(y + i * ldy, ldy, x + i * K, K, w, stride, dtype, b, next, 1, NR);
}

/* Weight rows [r0, r1) against all n input rows, a tile of NR weight rows at a time: the weights are
 * streamed from memory once however many input rows there are. */
INLINE void dot_dtype(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b,
                      int64_t r0, int64_t r1, st_dtype dtype, const int NI, const int NR) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    const char *w = W->data;
    int64_t r = r0;
    for (; r + NR <= r1; r += NR) {
        const char *next = NI > 1 && r + 2 * NR <= r1 ? w + (r + NR) * stride : NULL; /* n = 1: measured slower */
        dot_inputs(y + r, ldy, x, n, K, w + r * stride, stride, dtype, b ? b + r : NULL, next, NI, NR);
    }
    for (; r < r1; r++) dot_inputs(y + r, ldy, x, n, K, w + r * stride, stride, dtype, b ? b + r : NULL, NULL, NI, 1);
}

INLINE void dot_shape(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b,
                      int64_t r0, int64_t r1, st_dtype dtype) {
    if (n == 1) dot_dtype(y, ldy, x, n, W, b, r0, r1, dtype, 1, ROWS_GEMV);
    else if (n < XROWS) dot_dtype(y, ldy, x, n, W, b, r0, r1, dtype, 2, ROWS);
    else dot_dtype(y, ldy, x, n, W, b, r0, r1, dtype, XROWS, ROWS_MULTI);
}

static void dot(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b, int64_t r0,
                int64_t r1) {
    switch (W->dtype) {
    case ST_F32: dot_shape(y, ldy, x, n, W, b, r0, r1, ST_F32); break;
    case ST_F16: dot_shape(y, ldy, x, n, W, b, r0, r1, ST_F16); break;
    default: dot_shape(y, ldy, x, n, W, b, r0, r1, ST_BF16); break;
    }
}

INLINE void widen_dtype(float *dst, const sv_matrix *W, int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    for (int64_t r = r0; r < r1; r++) {
        const char *row = (const char *)W->data + r * stride;
        float *d = dst + (r - r0) * K;
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) _mm256_storeu_ps(d + k, load_w(row, k, dtype));
        if (k < K) {
            float t[8];
            _mm256_storeu_ps(t, load_w_tail(row, k, K, dtype));
            memcpy(d + k, t, (size_t)(K - k) * 4);
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

/* panel[k, c] = W[r0 + c, k]: 8 rows x 8 columns are widened into registers,
 * transposed there and stored as 8 panel rows; columns past r1 - r0 are zero. */
INLINE void pack_dtype(float *panel, const sv_matrix *W, int64_t r0, int64_t r1, st_dtype dtype) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * (dtype == ST_F32 ? 4 : 2);
    for (int64_t k = 0; k < K; k += 8) {
        int64_t len = K - k < 8 ? K - k : 8;
        for (int h = 0; h < PANEL; h += 8) {
            __m256 v[8];
            UNROLL
            for (int c = 0; c < 8; c++) {
                v[c] = _mm256_setzero_ps();
                if (r0 + h + c >= r1) continue;
                const char *row = (const char *)W->data + (r0 + h + c) * stride;
                v[c] = len == 8 ? load_w(row, k, dtype) : load_w_tail(row, k, K, dtype);
            }
            transpose8(v);
            for (int64_t j = 0; j < len; j++) _mm256_store_ps(panel + (k + j) * PANEL + h, v[j]);
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
    __m256 acc[GEMM_XROWS][2];
    UNROLL
    for (int i = 0; i < NI; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m256 w0 = _mm256_load_ps(panel + k * PANEL), w1 = _mm256_load_ps(panel + k * PANEL + 8);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m256 xb = _mm256_broadcast_ss(x + i * K + k);
            acc[i][0] = _mm256_fmadd_ps(xb, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(xb, w1, acc[i][1]);
        }
    }
    __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
    UNROLL
    for (int i = 0; i < NI; i++) {
        if (width == PANEL) {
            _mm256_storeu_ps(y + i * ldy, _mm256_add_ps(acc[i][0], b0));
            _mm256_storeu_ps(y + i * ldy + 8, _mm256_add_ps(acc[i][1], b1));
        } else {
            float t[PANEL];
            _mm256_storeu_ps(t, _mm256_add_ps(acc[i][0], b0));
            _mm256_storeu_ps(t + 8, _mm256_add_ps(acc[i][1], b1));
            memcpy(y + i * ldy, t, (size_t)width * 4);
        }
    }
}

static void gemm(float *y, int64_t ldy, const float *x, int64_t n, int64_t K, const float *panel, int64_t width,
                 const float *b) {
    float bias[PANEL] = {0};
    if (b) memcpy(bias, b, (size_t)width * 4);
    int64_t i = 0;
    for (; i + GEMM_XROWS <= n; i += GEMM_XROWS) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, width, bias, GEMM_XROWS);
    for (; i + 2 <= n; i += 2) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, width, bias, 2);
    for (; i < n; i++) gemm_tile(y + i * ldy, ldy, x + i * K, K, panel, width, bias, 1);
}

const sv_isa sv_isa_avx2 = {
    .name = "avx2",
    .dot = dot,
    .dot_max_n = 32, /* the packed GEMM wins from n = 32..64 on (K = 2048, 8192; BF16) */
    .widen = widen,
    .panel_width = PANEL,
    .pack = pack,
    .gemm = gemm,
};

#endif
