/* matmul_generic.c - the portable matmul kernels: plain C that any compiler
 * builds for any CPU, and the reference every SIMD path is tested against.
 *
 * Loops are written over small fixed-size lane arrays so compilers can
 * vectorise them (SSE2 on x86-64, NEON on aarch64) without reassociating a
 * reduction, i.e. without -ffast-math (CMake adds -fno-trapping-math, which
 * the F16 conversion's select needs to vectorise). */
#include <string.h>

#include "isa.h"

enum {
    ROWS = 4,    /* weight rows per block */
    XROWS = 4,   /* input rows per block */
    CHUNK = 256, /* columns widened at a time */
    LANES = 8    /* independent partial sums per dot product */
};

/* dst[j] = src[k0 + j] as fp32 for j < len: one row of W (src points at its start). */
static void widen_span(float *dst, const void *src, st_dtype dtype, int64_t k0, int64_t len) {
    const unsigned char *p = src;
    if (dtype == ST_F32) {
        memcpy(dst, p + k0 * 4, (size_t)len * 4);
        return;
    }
    p += k0 * 2;
    uint16_t h[CHUNK]; /* weights in the mapping need not be 2-byte aligned */
    for (int64_t j0 = 0; j0 < len; j0 += CHUNK) {
        int64_t m = len - j0 < CHUNK ? len - j0 : CHUNK;
        memcpy(h, p + 2 * j0, (size_t)m * 2);
        if (dtype == ST_BF16)
            for (int64_t j = 0; j < m; j++) dst[j0 + j] = sv_bf16_to_float(h[j]);
        else
            for (int64_t j = 0; j < m; j++) dst[j0 + j] = sv_f16_to_float(h[j]);
    }
}

static const void *row_ptr(const sv_matrix *W, int64_t r) {
    size_t elem = W->dtype == ST_F32 ? 4 : 2;
    return (const unsigned char *)W->data + (size_t)r * (size_t)W->cols * elem;
}

static void widen(float *dst, const sv_matrix *W, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) widen_span(dst + (r - r0) * W->cols, row_ptr(W, r), W->dtype, 0, W->cols);
}

/* Blocks of ROWS weight rows x XROWS input rows; the weight block is widened
 * CHUNK columns at a time into a stack buffer and reused for every input row. */
static void dot(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b, int64_t r0,
                int64_t r1) {
    const int64_t K = W->cols;
    float w[ROWS][CHUNK];
    for (int64_t rb = r0; rb < r1; rb += ROWS) {
        int nr = r1 - rb < ROWS ? (int)(r1 - rb) : ROWS;
        for (int64_t ib = 0; ib < n; ib += XROWS) {
            int ni = n - ib < XROWS ? (int)(n - ib) : XROWS;
            float acc[XROWS][ROWS][LANES] = {{{0}}};
            for (int64_t k0 = 0; k0 < K; k0 += CHUNK) {
                int64_t len = K - k0 < CHUNK ? K - k0 : CHUNK, full = len / LANES * LANES;
                for (int r = 0; r < nr; r++) widen_span(w[r], row_ptr(W, rb + r), W->dtype, k0, len);
                for (int i = 0; i < ni; i++) {
                    const float *xi = x + (ib + i) * K + k0;
                    for (int r = 0; r < nr; r++) {
                        float *a = acc[i][r];
                        for (int64_t j = 0; j < full; j += LANES)
                            for (int l = 0; l < LANES; l++) a[l] += xi[j + l] * w[r][j + l];
                        for (int64_t j = full; j < len; j++) a[j - full] += xi[j] * w[r][j];
                    }
                }
            }
            for (int i = 0; i < ni; i++)
                for (int r = 0; r < nr; r++) {
                    float s = 0.0f;
                    for (int l = 0; l < LANES; l++) s += acc[i][r][l];
                    y[(ib + i) * ldy + rb + r] = s + (b ? b[rb + r] : 0.0f);
                }
        }
    }
}

const sv_isa sv_isa_portable = {
    .name = "portable",
    .dot = dot,
    .dot_max_n = 6, /* BLAS from n = 6..8 on (bench: 2048x2048 BF16) */
    .widen = widen,
    .panel_width = 0,
    .pack = NULL,
    .gemm = NULL,
};
