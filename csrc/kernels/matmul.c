/* matmul.c - sv_matmul and sv_matrix_row: choose a kernel for the shape and
 * split the output features (rows of W) evenly over the pool's threads.
 *
 *   small n (decode, short prompts; the ISA's dot_max_n): the ISA's dot
 *       kernel streams each weight row once, widening in registers; memory
 *       bound at n = 1.
 *   larger n: the ISA's own packed-panel GEMM kernel (AVX2, AVX-512).  Where
 *       the ISA has none (portable builds; NEON where BLAS is linked), BLAS sgemm: each
 *       thread widens panels of its rows of W into its pool scratch and runs
 *       a single-threaded sgemm on them (F32 weights go to sgemm as they are);
 *       without BLAS, the dot kernel.
 *
 * Own GEMM before BLAS because it measured faster on Zen 4 (bench_kernels.py:
 * SigLIP shapes, n = 729, one thread: 105 vs 92 GFLOP/s for BF16 weights,
 * where BLAS pays for widening a panel and then packing it again).
 * Every path computes the same fp32 sums in a different order, so results
 * agree to fp32 rounding.
 *
 * Precision "bf16" (the context's, set from the model's load options) with BF16
 * weights on a CPU with AVX512_BF16: the activations are rounded to BF16 once
 * per matmul into the pool's shared buffer, in parallel, and the BF16 x BF16
 * kernels (isa.h: sv_bf16_isa) run the same dot / packed-GEMM split; anything
 * else, or a shared buffer that cannot grow, takes the fp32 paths above.
 * At level amx (dispatch.c: granted and self-checked) products of more than
 * the AMX kernels' min_n rows run on tiles instead of the BF16 GEMM: x is
 * rounded into whole tiles, each 1 KB contiguous (isa.h: sv_amx_operand),
 * panels are packed as for the BF16 GEMM, zero-padded to whole tiles, a
 * group at a time (amx_task).  Products of 2 to 16 rows (several sequences'
 * decode steps) whose K is whole tiles take the few-rows AMX kernel instead,
 * which reads the weights in place (amx_few_task).  Where AMX does not run, prompt-sized BF16
 * products take whichever of the BF16 and the fp32 GEMM won a race (below).
 * Nothing here allocates except that buffer growing to the largest x seen. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"
#include "../error.h"
#include "../quant.h"
#include "../profile.h"
#include "isa.h"

#if defined(SV_BLAS_SCIPY_OPENBLAS)
#include <cblas.h>
#define SV_HAVE_BLAS 1
#define blas_sgemm scipy_cblas_sgemm
#elif defined(SV_BLAS_OPENBLAS)
#include <cblas.h>
#define SV_HAVE_BLAS 1
#define blas_sgemm cblas_sgemm
#elif defined(SV_BLAS_ACCELERATE)
#include <Accelerate/Accelerate.h>
#define SV_HAVE_BLAS 1
#define blas_sgemm cblas_sgemm
#else
#define SV_HAVE_BLAS 0
#endif

enum { BLAS_PANEL_MAX = 512 }; /* rows of W widened per sgemm call: 256 and 512 measured best */

/* The AMX path (amx_task): panels packed per group, x taken in chunks of rows, each sized to share L2. */
enum { AMX_GROUP_BYTES = 1 << 20, AMX_X_CHUNK_BYTES = 256 << 10 };

typedef enum { PATH_DOT, PATH_BLAS, PATH_GEMM, PATH_BF16_DOT, PATH_BF16_GEMM, PATH_AMX, PATH_AMX_FEW } matmul_path;

/* When BLAS may run (the `blas` argument of sv_debug_matmul). */
typedef enum { BLAS_NEVER = 0, BLAS_FIRST = 1, BLAS_FALLBACK = 2 } blas_use;

typedef struct {
    const sv_isa *isa;
    sv_pool *pool;
    float *y;
    const float *x;
    int64_t n;
    const sv_matrix *W;
    const float *b;
    const sv_bf16_isa *bf16; /* the BF16 paths: their kernels and x rounded, xb[n, ldx] */
    const sv_amx_isa *amx;   /* the AMX path (NULL: not this product): xb[round_up(n, row_align), ldx] */
    uint16_t *xb;
    int64_t ldx;
} matmul_job;

static const int64_t SCRATCH_FLOATS = SV_POOL_SCRATCH_BYTES / (int64_t)sizeof(float);

static void dot_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    int64_t r0, r1;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    j->isa->dot(j->y, j->W->rows, j->x, j->n, j->W, j->b, r0, r1);
}

static void gemm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    int64_t r0, r1, width = j->isa->panel_width, ldy = j->W->rows;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    float *panel = sv_pool_scratch(j->pool, thread);
    for (int64_t r = r0; r < r1; r += width) {
        int64_t w = r1 - r < width ? r1 - r : width;
        j->isa->pack(panel, j->W, r, r + w);
        j->isa->gemm(j->y + r, ldy, j->x, j->n, j->W->cols, panel, w, j->b ? j->b + r : NULL);
    }
}

/* xb[i, :] = x[i, :] rounded to BF16, nearest even (finite inputs), zero-padded: the rounding of the emulated
 * AMX tests and of sv_to_bf16_rows where there are no AVX512_BF16 kernels. */
static void round_rows_plain(uint16_t *xb, int64_t ldx, const float *x, int64_t ldsrc, int64_t n, int64_t k) {
    for (int64_t i = 0; i < n; i++) {
        sv_to_bf16_plain(xb + i * ldx, x + i * ldsrc, k);
        for (int64_t c = k; c < ldx; c++) xb[i * ldx + c] = 0;
    }
}

/* The job's rounding to BF16: the BF16 kernels', else plain C (the emulated AMX kernel's tests, any CPU). */
static sv_round_rows_fn *rounder(const matmul_job *j) { return j->bf16 ? j->bf16->round_rows : round_rows_plain; }

static void round_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    rounder(j)(j->xb + begin * j->ldx, j->ldx, j->x + begin * j->W->cols, j->W->cols, end - begin, j->W->cols);
}

static void bf16_dot_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    int64_t r0, r1;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    j->bf16->dot(j->y, j->W->rows, j->xb, j->ldx, j->n, j->W, j->b, r0, r1);
}

/* The BF16 GEMM: this task's weight rows packed a panel at a time into the thread's scratch, every input
 * row multiplied by it. */
static void bf16_gemm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    int64_t r0, r1, ldy = j->W->rows, width = j->bf16->panel_width;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    uint32_t *panel = (uint32_t *)sv_pool_scratch(j->pool, thread);
    for (int64_t r = r0; r < r1; r += width) {
        int64_t w = r1 - r < width ? r1 - r : width;
        j->bf16->pack(panel, j->W->data, j->W->cols, j->W->cols, r, r + w);
        j->bf16->gemm(j->y + r, ldy, j->xb, j->ldx, j->n, panel, w, j->b ? j->b + r : NULL);
    }
}

/* The AMX path's x: xb rounded into whole tiles, each 16 rows x 32 elements contiguous (isa.h,
 * sv_amx_operand); items are blocks of 16 rows, those past n zero.  BF16 W: each tile rounded in place from
 * x's 16 rows.  Quantized W: the columns in the group order of its dequantized rows (bf16_rows), so each row
 * is rounded and reordered in the thread's scratch, then copied a tile row at a time. */
static void round_tiles_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    const int64_t k = j->W->cols, tk = j->amx->k_align, tr = j->amx->row_align, steps = j->ldx / tk;
    uint16_t *row = (uint16_t *)sv_pool_scratch(j->pool, thread); /* one row rounded, zero-padded to ldx */
    uint16_t *ordered = row + j->ldx;
    for (int64_t t = begin; t < end; t++) {
        uint16_t *block = j->xb + t * tr * j->ldx;
        int64_t rows = j->n - t * tr; /* of x, in this block */
        rows = rows < 0 ? 0 : rows > tr ? tr : rows;
        for (int64_t s = 0; s < steps; s++) /* rows past n: zero */
            memset(block + s * tr * tk + rows * tk, 0, (size_t)((tr - rows) * tk) * sizeof *block);
        if (!sv_dtype_is_quant(j->W->dtype)) {
            for (int64_t s = 0; s < steps && rows; s++)
                rounder(j)(block + s * tr * tk, tk, j->x + t * tr * k + s * tk, k, rows,
                           k - s * tk < tk ? k - s * tk : tk);
            continue;
        }
        for (int64_t r = 0; r < rows; r++) {
            rounder(j)(row, j->ldx, j->x + (t * tr + r) * k, k, 1, k);
            sv_q_group_order(ordered, row, k);
            for (int64_t s = 0; s < steps; s++)
                memcpy(block + s * tr * tk + r * tk, ordered + s * tk, (size_t)tk * sizeof *row);
        }
    }
}

/* Rows [r0, r1) of W as BF16 rows, and their length (the stride and the columns the panels take): BF16
 * weights as they are (W.cols); quantized ones dequantized into rows16 in the group order (the AMX kernels'
 * dequantize_row; ldx columns, the padding zeros), which x's tiles follow (round_tiles_task). */
static const uint16_t *bf16_rows(const matmul_job *j, int64_t r0, int64_t r1, uint16_t *rows16, int64_t *cols) {
    if (!sv_dtype_is_quant(j->W->dtype)) {
        *cols = j->W->cols;
        return (const uint16_t *)j->W->data + r0 * *cols;
    }
    *cols = j->ldx;
    for (int64_t r = r0; r < r1; r++) j->amx->dequantize_row(rows16 + (r - r0) * *cols, j->W, r);
    return rows16;
}

/* Panels are packed a group at a time (up to AMX_GROUP_BYTES, in the thread's scratch) and x is taken
 * AMX_X_CHUNK_BYTES of rows at a time against the whole group: both then stay in L2, and x is read from
 * memory once per group rather than once per panel.  Quantized weights: the group's rows dequantized to
 * BF16 after the panels in the scratch (as many bytes again). */
static void amx_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    const sv_amx_isa *amx = j->amx;
    const int64_t width = amx->panel_width, tk = amx->k_align, tr = amx->row_align, steps = j->ldx / tk;
    const int64_t ldy = j->W->rows;
    const int64_t panel_words = j->ldx / 2 * width;
    int64_t r0, r1;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    int64_t group = AMX_GROUP_BYTES / (panel_words * (int64_t)sizeof(uint32_t));
    if (group < 1) group = 1;
    int64_t chunk = AMX_X_CHUNK_BYTES / (j->ldx * (int64_t)sizeof *j->xb) / tr * tr;
    if (chunk < 2 * tr) chunk = 2 * tr; /* two A tiles: each B tile load then serves two products */
    uint32_t *panels = (uint32_t *)sv_pool_scratch(j->pool, thread);
    uint16_t *rows16 = (uint16_t *)(void *)((char *)panels + AMX_GROUP_BYTES);
    for (int64_t g = r0; g < r1; g += group * width) {
        int64_t g1 = g + group * width < r1 ? g + group * width : r1, cols;
        const uint16_t *w = bf16_rows(j, g, g1, rows16, &cols); /* row g first */
        for (int64_t r = g; r < g1; r += width)
            amx->pack(panels + (r - g) / width * panel_words, w, cols, cols, r - g,
                      (r + width < g1 ? r + width : g1) - g);
        for (int64_t i = 0; i < j->n; i += chunk) {
            sv_amx_operand a = {j->xb + i * j->ldx, tk * (int64_t)sizeof *j->xb, tr * tk, tr * j->ldx};
            amx->gemm(j->y + i * ldy + g, ldy, &a, j->n - i < chunk ? j->n - i : chunk, steps, panels, panel_words,
                      g1 - g, j->b ? j->b + g : NULL);
        }
    }
}

/* The few-rows AMX path (gemm_few): x's BF16 pairs transposed into xt (sv_amx_isa), in the pool's shared
 * buffer; 0 where the path does not take this product: not 2 to few_max_n rows, W not BF16, K not whole
 * tiles, or no buffer. */
static int few_operand(matmul_job *j) {
    const sv_amx_isa *amx = j->amx;
    const int64_t K = j->W->cols, tk = amx->k_align, m = amx->few_max_n;
    if (j->n < 2 || j->n > m || j->W->dtype != ST_BF16 || K % tk ||
        amx->row_align * K * (int64_t)sizeof(uint16_t) > SV_POOL_SCRATCH_BYTES) /* amx_few_task's padded block */
        return 0;
    uint32_t *xt = sv_pool_shared(j->pool, (size_t)(K / 2 * m) * sizeof *xt);
    uint16_t *row = (uint16_t *)sv_pool_scratch(j->pool, 0); /* the caller's thread: the pool is idle */
    if (!xt) return 0;
    memset(xt, 0, (size_t)(K / 2 * m) * sizeof *xt);
    for (int64_t i = 0; i < j->n; i++) {
        rounder(j)(row, K, j->x + i * K, K, 1, K);
        sv_amx_few_column(xt, m, i, row, K);
    }
    j->xb = (uint16_t *)(void *)xt;
    return 1;
}

/* Blocks of SV_ROW_BLOCK weight rows on the few-rows AMX path; a last partial block of row_align rows is
 * copied, zero-padded, into the thread's scratch first (the tiles read whole blocks). */
static void amx_few_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    const sv_amx_isa *amx = j->amx;
    const int64_t K = j->W->cols, ta = amx->row_align, ldy = j->W->rows;
    const uint16_t *w = j->W->data;
    int64_t r0, r1;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    const int64_t whole = r0 + (r1 - r0) / ta * ta;
    const uint32_t *xt = (const uint32_t *)(const void *)j->xb;
    if (whole > r0)
        amx->gemm_few(j->y + r0, ldy, xt, j->n, K / amx->k_align, w + r0 * K, K, whole - r0, j->b ? j->b + r0 : NULL);
    if (whole < r1) {
        uint16_t *pad = (uint16_t *)sv_pool_scratch(j->pool, thread);
        memcpy(pad, w + whole * K, (size_t)((r1 - whole) * K) * sizeof *pad);
        memset(pad + (r1 - whole) * K, 0, (size_t)((ta - (r1 - whole)) * K) * sizeof *pad);
        amx->gemm_few(j->y + whole, ldy, xt, j->n, K / amx->k_align, pad, K, r1 - whole, j->b ? j->b + whole : NULL);
    }
}

#if SV_HAVE_BLAS
static void add_bias(float *y, int64_t ldy, int64_t n, const float *b, int64_t width) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < width; c++) y[i * ldy + c] += b[c];
}

/* y[:, r0:r0+width] = x @ B^T for B[width, K] fp32 row-major. */
static void sgemm_rows(const matmul_job *j, const float *B, int64_t r0, int64_t width) {
    int64_t K = j->W->cols, ldy = j->W->rows;
    blas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->n, (int)width, (int)K, 1.0f, j->x, (int)K, B, (int)K,
               0.0f, j->y + r0, (int)ldy);
    if (j->b) add_bias(j->y + r0, ldy, j->n, j->b + r0, width);
}

static int f32_usable_directly(const sv_matrix *W) { return W->dtype == ST_F32 && (uintptr_t)W->data % 4 == 0; }

static void blas_task(void *arg, int64_t begin, int64_t end, int thread) {
    const matmul_job *j = arg;
    int64_t r0, r1, K = j->W->cols;
    sv_block_rows(begin, end, j->W->rows, &r0, &r1);
    if (f32_usable_directly(j->W)) {
        sgemm_rows(j, (const float *)j->W->data + r0 * K, r0, r1 - r0);
        return;
    }
    int64_t panel_rows = SCRATCH_FLOATS / K / SV_ROW_BLOCK * SV_ROW_BLOCK;
    if (panel_rows > BLAS_PANEL_MAX) panel_rows = BLAS_PANEL_MAX;
    float *panel = sv_pool_scratch(j->pool, thread);
    for (int64_t r = r0; r < r1; r += panel_rows) {
        int64_t w = r1 - r < panel_rows ? r1 - r : panel_rows;
        j->isa->widen(panel, j->W, r, r + w);
        sgemm_rows(j, panel, r, w);
    }
}

/* Our pool already runs one sgemm per core; OpenBLAS threads on top would
 * only contend with it. */
static void blas_single_threaded(void) {
#if defined(SV_BLAS_SCIPY_OPENBLAS)
    scipy_openblas_set_num_threads(1);
#elif defined(SV_BLAS_OPENBLAS)
    openblas_set_num_threads(1);
#endif
}
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
#endif

static matmul_path choose_path(const sv_isa *isa, blas_use use, int64_t n, const sv_matrix *W) {
    if (n <= isa->dot_max_n) return PATH_DOT;
    int own = isa->gemm && W->cols * isa->panel_width <= SCRATCH_FLOATS;
#if SV_HAVE_BLAS
    int blas = f32_usable_directly(W) || W->cols * SV_ROW_BLOCK <= SCRATCH_FLOATS;
    if (blas && (use == BLAS_FIRST || (use == BLAS_FALLBACK && !own))) return PATH_BLAS;
#endif
    return own ? PATH_GEMM : PATH_DOT;
}

static int64_t round_up(int64_t v, int64_t multiple) { return (v + multiple - 1) / multiple * multiple; }

/* ---- the BF16 GEMM or the fp32 one, by measured speed ----
 * vdpbf16ps runs at twice the FP32 FMA rate on Zen 4 but at half of it on Sapphire Rapids, so where AMX does
 * not take the product (absent, refused, or SMOLVISION_ISA=avx512bf16) the feature name does not say which
 * GEMM is faster: once per process the two race on a small product in cache, x rounded and W packed included,
 * and prompt-sized products of precision "bf16" take the winner (decode's memory-bound dot stays BF16). */
enum { RACE_N = 64, RACE_K = 512, RACE_ROWS = 96, RACE_REPEATS = 5 };

typedef struct {
    float *x, *y, *panel;
    uint16_t *w, *xb;
} race_buffers;

static double race_fp32(const sv_isa *isa, const race_buffers *r) {
    sv_matrix W = {r->w, ST_BF16, RACE_ROWS, RACE_K};
    double start = sv_seconds();
    for (int64_t row = 0; row < RACE_ROWS; row += isa->panel_width) {
        int64_t w = RACE_ROWS - row < isa->panel_width ? RACE_ROWS - row : isa->panel_width;
        isa->pack(r->panel, &W, row, row + w);
        isa->gemm(r->y + row, RACE_ROWS, r->x, RACE_N, RACE_K, r->panel, w, NULL);
    }
    return sv_seconds() - start;
}

static double race_bf16(const sv_bf16_isa *bf, const race_buffers *r) {
    double start = sv_seconds();
    bf->round_rows(r->xb, RACE_K, r->x, RACE_K, RACE_N, RACE_K);
    for (int64_t row = 0; row < RACE_ROWS; row += bf->panel_width) {
        int64_t w = RACE_ROWS - row < bf->panel_width ? RACE_ROWS - row : bf->panel_width;
        bf->pack((uint32_t *)r->panel, r->w, RACE_K, RACE_K, row, row + w);
        bf->gemm(r->y + row, RACE_ROWS, r->xb, RACE_K, RACE_N, (const uint32_t *)r->panel, w, NULL);
    }
    return sv_seconds() - start;
}

static pthread_once_t race_once = PTHREAD_ONCE_INIT;
static int bf16_gemm_faster = 1; /* the race's result; where it cannot run, the BF16 GEMM as before */

static void race(void) {
    sv_isa_level level = sv_isa_selected();
    const sv_isa *isa = sv_isa_for(level);
    const sv_bf16_isa *bf = sv_bf16_isa_for(level);
    if (!isa || !isa->gemm || !bf) return;
    size_t panel_bytes = (size_t)RACE_K * (size_t)(isa->panel_width > bf->panel_width ? isa->panel_width
                                                                                      : bf->panel_width) * 4;
    race_buffers r = {aligned_alloc(64, RACE_N * RACE_K * sizeof(float)), aligned_alloc(64, RACE_N * RACE_ROWS * sizeof(float)),
                      aligned_alloc(64, panel_bytes), aligned_alloc(64, RACE_ROWS * RACE_K * sizeof(uint16_t)),
                      aligned_alloc(64, RACE_N * RACE_K * sizeof(uint16_t))};
    if (r.x && r.y && r.panel && r.w && r.xb) {
        for (int64_t i = 0; i < RACE_N * RACE_K; i++) r.x[i] = (float)(i % 7) - 3.0f;
        for (int64_t i = 0; i < RACE_ROWS * RACE_K; i++) r.w[i] = 0x3F80; /* 1.0 */
        double fp32 = 1e30, bf16 = 1e30;
        for (int i = 0; i <= RACE_REPEATS; i++) { /* round 0 warms the caches up, interleaved against drift */
            double f = race_fp32(isa, &r), b = race_bf16(bf, &r);
            if (i > 0) fp32 = f < fp32 ? f : fp32, bf16 = b < bf16 ? b : bf16;
        }
        bf16_gemm_faster = bf16 <= fp32;
    }
    free(r.x);
    free(r.y);
    free(r.panel);
    free(r.w);
    free(r.xb);
}

/* Whether prompt-sized products of precision "bf16" (more than the BF16 dot's rows, AMX aside) run the BF16
 * GEMM: the race's winner. */
static int bf16_gemm_wins(void) {
    pthread_once(&race_once, race);
    return bf16_gemm_faster;
}

/* Whether this product takes the BF16 paths (AMX among them: job->amx stays set only if it does); if so, x
 * is rounded into the pool's shared buffer (job->xb), padded with zeros as the path needs.  measured: a
 * product for the BF16 GEMM takes the fp32 paths instead where those won the race above. */
static int round_for_bf16(matmul_job *job, int measured) {
    const sv_amx_isa *amx = job->amx;
    const int quant = sv_dtype_is_quant(job->W->dtype); /* AMX only (sv_matmul_amx_quant) */
    job->amx = NULL;
    if (job->W->dtype != ST_BF16 && !quant) return 0;
    if (amx && job->n > amx->min_n &&
        round_up(job->W->cols, amx->k_align) / 2 * amx->panel_width * (int64_t)sizeof(uint32_t) <= AMX_GROUP_BYTES &&
        2 * AMX_GROUP_BYTES <= SV_POOL_SCRATCH_BYTES && 2 * round_up(job->W->cols, amx->k_align) *
        (int64_t)sizeof(uint16_t) <= SV_POOL_SCRATCH_BYTES) /* amx_task's; round_tiles_task's two rows */
        job->amx = amx;
    if ((!job->bf16 && !job->amx) || (quant && !job->amx)) return 0;
    if (!job->amx && measured && job->n > job->bf16->dot_max_n && !bf16_gemm_wins()) return 0;
    job->ldx = round_up(job->W->cols, job->amx ? job->amx->k_align : 2);
    int64_t rows = job->amx ? round_up(job->n, job->amx->row_align) : job->n;
    job->xb = sv_pool_shared(job->pool, (size_t)(rows * job->ldx) * sizeof(uint16_t));
    if (!job->xb) {
        job->amx = NULL;
        return 0;
    }
    if (job->amx)
        sv_pool_run(job->pool, round_tiles_task, job, rows / job->amx->row_align);
    else
        sv_pool_run(job->pool, round_task, job, job->n);
    return 1;
}

static matmul_path choose_bf16_path(const sv_bf16_isa *bf, int64_t n, const sv_matrix *W) {
    int gemm_fits = (W->cols + 1) / 2 * bf->panel_width * (int64_t)sizeof(uint32_t) <= SV_POOL_SCRATCH_BYTES;
    return n > bf->dot_max_n && gemm_fits ? PATH_BF16_GEMM : PATH_BF16_DOT;
}

/* The path of job's product, with x prepared for it (rounded to BF16 into the pool's shared buffer where the
 * path takes BF16).  The choice and the prepared x depend on x, n and W's dtype and width only, so products of
 * one x with weights alike share them (sv_matmul_shared). */
static matmul_path prepare(matmul_job *job, blas_use use, int measured) {
    return job->amx && few_operand(job)        ? PATH_AMX_FEW
           : !round_for_bf16(job, measured) ? choose_path(job->isa, use, job->n, job->W)
           : job->amx                       ? PATH_AMX
                                            : choose_bf16_path(job->bf16, job->n, job->W);
}

static void run(matmul_job *job, matmul_path path) {
    sv_pool *pool = job->pool;
    int64_t blocks = sv_row_blocks(job->W->rows);
    switch (path) {
    case PATH_AMX_FEW: sv_pool_run(pool, amx_few_task, job, blocks); break;
    case PATH_AMX: sv_pool_run(pool, amx_task, job, blocks); break;
    case PATH_BF16_DOT: sv_pool_run(pool, bf16_dot_task, job, blocks); break;
    case PATH_BF16_GEMM: sv_pool_run(pool, bf16_gemm_task, job, blocks); break;
    case PATH_DOT: sv_pool_run(pool, dot_task, job, blocks); break;
    case PATH_GEMM: sv_pool_run(pool, gemm_task, job, blocks); break;
    case PATH_BLAS:
#if SV_HAVE_BLAS
        pthread_once(&blas_once, blas_single_threaded);
        sv_pool_run(pool, blas_task, job, blocks);
#endif
        break;
    }
}

/* y_p = x @ W_p^T + b_p for count products whose weights share a dtype (not quantized) and a width.
 * amx, bf16: NULL where the products do not run on them; isa takes whatever they do not.  measured: let the
 * race between the BF16 and the fp32 GEMM decide (sv_matmul; the test hooks run the kernels named). */
static void matmul_many(sv_pool *pool, const sv_isa *isa, const sv_bf16_isa *bf16, const sv_amx_isa *amx,
                        blas_use use, int measured, const float *x, int64_t n, const sv_product *products, int count) {
    if (n <= 0 || count <= 0) return;
    matmul_job job = {isa, pool, NULL, x, n, products[0].W, NULL, bf16, amx, NULL, 0};
    matmul_path path = prepare(&job, use, measured);
    for (int p = 0; p < count; p++) {
        if (products[p].W->rows <= 0) continue;
        job.y = products[p].y;
        job.W = products[p].W;
        job.b = products[p].b;
        run(&job, path);
    }
}

static void matmul(sv_pool *pool, const sv_isa *isa, const sv_bf16_isa *bf16, const sv_amx_isa *amx, blas_use use,
                   int measured, float *y, const float *x, int64_t n, const sv_matrix *W, const float *b) {
    const sv_product product = {y, W, b};
    if (W->rows > 0) matmul_many(pool, isa, bf16, amx, use, measured, x, n, &product, 1);
}

/* The BF16 kernels a precision runs with at this ISA level: NULL for fp32. */
static const sv_bf16_isa *bf16_kernels(sv_precision precision, sv_isa_level level) {
    return precision == SV_PRECISION_BF16 ? sv_bf16_isa_for(level) : NULL;
}

/* The AMX kernels a precision runs with at this ISA level: NULL for fp32, below amx, or where AMX was
 * refused or failed its self-check (the first call at level amx runs both). */
static const sv_amx_isa *amx_kernels(sv_precision precision, sv_isa_level level) {
    return precision == SV_PRECISION_BF16 ? sv_amx_for(level) : NULL;
}

int sv_matmul_amx_quant(sv_pool *pool, const sv_bf16_isa *bf16, const sv_amx_isa *amx, float *y, const float *x,
                        int64_t n, const sv_matrix *W, const float *b) {
    matmul_job job = {NULL, pool, y, x, n, W, b, bf16, amx, NULL, 0};
    if (!amx || n <= 0 || W->rows <= 0 || !round_for_bf16(&job, 0)) return 0;
    sv_pool_run(pool, amx_task, &job, sv_row_blocks(W->rows));
    return 1;
}

void sv_matmul_with(sv_pool *pool, const sv_isa *isa, const sv_bf16_isa *bf16, const sv_amx_isa *amx, float *y,
                    const float *x, int64_t n, const sv_matrix *W, const float *b) {
    matmul(pool, isa, bf16, amx, BLAS_FALLBACK, 0, y, x, n, W, b);
}

void sv_matmul(const sv_ctx *ctx, float *y, const float *x, int64_t n, const sv_matrix *W, const float *b) {
    double t = sv_op_begin(ctx);
    sv_isa_level level = sv_isa_selected();
    if (sv_dtype_is_quant(W->dtype))
        sv_matmul_quant(ctx->pool, ctx->precision, level, y, x, n, W, b); /* load option quant: matmul_quant.c */
    else
        matmul(ctx->pool, sv_isa_for(level), bf16_kernels(ctx->precision, level), amx_kernels(ctx->precision, level),
               BLAS_FALLBACK, 1, y, x, n, W, b);
    sv_op_end(ctx, SV_OP_MATMUL, t);
}

/* Whether products[1:] can share products[0]'s path and prepared x (prepare): weights of one dtype, not
 * quantized (their products take matmul_quant.c's paths), and one width. */
static int alike(const sv_product *products, int count) {
    for (int p = 0; p < count; p++)
        if (sv_dtype_is_quant(products[p].W->dtype) || products[p].W->dtype != products[0].W->dtype ||
            products[p].W->cols != products[0].W->cols)
            return 0;
    return 1;
}

void sv_matmul_shared(const sv_ctx *ctx, const float *x, int64_t n, const sv_product *products, int count) {
    if (!alike(products, count)) {
        for (int p = 0; p < count; p++) sv_matmul(ctx, products[p].y, x, n, products[p].W, products[p].b);
        return;
    }
    double t = sv_op_begin(ctx);
    sv_isa_level level = sv_isa_selected();
    matmul_many(ctx->pool, sv_isa_for(level), bf16_kernels(ctx->precision, level),
                amx_kernels(ctx->precision, level), BLAS_FALLBACK, 1, x, n, products, count);
    sv_op_end(ctx, SV_OP_MATMUL, t);
}

int sv_matmul_in_bf16(const sv_ctx *ctx, st_dtype weights) {
    return (weights == ST_BF16 || sv_dtype_is_quant(weights)) &&
           bf16_kernels(ctx->precision, sv_isa_selected()) != NULL;
}

void sv_to_bf16_rows(uint16_t *dst, int64_t ldd, const float *x, int64_t ldx, int64_t rows, int64_t n) {
    const sv_bf16_isa *bf16 = sv_bf16_isa_for(sv_isa_selected());
    if (bf16) {
        bf16->round_rows(dst, ldd, x, ldx, rows, n);
        return;
    }
    round_rows_plain(dst, ldd, x, ldx, rows, n);
}

void sv_to_bf16_plain(uint16_t *dst, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = sv_float_to_bf16(x[i]);
}

void sv_matrix_row(float *dst, const sv_matrix *W, int64_t row) {
    if (sv_dtype_is_quant(W->dtype)) {
        sv_q_dequantize_row(dst, W, row);
        return;
    }
    sv_isa_for(sv_isa_selected())->widen(dst, W, row, row + 1);
}

/* ---- test hooks (declared in smolvision.h) ---- */

const char *sv_kernels_isa(void) {
    sv_isa_level level = sv_isa_selected();
    if (level == SV_ISA_AMX && !sv_amx_for(level)) level = SV_ISA_AVX512BF16; /* refused or failed: what runs */
    return sv_isa_level_name(level);
}

const char *sv_kernels_amx(void) { return sv_amx_status(); }

int32_t sv_kernels_bf16(void) { return sv_bf16_isa_for(sv_isa_selected()) != NULL; }

const char *sv_kernels_bf16_gemm(void) {
    sv_isa_level level = sv_isa_selected();
    if (sv_amx_for(level)) return "amx";
    if (!sv_bf16_isa_for(level)) return "fp32";
    return bf16_gemm_wins() ? "avx512bf16" : "fp32 (faster than avx512bf16 here)";
}

/* count products of x: W_p = w + p rows cols weights, y_p = y + p n rows (sv_debug_matmul_shared; 1 for the
 * others), each with bias b (or none). */
static sv_status debug_matmul(const char *isa_name, int32_t precision, int32_t blas, const float *x, int64_t n,
                              const void *w, int32_t dtype, int64_t rows, int64_t cols, const float *b, float *y,
                              int32_t threads, int32_t repeat, double *seconds, int32_t count) {
    int level = isa_name ? sv_isa_parse(isa_name) : -1;
    if (level < 0)
        return sv_fail(SV_ERR_ARG, "unknown ISA '%s' (portable, avx2, avx512, avx512bf16, amx, neon)", isa_name ? isa_name : "(null)");
    const sv_isa *isa = sv_isa_for((sv_isa_level)level);
    if (!isa) return sv_fail(SV_ERR_UNSUPPORTED, "this CPU or build cannot run the %s kernels", isa_name);
    if (precision != SV_PRECISION_FP32 && precision != SV_PRECISION_BF16)
        return sv_fail(SV_ERR_ARG, "precision is %d, not 0 (fp32) or 1 (bf16)", precision);
    const sv_bf16_isa *bf16 = bf16_kernels((sv_precision)precision, (sv_isa_level)level);
    const sv_amx_isa *amx = amx_kernels((sv_precision)precision, (sv_isa_level)level);
    if (level == SV_ISA_AMX && precision == SV_PRECISION_BF16 && !amx)
        return sv_fail(SV_ERR_UNSUPPORTED, "AMX does not run in this process: %s", sv_amx_status());
    if (blas < BLAS_NEVER || blas > BLAS_FALLBACK) return sv_fail(SV_ERR_ARG, "blas is %d, not 0, 1 or 2", blas);
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return sv_fail(SV_ERR_ARG, "dtype %d is not 0 (F32), 1 (F16) or 2 (BF16)", dtype);
    if (n < 0 || rows < 1 || cols < 1 || n > INT32_MAX || rows > INT32_MAX || cols > INT32_MAX || threads < 1 ||
        repeat < 1 || count < 1 || count > 4)
        return sv_fail(SV_ERR_ARG, "bad matmul arguments n=%lld rows=%lld cols=%lld threads=%d repeat=%d count=%d",
                       (long long)n, (long long)rows, (long long)cols, threads, repeat, count);
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    sv_matrix W[4];
    sv_product products[4];
    const size_t weight_bytes = dtype == ST_F32 ? 4 : 2;
    for (int32_t p = 0; p < count; p++) {
        W[p] = (sv_matrix){(const char *)w + (size_t)(p * rows * cols) * weight_bytes, (st_dtype)dtype, rows, cols};
        products[p] = (sv_product){y + p * n * rows, &W[p], b};
    }
    if (seconds) /* warm-up: page in scratch, start BLAS */
        matmul_many(pool, isa, bf16, amx, (blas_use)blas, 0, x, n, products, count);
    double start = sv_seconds();
    for (int32_t i = 0; i < repeat; i++) matmul_many(pool, isa, bf16, amx, (blas_use)blas, 0, x, n, products, count);
    if (seconds) *seconds = sv_seconds() - start;
    sv_pool_free(pool);
    return SV_OK;
}

sv_status sv_debug_matmul(const char *isa_name, int32_t blas, const float *x, int64_t n, const void *w,
                          int32_t dtype, int64_t rows, int64_t cols, const float *b, float *y, int32_t threads,
                          int32_t repeat, double *seconds) {
    return debug_matmul(isa_name, SV_PRECISION_FP32, blas, x, n, w, dtype, rows, cols, b, y, threads, repeat, seconds,
                        1);
}

sv_status sv_debug_matmul_precision(const char *isa_name, int32_t precision, const float *x, int64_t n,
                                    const void *w, int32_t dtype, int64_t rows, int64_t cols, const float *b,
                                    float *y, int32_t threads, int32_t repeat, double *seconds) {
    return debug_matmul(isa_name, precision, BLAS_FALLBACK, x, n, w, dtype, rows, cols, b, y, threads, repeat,
                        seconds, 1);
}

sv_status sv_debug_matmul_shared(const char *isa_name, int32_t precision, const float *x, int64_t n,
                                 const uint16_t *w, int64_t rows, int64_t cols, int32_t count, float *y,
                                 int32_t threads) {
    return debug_matmul(isa_name, precision, BLAS_FALLBACK, x, n, w, ST_BF16, rows, cols, NULL, y, threads, 1, NULL,
                        count);
}
