/* ops_impl.h - the bodies of the small kernels (norms, activations, softmax,
 * add, dot products), compiled once per ISA: ops.c includes it for the portable table,
 * ops_avx2.c and ops_avx512.c with their target flags.  The includer defines
 * OPS_TABLE, the name of the sv_ops table to emit, and may define
 * OPS_TABLE_BF16 and OPS_SOFTMAX_BF16 for a second table, the same but for
 * its softmax_bf16 (ops_avx512.c: the AVX512_BF16 store).
 *
 * Plain C written so that compilers vectorise it without -ffast-math: sums
 * go into LANES independent partial sums, and exp() is our own branch-free
 * polynomial, because the vision tower evaluates gelu and softmax on
 * millions of values per layer and a libm call per element would cost as
 * much as a matmul.  CMake builds the includers with -fno-trapping-math (we
 * never read FP exception flags): without it GCC will not turn the clamps
 * and selects into vector code. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"

enum { LANES = 16 };

/* e^x to about 2 ulp (relative error < 2e-7) for x in [-87, 88]; inputs
 * beyond are clamped, so the result is always a finite normal number (e^-87
 * ~ 1.6e-38 stands in for 0).  x = m*ln2 + r with |r| <= ln2/2, e^r by a
 * degree-5 polynomial fitted for the least relative error over that range
 * (Lawson's iteration on Chebyshev points, the constant term held at 1: e^0
 * is exactly 1), 2^m built in the exponent field.  The degree-7 Taylor
 * series it replaces took two more multiply-adds for 1 ulp, more than a
 * softmax term rounded to BF16 or an activation's 2e-6 needs. */
static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float round = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float m = (x * 1.44269504f + round) - round;
    float r = x - m * 0.693145752f; /* ln2 split in two: the high part is exact in m * hi */
    r = r - m * 1.42860677e-06f;
    float p = SV_EXP_C5;
    p = p * r + SV_EXP_C4;
    p = p * r + SV_EXP_C3;
    p = p * r + SV_EXP_C2;
    p = p * r + SV_EXP_C1;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)m + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

/* sum(x[k]) and sum(x[k]^2) over LANES partial sums, in double at the end. */
static float sum_lanes(const float *x, int64_t n, int squares) {
    float acc[LANES] = {0};
    int64_t k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += squares ? x[k + l] * x[k + l] : x[k + l];
    double s = 0;
    for (; k < n; k++) s += squares ? (double)x[k] * x[k] : x[k];
    for (int l = 0; l < LANES; l++) s += acc[l];
    return (float)s;
}

static void layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, int64_t dim, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        float mean = sum_lanes(xi, dim, 0) / (float)dim;
        /* variance from the centred values: no cancellation when |mean| >> std */
        float acc[LANES] = {0};
        int64_t k = 0;
        for (; k + LANES <= dim; k += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += (xi[k + l] - mean) * (xi[k + l] - mean);
        double var = 0;
        for (; k < dim; k++) var += (double)(xi[k] - mean) * (xi[k] - mean);
        for (int l = 0; l < LANES; l++) var += acc[l];
        float inv = (float)(1.0 / sqrt(var / (double)dim + eps));
        for (k = 0; k < dim; k++) yi[k] = (xi[k] - mean) * inv * w[k] + b[k];
    }
}

static void rmsnorm(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        float inv = (float)(1.0 / sqrt((double)sum_lanes(xi, dim, 1) / (double)dim + eps));
        for (int64_t k = 0; k < dim; k++) yi[k] = xi[k] * inv * w[k];
    }
}

/* The activations run in blocks of ACT_BLOCK, exp_poly for the block first and the division second: GCC 12
 * vectorises the two loops apart, but the fused loop x / (1 + exp_poly(...)) it compiles into code twelve
 * times slower (measured on Sapphire Rapids: 0.3 vs 3.7 G values/s per core). */
enum { ACT_BLOCK = 64 };

/* 0.5 v (1 + tanh(z)) = v * sigmoid(2z) = v / (1 + e^-2z), z = sqrt(2/pi) (v + 0.044715 v^3) */
static void gelu_tanh(float *x, int64_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    float e[ACT_BLOCK];
    for (int64_t i = 0; i < n; i += ACT_BLOCK) {
        int64_t m = n - i < ACT_BLOCK ? n - i : ACT_BLOCK;
        float *v = x + i;
        for (int64_t k = 0; k < m; k++) e[k] = exp_poly(-2.0f * c * (v[k] + 0.044715f * v[k] * v[k] * v[k]));
        for (int64_t k = 0; k < m; k++) v[k] = v[k] / (1.0f + e[k]);
    }
}

static void silu_mul(float *gate, const float *up, int64_t n) {
    float e[ACT_BLOCK];
    for (int64_t i = 0; i < n; i += ACT_BLOCK) {
        int64_t m = n - i < ACT_BLOCK ? n - i : ACT_BLOCK;
        float *g = gate + i;
        for (int64_t k = 0; k < m; k++) e[k] = exp_poly(-g[k]);
        for (int64_t k = 0; k < m; k++) g[k] = g[k] / (1.0f + e[k]) * up[i + k];
    }
}

#ifndef OPS_OWN_SOFTMAX /* the includer may bring its own (ops_avx512.c) */
static float row_max(const float *x, int64_t n) {
    float lane_max[LANES];
    for (int l = 0; l < LANES; l++) lane_max[l] = x[0];
    int64_t k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++) lane_max[l] = x[k + l] > lane_max[l] ? x[k + l] : lane_max[l];
    float max = x[0];
    for (; k < n; k++) max = x[k] > max ? x[k] : max;
    for (int l = 0; l < LANES; l++) max = lane_max[l] > max ? lane_max[l] : max;
    return max;
}

/* p[i] = e^(x[i] - max) rounded to BF16 (nearest even) for i < n, 0 up to ld; returns the fp32 sum of the
 * unrounded terms.  The softmax without its division, for the BF16 attention (attention.c), which divides
 * the product with the values instead: one pass over the scores fewer, and the terms go to BF16 as they
 * are made. */
static float softmax_bf16(uint16_t *p, int64_t ld, const float *x, int64_t n) {
    const float max = row_max(x, n);
    float sums[LANES] = {0};
    for (int64_t i = 0; i < n; i++) {
        const float e = exp_poly(x[i] - max); /* finite: exp_poly clamps */
        sums[i % LANES] += e;
        p[i] = sv_float_to_bf16(e);
    }
    for (int64_t i = n; i < ld; i++) p[i] = 0;
    float sum = 0.0f;
    for (int l = 0; l < LANES; l++) sum += sums[l];
    return sum;
}

static void softmax(float *x, int64_t n) {
    const float max = row_max(x, n);
    for (int64_t i = 0; i < n; i++) x[i] = exp_poly(x[i] - max);
    float inv = 1.0f / sum_lanes(x, n, 0);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}
#endif

static void add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* DOT_ROWS(name, row type, widen): out[r] = scale * (x . row r) in LANES partial sums. */
#define DOT_ROWS(NAME, ROW_T, WIDEN)                                                                            \
    static void NAME(float *out, const float *x, const ROW_T *rows, int64_t n_rows, int64_t len, int64_t stride, \
                     float scale) {                                                                             \
        for (int64_t r = 0; r < n_rows; r++) {                                                                  \
            const ROW_T *row = rows + r * stride;                                                               \
            float acc[LANES] = {0};                                                                             \
            int64_t k = 0;                                                                                      \
            for (; k + LANES <= len; k += LANES)                                                                \
                for (int l = 0; l < LANES; l++) acc[l] += x[k + l] * WIDEN(row[k + l]);                         \
            float sum = 0;                                                                                      \
            for (; k < len; k++) sum += x[k] * WIDEN(row[k]);                                                   \
            for (int l = 0; l < LANES; l++) sum += acc[l];                                                      \
            out[r] = sum * scale;                                                                               \
        }                                                                                                       \
    }

#ifndef OPS_OWN_DOT_ROWS /* the includer may bring its own dot_rows and dot_rows_bf16 (ops_avx512.c) */
#define AS_IS(v) (v)
DOT_ROWS(dot_rows, float, AS_IS)
DOT_ROWS(dot_rows_bf16, uint16_t, sv_bf16_to_float)
#endif

#define OPS_ENTRIES(SOFTMAX_BF16)                                                                            \
    {                                                                                                        \
        .layernorm = layernorm, .rmsnorm = rmsnorm, .gelu_tanh = gelu_tanh, .silu_mul = silu_mul,            \
        .softmax = softmax, .softmax_bf16 = SOFTMAX_BF16, .add = add, .dot_rows = dot_rows,                  \
        .dot_rows_bf16 = dot_rows_bf16,                                                                      \
    }

const sv_ops OPS_TABLE = OPS_ENTRIES(softmax_bf16);
#ifdef OPS_TABLE_BF16 /* the includer's second table: the same kernels but its own softmax_bf16 (ops_avx512.c) */
const sv_ops OPS_TABLE_BF16 = OPS_ENTRIES(OPS_SOFTMAX_BF16);
#endif
