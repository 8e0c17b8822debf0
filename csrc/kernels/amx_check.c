/* amx_check.c - the self-check an AMX GEMM must pass before dispatch.c lets
 * a process use it.  The real tile path cannot be run where it was written
 * (no AMX there), so on its first use in each process it is compared with a
 * plain-C evaluation of the same products; a CPU, kernel or OS on which it
 * disagrees keeps the AVX512_BF16 kernels instead of giving wrong answers.
 *
 * The shapes cover the edges of the blocking: n of one row, one tile, more
 * than one 32-row step and not a multiple of 16; weight rows that leave a
 * partial panel and a panel of one row; K of 1, odd, below one tile row, not
 * a multiple of 32 and several tile rows.  The first pass uses multiples of
 * 1/4 in [-2, 2]: BF16-exact, with products and sums exact in fp32 whatever
 * the order, so any difference at all is a wrong result.  The second uses
 * random reals and allows fp32 rounding (1e-5 of sum |x w| + |b|), which
 * catches a lost precision the exact pass cannot.  Shapes the few-rows kernel
 * takes (2 to few_max_n rows, K whole tiles, whole 16-row weight blocks) run
 * through it as well. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "isa.h"

typedef struct {
    int n, rows, cols, bias, exact;
} check_shape;

static const check_shape SHAPES[] = {
    {1, 5, 7, 1, 1},      {17, 33, 1, 0, 1},   {16, 32, 32, 1, 1},   {33, 40, 70, 1, 1},
    {50, 17, 129, 0, 1},  {64, 64, 64, 1, 1},  {31, 100, 33, 1, 1},  {40, 48, 300, 1, 0},
    {19, 70, 1000, 0, 0}, {9, 48, 96, 1, 1},  {5, 16, 64, 0, 0},
};

/* xorshift64*, fixed seed: the same data on every run. */
static double next_uniform(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (double)((*state * 0x2545F4914F6CDD1Du) >> 11) / 9007199254740992.0 * 2.0 - 1.0; /* [-1, 1) */
}

static double bf16_value(uint16_t h) { return (double)sv_bf16_to_float(h); }

static float sample(uint64_t *state, int exact) {
    double u = next_uniform(state);
    return exact ? (float)(floor(u * 8.5 + 8.5) - 8.0) / 4.0f : (float)u;
}

/* Whether y (n x rows, from the kernel named) is the plain-C product of xb and w (+ b); if not, why. */
static int agrees(const check_shape *s, const char *kernel, const float *y, const uint16_t *xb, int64_t ldx,
                  const uint16_t *w, const float *b, char *why, size_t why_size) {
    for (int64_t i = 0; i < s->n; i++)
        for (int64_t r = 0; r < s->rows; r++) {
            double sum = s->bias ? b[r] : 0.0, scale = s->bias ? fabs(b[r]) : 0.0;
            for (int64_t k = 0; k < s->cols; k++) {
                double p = bf16_value(xb[i * ldx + k]) * bf16_value(w[r * s->cols + k]);
                sum += p;
                scale += fabs(p);
            }
            double got = y[i * s->rows + r], allowed = s->exact ? 0.0 : 1e-5 * scale;
            if (!(fabs(got - sum) <= allowed)) { /* NaN (a result never written) fails too */
                snprintf(why, why_size, "%s, n=%d, %d x %d weights, %s values: y[%lld, %lld] = %.9g, plain C %.9g",
                         kernel, s->n, s->rows, s->cols, s->exact ? "exact" : "real", (long long)i, (long long)r,
                         got, sum);
                return 0;
            }
        }
    return 1;
}

/* The few-rows kernel on a shape it takes: x's pairs transposed into xt as the driver lays them out. */
static int few_agrees(const sv_amx_isa *amx, const check_shape *s, float *y, const uint16_t *xb, int64_t ldx,
                      const uint16_t *w, const float *b, char *why, size_t why_size) {
    const int64_t m = amx->few_max_n, steps = s->cols / amx->k_align;
    uint32_t *xt = calloc((size_t)(s->cols / 2 * m), sizeof *xt);
    if (!xt) {
        snprintf(why, why_size, "out of memory");
        return 0;
    }
    for (int64_t i = 0; i < s->n; i++) sv_amx_few_column(xt, m, i, xb + i * ldx, s->cols);
    for (int64_t i = 0; i < (int64_t)s->n * s->rows; i++) y[i] = NAN;
    amx->gemm_few(y, s->rows, xt, s->n, steps, w, s->cols, s->rows, s->bias ? b : NULL);
    free(xt);
    return agrees(s, "few-rows kernel", y, xb, ldx, w, b, why, why_size);
}

/* One shape; 1 if it agrees, else 0 and why. */
static int check_one(const sv_amx_isa *amx, const check_shape *s, uint64_t *state, char *why, size_t why_size) {
    const int64_t ldx = (s->cols + amx->k_align - 1) / amx->k_align * amx->k_align;
    const int64_t xrows = (s->n + amx->row_align - 1) / amx->row_align * amx->row_align;
    size_t panel_bytes = (size_t)(ldx / 2 * amx->panel_width) * sizeof(uint32_t);
    panel_bytes = (panel_bytes + 63) / 64 * 64;
    uint16_t *xb = calloc((size_t)(xrows * ldx), sizeof *xb), *w = malloc((size_t)s->rows * s->cols * sizeof *w);
    float *b = malloc((size_t)s->rows * sizeof *b), *y = malloc((size_t)s->n * s->rows * sizeof *y);
    uint32_t *panel = aligned_alloc(64, panel_bytes); /* the AVX-512 pack stores whole aligned vectors */
    int ok = xb && w && b && y && panel;
    if (!ok) snprintf(why, why_size, "out of memory");
    for (int64_t i = 0; ok && i < s->n; i++)
        for (int64_t k = 0; k < s->cols; k++) xb[i * ldx + k] = sv_float_to_bf16(sample(state, s->exact));
    for (int64_t i = 0; ok && i < (int64_t)s->rows * s->cols; i++) w[i] = sv_float_to_bf16(sample(state, s->exact));
    for (int64_t r = 0; ok && r < s->rows; r++) b[r] = sample(state, 1);
    for (int64_t i = 0; ok && i < (int64_t)s->n * s->rows; i++) y[i] = NAN;
    for (int64_t r = 0; ok && r < s->rows; r += amx->panel_width) {
        int64_t width = s->rows - r < amx->panel_width ? s->rows - r : amx->panel_width;
        amx->pack(panel, w, s->cols, s->cols, r, r + width);
        sv_amx_operand a = {xb, ldx * (int64_t)sizeof *xb, amx->k_align, amx->row_align * ldx}; /* row-major */
        amx->gemm(y + r, s->rows, &a, s->n, ldx / amx->k_align, panel, 0, width, s->bias ? b + r : NULL);
    }
    ok = ok && agrees(s, "GEMM", y, xb, ldx, w, b, why, why_size);
    if (ok && s->n >= 2 && s->n <= amx->few_max_n && s->cols % amx->k_align == 0 && s->rows % amx->row_align == 0)
        ok = few_agrees(amx, s, y, xb, ldx, w, b, why, why_size);
    free(xb);
    free(w);
    free(b);
    free(y);
    free(panel);
    return ok;
}

int sv_amx_self_check(const sv_amx_isa *amx, char *why, size_t why_size) {
    uint64_t state = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
        if (!check_one(amx, &SHAPES[i], &state, why, why_size)) return 0;
    return 1;
}
