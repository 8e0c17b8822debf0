/* attention.c - multi-head attention in BF16 products on the GEMM kernels of
 * isa.h: the vision tower's (every patch sees every patch of its tile) and a
 * prompt chunk's against the decoder's KV cache (causal, grouped KV heads).
 *
 * Per head, probs = softmax(q k^T * scale) and out = probs v.  As two
 * sv_matmul calls per head, each call re-rounded its input, re-packed K (or
 * the whole probability matrix) into panels and left a transpose to put the
 * heads back together; the vision tower's attention ran at half the GEMM's
 * speed.  Here the operands are rounded and packed once per call:
 *
 *   1. (vision only) split, over tokens: k and v^T rounded to BF16, per head;
 *   2. prepare, over heads x panels: q * scale rounded to BF16, and K and V^T
 *      (BF16 already: the split's, or the decoder's cache) into panels;
 *   3. attend, over heads x query blocks: the scores of a block of queries
 *      against the keys it sees (GEMM), softmax in fp32, the probabilities
 *      rounded to BF16 and multiplied into v (GEMM), written straight into out.
 *
 * The roundings are the ones precision "bf16" makes everywhere (and
 * transformers' BF16 run keeps these tensors in BF16): q, k, v and the
 * probabilities; scores, softmax and sums stay fp32. */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../kernels.h"
#include "isa.h"

enum { QUERY_BLOCK = 32 }; /* queries per attend item: their scores and probabilities stay in L2 */

static int64_t round_even(int64_t n) { return (n + 1) / 2 * 2; }
static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

typedef struct {
    int64_t width;      /* panel width of the BF16 GEMM */
    int64_t ldq;        /* head_dim rounded up to even: q16's rows */
    int64_t k_panels;   /* ceil(keys / width) per KV head */
    int64_t v_panels;   /* ceil(head_dim / width) per KV head */
    int64_t k_panel, v_panel; /* 32-bit words per panel */
    size_t q16, kp, vp, total; /* byte offsets into the workspace, and its size */
} layout;

static layout layout_of(const sv_bf16_isa *bf, const sv_attention_shape *a) {
    layout l = {bf->panel_width, round_even(a->head_dim), 0, 0, 0, 0, 0, 0, 0, 0};
    l.k_panels = (a->keys + l.width - 1) / l.width;
    l.v_panels = (a->head_dim + l.width - 1) / l.width;
    l.k_panel = l.ldq / 2 * l.width;
    l.v_panel = round_even(a->keys) / 2 * l.width;
    size_t at = 0;
    l.q16 = at, at += align64((size_t)(a->heads * a->queries * l.ldq) * 2);
    l.kp = at, at += (size_t)(a->kv_heads * l.k_panels * l.k_panel) * 4;
    l.vp = at, at += (size_t)(a->kv_heads * l.v_panels * l.v_panel) * 4;
    l.total = at;
    return l;
}

/* Per-thread scratch of attend: scores [QUERY_BLOCK, k_panels * width] fp32, probabilities
 * [QUERY_BLOCK, keys rounded up to even] BF16. */
static size_t attend_scratch(const layout *l, const sv_attention_shape *a) {
    return (size_t)(QUERY_BLOCK * l->k_panels * l->width) * 4 + (size_t)(QUERY_BLOCK * round_even(a->keys)) * 2;
}

typedef struct {
    const sv_bf16_isa *bf;
    sv_pool *pool;
    const sv_attention_shape *a;
    const sv_attention_operands *o;
    layout l;
    unsigned char *ws;
} attn_job;

static uint16_t *q16_of(const attn_job *j, int64_t h) {
    return (uint16_t *)(j->ws + j->l.q16) + h * j->a->queries * j->l.ldq;
}
static uint32_t *k_panel(const attn_job *j, int64_t g, int64_t p) {
    return (uint32_t *)(j->ws + j->l.kp) + (g * j->l.k_panels + p) * j->l.k_panel;
}
static uint32_t *v_panel(const attn_job *j, int64_t g, int64_t p) {
    return (uint32_t *)(j->ws + j->l.vp) + (g * j->l.v_panels + p) * j->l.v_panel;
}

/* Items: one per query head, rounding its queries (q16[h] = q[:, head h] * scale); then per KV head its
 * K panels and V^T panels. */
static void prepare_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const sv_attention_shape *a = j->a;
    const sv_attention_operands *o = j->o;
    const layout *l = &j->l;
    int64_t per_kv_head = l->k_panels + l->v_panels, hd = a->head_dim;
    float *scaled = sv_pool_scratch(j->pool, thread);
    for (int64_t item = begin; item < end; item++) {
        if (item < a->heads) {
            for (int64_t i = 0; i < a->queries; i++) {
                const float *q = o->q + i * o->ldq + item * hd;
                for (int64_t d = 0; d < hd; d++) scaled[d] = q[d] * a->scale;
                j->bf->round_rows(q16_of(j, item) + i * l->ldq, l->ldq, scaled, 1, hd);
            }
            continue;
        }
        int64_t g = (item - a->heads) / per_kv_head, p = (item - a->heads) % per_kv_head;
        if (p < l->k_panels) {
            int64_t r0 = p * l->width, r1 = r0 + l->width < a->keys ? r0 + l->width : a->keys;
            j->bf->pack(k_panel(j, g, p), o->k + g * o->k_head_stride, o->ldk, hd, r0, r1);
        } else {
            p -= l->k_panels;
            int64_t r0 = p * l->width, r1 = r0 + l->width < hd ? r0 + l->width : hd;
            j->bf->pack(v_panel(j, g, p), o->vt + g * o->vt_head_stride, o->ldvt, a->keys, r0, r1);
        }
    }
}

/* Items are (head, block of QUERY_BLOCK queries). */
static void attend_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const sv_attention_shape *a = j->a;
    const sv_attention_operands *o = j->o;
    const layout *l = &j->l;
    int64_t blocks = (a->queries + QUERY_BLOCK - 1) / QUERY_BLOCK, lds = l->k_panels * l->width;
    int64_t group = a->heads / a->kv_heads, first = a->keys - a->queries; /* query i's position: first + i */
    float *scores = sv_pool_scratch(j->pool, thread);
    uint16_t *probs = (uint16_t *)(scores + QUERY_BLOCK * lds);
    for (int64_t item = begin; item < end; item++) {
        int64_t h = item / blocks, g = h / group, q0 = item % blocks * QUERY_BLOCK;
        int64_t nq = a->queries - q0 < QUERY_BLOCK ? a->queries - q0 : QUERY_BLOCK;
        int64_t seen = a->causal ? first + q0 + nq : a->keys; /* keys any query of the block sees */
        const uint16_t *q16 = q16_of(j, h) + q0 * l->ldq;
        for (int64_t p = 0; p * l->width < seen; p++) {
            int64_t cols = seen - p * l->width < l->width ? seen - p * l->width : l->width;
            j->bf->gemm(scores + p * l->width, lds, q16, l->ldq, nq, k_panel(j, g, p), cols, NULL);
        }
        int64_t ldp = round_even(seen);
        for (int64_t i = 0; i < nq; i++) {
            int64_t row_seen = a->causal ? first + q0 + i + 1 : a->keys;
            sv_softmax(scores + i * lds, row_seen);
            j->bf->round_rows(probs + i * ldp, ldp, scores + i * lds, 1, row_seen); /* zero past row_seen */
        }
        float *out = o->out + q0 * o->ldo + h * a->head_dim;
        for (int64_t p = 0; p < l->v_panels; p++) {
            int64_t cols = a->head_dim - p * l->width < l->width ? a->head_dim - p * l->width : l->width;
            j->bf->gemm(out + p * l->width, o->ldo, probs, ldp, nq, v_panel(j, g, p), cols, NULL);
        }
    }
}

/* The BF16 kernels, or NULL (then the caller's fp32 path runs). */
static const sv_bf16_isa *kernels(const sv_pool *pool) {
    return sv_matmul_bf16(pool) ? sv_bf16_isa_for(sv_isa_selected()) : NULL;
}

static int shape_ok(const sv_attention_shape *a) {
    return a->queries >= 1 && a->keys >= a->queries && a->heads >= 1 && a->kv_heads >= 1 &&
           a->heads % a->kv_heads == 0 && a->head_dim >= 1;
}

size_t sv_attention_bf16_bytes(const sv_pool *pool, const sv_attention_shape *a) {
    const sv_bf16_isa *bf = kernels(pool);
    if (!bf || !shape_ok(a)) return 0;
    layout l = layout_of(bf, a);
    size_t row = (size_t)l.ldq * 4; /* prepare's scaled query row */
    if (attend_scratch(&l, a) > SV_POOL_SCRATCH_BYTES || row > SV_POOL_SCRATCH_BYTES) return 0;
    return l.total;
}

void sv_attention_bf16(sv_pool *pool, void *workspace, const sv_attention_shape *a, const sv_attention_operands *o) {
    const sv_bf16_isa *bf = kernels(pool);
    attn_job j = {bf, pool, a, o, layout_of(bf, a), workspace};
    sv_pool_run(pool, prepare_task, &j, a->heads + a->kv_heads * (j.l.k_panels + j.l.v_panels));
    sv_pool_run(pool, attend_task, &j, a->heads * ((a->queries + QUERY_BLOCK - 1) / QUERY_BLOCK));
}

/* ---- self-attention of fp32 q, k, v (the vision tower) ---- */

/* After the core's workspace: k16 [heads, n, head_dim] and vt16 [heads, head_dim, n]. */
static size_t self_staging(int64_t n, int64_t heads, int64_t hd) { return align64((size_t)(heads * n * hd) * 2); }

typedef struct {
    const sv_bf16_isa *bf;
    sv_pool *pool;
    const float *k, *v;
    int64_t ld, n, heads, hd;
    uint16_t *k16, *vt16;
} split_job;

/* Tokens [begin, end): k16[h, i, :] = k[i, head h] and vt16[h, :, i] = v[i, head h], rounded to BF16. */
static void split_task(void *arg, int64_t begin, int64_t end, int thread) {
    const split_job *j = arg;
    uint16_t *row16 = (uint16_t *)sv_pool_scratch(j->pool, thread);
    for (int64_t i = begin; i < end; i++)
        for (int64_t h = 0; h < j->heads; h++) {
            j->bf->round_rows(j->k16 + (h * j->n + i) * j->hd, j->hd, j->k + i * j->ld + h * j->hd, 1, j->hd);
            j->bf->round_rows(row16, j->hd, j->v + i * j->ld + h * j->hd, 1, j->hd);
            uint16_t *vt = j->vt16 + h * j->hd * j->n + i;
            for (int64_t d = 0; d < j->hd; d++) vt[d * j->n] = row16[d];
        }
}

size_t sv_self_attention_bf16_bytes(const sv_pool *pool, int64_t n, int64_t heads, int64_t head_dim) {
    sv_attention_shape a = {n, n, heads, heads, head_dim, 0, 1.0f};
    size_t core = sv_attention_bf16_bytes(pool, &a);
    if (!core || (size_t)head_dim * 2 > SV_POOL_SCRATCH_BYTES) return 0;
    return align64(core) + 2 * self_staging(n, heads, head_dim);
}

void sv_self_attention_bf16(sv_pool *pool, void *workspace, float *out, const float *q, const float *k,
                            const float *v, int64_t ld, int64_t n, int64_t heads, int64_t head_dim, float scale) {
    sv_attention_shape a = {n, n, heads, heads, head_dim, 0, scale};
    unsigned char *staging = (unsigned char *)workspace + align64(sv_attention_bf16_bytes(pool, &a));
    split_job s = {kernels(pool), pool, k, v, ld, n, heads, head_dim, (uint16_t *)staging,
                   (uint16_t *)(staging + self_staging(n, heads, head_dim))};
    sv_pool_run(pool, split_task, &s, n);
    sv_attention_operands o = {q, ld, out, ld, s.k16, n * head_dim, head_dim, s.vt16, head_dim * n, n};
    sv_attention_bf16(pool, workspace, &a, &o);
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
    size_t bytes = sv_self_attention_bf16_bytes(pool, n, heads, head_dim);
    void *workspace = NULL;
    if (!bytes) s = sv_fail(SV_ERR_UNSUPPORTED, "this CPU or build has no BF16 kernels (or the shapes are too big)");
    else if (posix_memalign(&workspace, 64, bytes) != 0) s = sv_fail(SV_ERR_NOMEM, "out of memory");
    if (s == SV_OK) sv_self_attention_bf16(pool, workspace, out, q, k, v, heads * head_dim, n, heads, head_dim, scale);
    free(workspace);
    sv_pool_free(pool);
    return s;
}

sv_status sv_debug_attention_bf16_kv(const float *q, const float *k, const float *v, float *out, int64_t queries,
                                     int64_t keys, int64_t heads, int64_t kv_heads, int64_t head_dim, int32_t causal,
                                     float scale, int32_t threads) {
    sv_attention_shape a = {queries, keys, heads, kv_heads, head_dim, causal != 0, scale};
    if (!q || !k || !v || !out || !shape_ok(&a) || threads < 1 || keys > INT32_MAX || heads * head_dim > INT32_MAX)
        return sv_fail(SV_ERR_ARG, "bad attention arguments queries=%lld keys=%lld heads=%lld kv_heads=%lld "
                                   "head_dim=%lld threads=%d", (long long)queries, (long long)keys, (long long)heads,
                       (long long)kv_heads, (long long)head_dim, threads);
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    sv_pool_set_precision(pool, SV_PRECISION_BF16);
    sv_status s = SV_OK;
    size_t bytes = sv_attention_bf16_bytes(pool, &a);
    /* The decoder cache's layouts: K [kv_heads, keys, head_dim], V^T [kv_heads, head_dim, ldvt] with rows
     * longer than keys (its capacity). */
    int64_t ldvt = keys + 5, kvd = kv_heads * head_dim;
    uint16_t *k16 = malloc((size_t)(kv_heads * keys * head_dim) * 2), *vt16 = malloc((size_t)(kvd * ldvt) * 2);
    void *workspace = NULL;
    if (!bytes) s = sv_fail(SV_ERR_UNSUPPORTED, "this CPU or build has no BF16 kernels (or the shapes are too big)");
    else if (!k16 || !vt16 || posix_memalign(&workspace, 64, bytes) != 0) s = sv_fail(SV_ERR_NOMEM, "out of memory");
    if (s == SV_OK) {
        for (int64_t g = 0; g < kv_heads; g++)
            for (int64_t p = 0; p < keys; p++) {
                sv_to_bf16(k16 + (g * keys + p) * head_dim, k + p * kvd + g * head_dim, head_dim);
                for (int64_t d = 0; d < head_dim; d++)
                    sv_to_bf16(vt16 + (g * head_dim + d) * ldvt + p, v + p * kvd + g * head_dim + d, 1);
            }
        sv_attention_operands o = {q, heads * head_dim, out, heads * head_dim, k16, keys * head_dim, head_dim,
                                   vt16, head_dim * ldvt, ldvt};
        sv_attention_bf16(pool, workspace, &a, &o);
    }
    free(workspace);
    free(k16);
    free(vt16);
    sv_pool_free(pool);
    return s;
}
