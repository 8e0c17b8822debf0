/* attention.c - sv_attention_bf16: the vision tower's multi-head attention
 * over one tile in three pool runs, on the BF16 GEMM kernels of isa.h.
 *
 * Per head, probs = softmax(q k^T * scale) and out = probs v.  Done as two
 * sv_matmul calls per head, a tile cost 16% of the tower's time at half the
 * GEMM's speed: each call re-rounded its input, re-packed K (or the whole
 * probability matrix) into panels, and a strided transpose put the heads
 * back together.  Here the operands are rounded and packed once per tile:
 *
 *   1. split (over tokens): q * scale, k and v^T rounded to BF16, head-major;
 *   2. pack (over heads x panels): K and V^T into the GEMM's panel layout;
 *   3. attend (over heads x query blocks): the scores of a block of queries
 *      against every key (GEMM), softmax in fp32, the probabilities rounded
 *      to BF16 and multiplied into v (GEMM), written straight into out.
 *
 * The roundings are the ones precision "bf16" makes everywhere (and
 * transformers' BF16 run keeps these tensors in BF16): q, k, v and the
 * probabilities; scores, softmax and sums stay fp32. */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../kernels.h"
#include "isa.h"

enum { QUERY_BLOCK = 32 }; /* queries per attend item: its scores and probabilities stay in L2 */

typedef struct {
    int64_t n, heads, hd;
    int64_t ldq;        /* hd rounded up to even: row length of q16 and k16 */
    int64_t ldn;        /* n rounded up to even: row length of vt16 and of the probabilities */
    int64_t width;      /* panel width of the BF16 GEMM */
    int64_t k_panels;   /* ceil(n / width) per head */
    int64_t v_panels;   /* ceil(hd / width) per head */
    size_t q16, k16, vt16, kp, vp, total; /* byte offsets into the workspace, and its size */
} layout;

static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

static layout layout_of(const sv_bf16_isa *bf, int64_t n, int64_t heads, int64_t hd) {
    layout l = {n, heads, hd, (hd + 1) / 2 * 2, (n + 1) / 2 * 2, bf->panel_width, 0, 0, 0, 0, 0, 0, 0, 0};
    l.k_panels = (n + l.width - 1) / l.width;
    l.v_panels = (hd + l.width - 1) / l.width;
    size_t at = 0;
    l.q16 = at, at += align64((size_t)(heads * n * l.ldq) * 2);
    l.k16 = at, at += align64((size_t)(heads * n * l.ldq) * 2);
    l.vt16 = at, at += align64((size_t)(heads * hd * l.ldn) * 2);
    l.kp = at, at += (size_t)(heads * l.k_panels * (l.ldq / 2) * l.width) * 4;
    l.vp = at, at += (size_t)(heads * l.v_panels * (l.ldn / 2) * l.width) * 4;
    l.total = at;
    return l;
}

typedef struct {
    const sv_bf16_isa *bf;
    sv_pool *pool;
    layout l;
    unsigned char *ws;
    float *out;
    const float *q, *k, *v;
    int64_t ld; /* row stride of q, k, v and out */
    float scale;
} attn_job;

static uint16_t *q16_of(const attn_job *j, int64_t h) { return (uint16_t *)(j->ws + j->l.q16) + h * j->l.n * j->l.ldq; }
static uint16_t *k16_of(const attn_job *j, int64_t h) { return (uint16_t *)(j->ws + j->l.k16) + h * j->l.n * j->l.ldq; }
static uint16_t *vt16_of(const attn_job *j, int64_t h) {
    return (uint16_t *)(j->ws + j->l.vt16) + h * j->l.hd * j->l.ldn;
}
static uint32_t *k_panel(const attn_job *j, int64_t h, int64_t p) {
    return (uint32_t *)(j->ws + j->l.kp) + ((h * j->l.k_panels + p) * (j->l.ldq / 2)) * j->l.width;
}
static uint32_t *v_panel(const attn_job *j, int64_t h, int64_t p) {
    return (uint32_t *)(j->ws + j->l.vp) + ((h * j->l.v_panels + p) * (j->l.ldn / 2)) * j->l.width;
}

/* Tokens [begin, end): q16[h, i, :] = q[i, head h] * scale, k16[h, i, :] = k[i, head h], vt16[h, :, i] =
 * v[i, head h], all rounded to BF16; the padding column of an odd n or head_dim is zero. */
static void split_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const layout *l = &j->l;
    float *scaled = sv_pool_scratch(j->pool, thread);
    uint16_t *row16 = (uint16_t *)(scaled + l->ldq);
    for (int64_t i = begin; i < end; i++)
        for (int64_t h = 0; h < l->heads; h++) {
            const float *q = j->q + i * j->ld + h * l->hd;
            for (int64_t d = 0; d < l->hd; d++) scaled[d] = q[d] * j->scale;
            j->bf->round_rows(q16_of(j, h) + i * l->ldq, l->ldq, scaled, 1, l->hd);
            j->bf->round_rows(k16_of(j, h) + i * l->ldq, l->ldq, j->k + i * j->ld + h * l->hd, 1, l->hd);
            j->bf->round_rows(row16, l->hd, j->v + i * j->ld + h * l->hd, 1, l->hd);
            uint16_t *vt = vt16_of(j, h) + i;
            for (int64_t d = 0; d < l->hd; d++) vt[d * l->ldn] = row16[d];
        }
    if (l->n % 2 && end == l->n)
        for (int64_t h = 0; h < l->heads; h++)
            for (int64_t d = 0; d < l->hd; d++) vt16_of(j, h)[d * l->ldn + l->n] = 0;
}

/* Items are (head, panel): the k_panels panels of K's rows (keys), then the v_panels of V^T's rows. */
static void pack_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const layout *l = &j->l;
    int64_t per_head = l->k_panels + l->v_panels;
    for (int64_t item = begin; item < end; item++) {
        int64_t h = item / per_head, p = item % per_head;
        if (p < l->k_panels) {
            sv_matrix keys = {k16_of(j, h), ST_BF16, l->n, l->ldq};
            int64_t r0 = p * l->width, r1 = r0 + l->width < l->n ? r0 + l->width : l->n;
            j->bf->pack(k_panel(j, h, p), &keys, r0, r1);
        } else {
            p -= l->k_panels;
            sv_matrix vt = {vt16_of(j, h), ST_BF16, l->hd, l->ldn};
            int64_t r0 = p * l->width, r1 = r0 + l->width < l->hd ? r0 + l->width : l->hd;
            j->bf->pack(v_panel(j, h, p), &vt, r0, r1);
        }
    }
}

/* Items are (head, block of QUERY_BLOCK queries). */
static void attend_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const layout *l = &j->l;
    int64_t blocks = (l->n + QUERY_BLOCK - 1) / QUERY_BLOCK, lds = l->k_panels * l->width;
    float *scores = sv_pool_scratch(j->pool, thread);          /* [QUERY_BLOCK, lds] */
    uint16_t *probs = (uint16_t *)(scores + QUERY_BLOCK * lds); /* [QUERY_BLOCK, ldn] */
    for (int64_t item = begin; item < end; item++) {
        int64_t h = item / blocks, q0 = item % blocks * QUERY_BLOCK;
        int64_t nq = l->n - q0 < QUERY_BLOCK ? l->n - q0 : QUERY_BLOCK;
        const uint16_t *q16 = q16_of(j, h) + q0 * l->ldq;
        for (int64_t p = 0; p < l->k_panels; p++) {
            int64_t keys = l->n - p * l->width < l->width ? l->n - p * l->width : l->width;
            j->bf->gemm(scores + p * l->width, lds, q16, l->ldq, nq, k_panel(j, h, p), keys, NULL);
        }
        for (int64_t i = 0; i < nq; i++) {
            sv_softmax(scores + i * lds, l->n);
            j->bf->round_rows(probs + i * l->ldn, l->ldn, scores + i * lds, 1, l->n);
        }
        float *out = j->out + q0 * j->ld + h * l->hd;
        for (int64_t p = 0; p < l->v_panels; p++) {
            int64_t cols = l->hd - p * l->width < l->width ? l->hd - p * l->width : l->width;
            j->bf->gemm(out + p * l->width, j->ld, probs, l->ldn, nq, v_panel(j, h, p), cols, NULL);
        }
    }
}

/* The BF16 kernels, or NULL (then the caller's fp32 path runs). */
static const sv_bf16_isa *kernels(const sv_pool *pool) {
    return sv_matmul_bf16(pool) ? sv_bf16_isa_for(sv_isa_selected()) : NULL;
}

size_t sv_attention_bf16_bytes(const sv_pool *pool, int64_t n, int64_t heads, int64_t head_dim) {
    const sv_bf16_isa *bf = kernels(pool);
    if (!bf || n < 1 || heads < 1 || head_dim < 1) return 0;
    layout l = layout_of(bf, n, heads, head_dim);
    /* Per thread: split's scaled row and BF16 row; attend's scores and probabilities. */
    size_t split = (size_t)l.ldq * 4 + (size_t)l.hd * 2;
    size_t attend = (size_t)(QUERY_BLOCK * l.k_panels * l.width) * 4 + (size_t)(QUERY_BLOCK * l.ldn) * 2;
    if (split > SV_POOL_SCRATCH_BYTES || attend > SV_POOL_SCRATCH_BYTES) return 0;
    return l.total;
}

void sv_attention_bf16(sv_pool *pool, void *workspace, float *out, const float *q, const float *k, const float *v,
                       int64_t ld, int64_t n, int64_t heads, int64_t head_dim, float scale) {
    const sv_bf16_isa *bf = kernels(pool);
    attn_job j = {bf, pool, layout_of(bf, n, heads, head_dim), workspace, out, q, k, v, ld, scale};
    sv_pool_run(pool, split_task, &j, n);
    sv_pool_run(pool, pack_task, &j, heads * (j.l.k_panels + j.l.v_panels));
    sv_pool_run(pool, attend_task, &j, heads * ((n + QUERY_BLOCK - 1) / QUERY_BLOCK));
}

/* ---- test hook (declared in smolvision.h) ---- */

sv_status sv_debug_attention_bf16(const float *q, const float *k, const float *v, float *out, int64_t n,
                                  int64_t heads, int64_t head_dim, float scale, int32_t threads) {
    if (!q || !k || !v || !out || n < 1 || heads < 1 || head_dim < 1 || threads < 1 || n > INT32_MAX ||
        heads * head_dim > INT32_MAX)
        return sv_fail(SV_ERR_ARG, "bad attention arguments n=%lld heads=%lld head_dim=%lld threads=%d",
                       (long long)n, (long long)heads, (long long)head_dim, threads);
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    sv_pool_set_precision(pool, SV_PRECISION_BF16);
    sv_status s = SV_OK;
    size_t bytes = sv_attention_bf16_bytes(pool, n, heads, head_dim);
    void *workspace = NULL;
    if (!bytes) s = sv_fail(SV_ERR_UNSUPPORTED, "this CPU or build has no BF16 kernels (or the shapes are too big)");
    else if (posix_memalign(&workspace, 64, bytes) != 0) s = sv_fail(SV_ERR_NOMEM, "out of memory");
    if (s == SV_OK)
        sv_attention_bf16(pool, workspace, out, q, k, v, heads * head_dim, n, heads, head_dim, scale);
    free(workspace);
    sv_pool_free(pool);
    return s;
}
