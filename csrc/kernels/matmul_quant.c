/* matmul_quant.c - sv_matmul for quantized weights (ST_Q8, ST_Q4; quant.h),
 * and its test hooks.
 *
 *   n up to the kernels' dot_max_n (decode, short prompts): the activations
 *       are quantized to int8 blocks once, in parallel, into the pool's shared
 *       buffer, and the int8 dot kernel streams each weight row once; threads
 *       split the rows of W as in matmul.c.
 *   larger n (prefill): where the ISA has a packed fp32 GEMM, each thread
 *       dequantizes panel_width rows of W into its scratch, packs and runs
 *       that GEMM on them (no activation rounding); otherwise the dot kernel.
 *       With precision "bf16" on a CPU with AVX512_BF16 the dequantized rows
 *       are rounded to BF16 and go through the BF16 GEMM instead, with x
 *       rounded once into the pool's shared buffer (about twice as fast; the
 *       rounding is precision "bf16"'s, on top of the quantization), and
 *       where AMX runs, through the AMX GEMM (matmul.c: sv_matmul_amx_quant).
 *
 * Nothing here allocates except the shared buffer growing to the largest x seen
 * (and the test hooks). */
#define _DEFAULT_SOURCE /* madvise */
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>

#include "../error.h"
#include "../kernels.h"
#include "../quant.h"
#include "isa.h"

typedef struct {
    const sv_isa *isa;
    const sv_quant_isa *q;
    sv_pool *pool;
    float *y;
    const float *x;
    int64_t n;
    const sv_matrix *W;
    const float *b;
    int8_t *xq; /* the int8 activations [n, ldq], their scales xd[n, nb] and code sums xs[n, nb] */
    int64_t ldq;
    float *xd;
    int32_t *xs;
    const sv_bf16_isa *bf16; /* the BF16 GEMM path: its kernels and x rounded, xb[n, ldx] */
    uint16_t *xb;
    int64_t ldx;
} quant_job;

static const int64_t SCRATCH_FLOATS = SV_POOL_SCRATCH_BYTES / (int64_t)sizeof(float);

static void quantize_task(void *arg, int64_t begin, int64_t end, int thread) {
    const quant_job *j = arg;
    int64_t k = j->W->cols, nb = sv_q_blocks(k);
    for (int64_t i = begin; i < end; i++)
        j->q->quantize(j->xq + i * j->ldq, j->xd + i * nb, j->xs + i * nb, j->x + i * k, k);
}

static void dot_task(void *arg, int64_t begin, int64_t end, int thread) {
    const quant_job *j = arg;
    int64_t r0, r1;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    j->q->dot(j->y, j->W->rows, j->xq, j->ldq, j->xd, j->xs, j->n, j->W, j->b, r0, r1);
}

/* Scratch: the packed panel [K, width], then the dequantized rows [width, K]. */
static void gemm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const quant_job *j = arg;
    int64_t r0, r1, width = j->isa->panel_width, K = j->W->cols;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    float *panel = sv_pool_scratch(j->pool, thread), *rows = panel + K * width;
    for (int64_t r = r0; r < r1; r += width) {
        int64_t w = r1 - r < width ? r1 - r : width;
        for (int64_t i = 0; i < w; i++) sv_q_dequantize_row(rows + i * K, j->W, r + i);
        sv_matrix plain = {rows, ST_F32, w, K};
        j->isa->pack(panel, &plain, 0, w);
        j->isa->gemm(j->y + r, j->W->rows, j->x, j->n, K, panel, w, j->b ? j->b + r : NULL);
    }
}

static void round_task(void *arg, int64_t begin, int64_t end, int thread) {
    const quant_job *j = arg;
    j->bf16->round_rows(j->xb + begin * j->ldx, j->ldx, j->x + begin * j->W->cols, j->W->cols, end - begin,
                        j->W->cols);
}

/* Scratch: the packed BF16 panel [ceil(K / 2), width] (32-bit pairs), the dequantized rows [width, K] in
 * fp32, then the same rows rounded to BF16 [width, K]. */
static int64_t bf16_scratch_bytes(const sv_bf16_isa *bf, int64_t K) {
    return (K + 1) / 2 * bf->panel_width * 4 + bf->panel_width * K * 6;
}

static void bf16_gemm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const quant_job *j = arg;
    int64_t r0, r1, width = j->bf16->panel_width, K = j->W->cols;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    uint32_t *panel = (uint32_t *)sv_pool_scratch(j->pool, thread);
    float *rows = (float *)(void *)(panel + (K + 1) / 2 * width);
    uint16_t *rounded = (uint16_t *)(void *)(rows + width * K);
    for (int64_t r = r0; r < r1; r += width) {
        int64_t w = r1 - r < width ? r1 - r : width;
        for (int64_t i = 0; i < w; i++) sv_q_dequantize_row(rows + i * K, j->W, r + i);
        j->bf16->round_rows(rounded, K, rows, K, w, K);
        j->bf16->pack(panel, rounded, K, K, 0, w);
        j->bf16->gemm(j->y + r, j->W->rows, j->xb, j->ldx, j->n, panel, w, j->b ? j->b + r : NULL);
    }
}

/* The fallback when the shared buffer cannot grow: each row of W dequantized into the thread's scratch. */
static void plain_task(void *arg, int64_t begin, int64_t end, int thread) {
    const quant_job *j = arg;
    int64_t r0, r1, K = j->W->cols;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    float *row = sv_pool_scratch(j->pool, thread);
    for (int64_t r = r0; r < r1; r++) {
        sv_q_dequantize_row(row, j->W, r);
        for (int64_t i = 0; i < j->n; i++) {
            float s = 0.0f;
            for (int64_t c = 0; c < K; c++) s += j->x[i * K + c] * row[c];
            j->y[i * j->W->rows + r] = s + (j->b ? j->b[r] : 0.0f);
        }
    }
}

static void matmul_quant(sv_pool *pool, const sv_isa *isa, const sv_quant_isa *q, const sv_bf16_isa *bf16,
                         const sv_amx_isa *amx, float *y, const float *x, int64_t n, const sv_matrix *W,
                         const float *b) {
    if (n <= 0 || W->rows <= 0) return;
    if (n > q->dot_max_n && sv_matmul_amx_quant(pool, bf16, amx, y, x, n, W, b)) return;
    quant_job job = {isa, q, pool, y, x, n, W, b, NULL, 0, NULL, NULL, NULL, NULL, 0};
    int64_t blocks = sv_row_blocks(W->rows), nb = sv_q_blocks(W->cols);
    if (n > q->dot_max_n && bf16 && bf16_scratch_bytes(bf16, W->cols) <= SV_POOL_SCRATCH_BYTES) {
        job.ldx = (W->cols + 1) / 2 * 2;
        job.xb = sv_pool_shared(pool, (size_t)(n * job.ldx) * sizeof(uint16_t));
        if (job.xb) {
            job.bf16 = bf16;
            sv_pool_run(pool, round_task, &job, n);
            sv_pool_run(pool, bf16_gemm_task, &job, blocks);
            return;
        }
    }
    int gemm_fits = isa->gemm && 2 * W->cols * isa->panel_width <= SCRATCH_FLOATS;
    char *shared = NULL;
    if (n <= q->dot_max_n || !gemm_fits) {
        job.ldq = sv_align64(nb * SV_QBLOCK);
        shared = sv_pool_shared(pool, (size_t)(n * job.ldq + n * nb * (int64_t)(sizeof(float) + sizeof(int32_t))));
    }
    if (shared) {
        job.xq = (int8_t *)shared;
        job.xd = (float *)(void *)(shared + n * job.ldq);
        job.xs = (int32_t *)(void *)(job.xd + n * nb);
        if (n * W->cols <= (1 << 16)) quantize_task(&job, 0, n, 0); /* decode: not worth waking the pool */
        else sv_pool_run(pool, quantize_task, &job, n);
        sv_pool_run(pool, dot_task, &job, blocks);
    } else {
        sv_pool_run(pool, gemm_fits ? gemm_task : plain_task, &job, blocks);
    }
}

/* The BF16 kernels a precision runs with at this level: NULL for fp32 (as matmul.c). */
static const sv_bf16_isa *bf16_kernels(int32_t precision, sv_isa_level level) {
    return precision == SV_PRECISION_BF16 ? sv_bf16_isa_for(level) : NULL;
}

void sv_matmul_quant(sv_pool *pool, sv_precision precision, sv_isa_level level, float *y, const float *x, int64_t n,
                     const sv_matrix *W, const float *b) {
    matmul_quant(pool, sv_isa_for(level), sv_quant_isa_for(level), bf16_kernels(precision, level),
                 precision == SV_PRECISION_BF16 ? sv_amx_for(level) : NULL, y, x, n, W, b);
}

/* ---- test hooks (declared in smolvision.h) ---- */

/* A quantized copy of w[rows, cols] (fp32) in a fresh 64-byte aligned region; NULL if out of memory. */
static void *quantize_matrix(st_dtype t, const float *w, int64_t rows, int64_t cols, sv_matrix *out) {
    int64_t bytes = (sv_q_matrix_bytes(t, rows, cols) + (2 << 20) - 1) / (2 << 20) * (2 << 20);
    void *region = aligned_alloc(2 << 20, (size_t)bytes);
    if (!region) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(region, (size_t)bytes, MADV_HUGEPAGE); /* as numpy does for its arrays: benchmarks compare alike */
#endif
    memset(region, 0, (size_t)bytes);
    *out = (sv_matrix){region, t, rows, cols};
    for (int64_t r = 0; r < rows; r++)
        sv_q_quantize_row(t, (uint8_t *)sv_q_codes(out, r), (uint16_t *)sv_q_scales(out, r), w + r * cols, cols);
    return region;
}

static sv_status quant_type(int32_t quant, st_dtype *t) {
    if (quant != SV_QUANT_Q8 && quant != SV_QUANT_Q4)
        return sv_fail(SV_ERR_ARG, "quant is %d, not %d (q8) or %d (q4)", quant, SV_QUANT_Q8, SV_QUANT_Q4);
    *t = quant == SV_QUANT_Q8 ? ST_Q8 : ST_Q4;
    return SV_OK;
}

sv_status sv_debug_quantize(int32_t quant, const float *w, int64_t rows, int64_t cols, float *out) {
    st_dtype t = ST_Q8;
    sv_status s = quant_type(quant, &t);
    if (s) return s;
    if (rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX)
        return sv_fail(SV_ERR_ARG, "bad shape [%lld, %lld]", (long long)rows, (long long)cols);
    sv_matrix W;
    void *region = quantize_matrix(t, w, rows, cols, &W);
    if (!region) return sv_fail(SV_ERR_NOMEM, "out of memory");
    for (int64_t r = 0; r < rows; r++) sv_q_dequantize_row(out + r * cols, &W, r);
    free(region);
    return SV_OK;
}

sv_status sv_debug_matmul_quant(const char *isa_name, int32_t quant, int32_t precision, const float *x, int64_t n,
                                const float *w, int64_t rows, int64_t cols, const float *b, float *y,
                                int32_t threads, int32_t repeat, double *seconds) {
    int level = isa_name ? sv_isa_parse(isa_name) : -1;
    if (level < 0)
        return sv_fail(SV_ERR_ARG, "unknown ISA '%s' (portable, avx2, avx512, avx512bf16, neon)", isa_name ? isa_name : "(null)");
    const sv_isa *isa = sv_isa_for((sv_isa_level)level);
    const sv_quant_isa *q = sv_quant_isa_for((sv_isa_level)level);
    if (!isa || !q) return sv_fail(SV_ERR_UNSUPPORTED, "this CPU or build cannot run the %s kernels", isa_name);
    st_dtype t = ST_Q8;
    sv_status s = quant_type(quant, &t);
    if (s) return s;
    if (precision != SV_PRECISION_FP32 && precision != SV_PRECISION_BF16)
        return sv_fail(SV_ERR_ARG, "precision is %d, not 0 (fp32) or 1 (bf16)", precision);
    const sv_bf16_isa *bf16 = bf16_kernels(precision, (sv_isa_level)level);
    const sv_amx_isa *amx = precision == SV_PRECISION_BF16 ? sv_amx_for((sv_isa_level)level) : NULL;
    if (level == SV_ISA_AMX && precision == SV_PRECISION_BF16 && !amx)
        return sv_fail(SV_ERR_UNSUPPORTED, "AMX does not run in this process: %s", sv_amx_status());
    if (n < 0 || rows < 1 || cols < 1 || n > INT32_MAX || rows > INT32_MAX || cols > INT32_MAX || threads < 1 ||
        repeat < 1)
        return sv_fail(SV_ERR_ARG, "bad matmul arguments n=%lld rows=%lld cols=%lld threads=%d repeat=%d",
                       (long long)n, (long long)rows, (long long)cols, threads, repeat);
    sv_matrix W;
    void *region = quantize_matrix(t, w, rows, cols, &W);
    if (!region) return sv_fail(SV_ERR_NOMEM, "out of memory");
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) {
        free(region);
        return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    }
    if (seconds) matmul_quant(pool, isa, q, bf16, amx, y, x, n, &W, b); /* warm-up */
    double start = sv_seconds();
    for (int32_t i = 0; i < repeat; i++) matmul_quant(pool, isa, q, bf16, amx, y, x, n, &W, b);
    if (seconds) *seconds = sv_seconds() - start;
    sv_pool_free(pool);
    free(region);
    return SV_OK;
}

const char *sv_kernels_quant(void) { return sv_quant_isa_for(sv_isa_selected())->name; }
