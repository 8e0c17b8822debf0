/* attention.c - multi-head attention, the two forms of kernels.h: a group of
 * tokens attending to itself (the vision tower's tiles) and query rows
 * attending causally to a KV cache (the decoder).  Each picks its way here:
 *
 *   fused BF16 (where the context's matmuls run in BF16 and the shape fits the
 *       per-thread scratch): both products on the BF16 GEMM kernels of isa.h
 *       (AMX tiles where they run, else AVX512_BF16), with the operands rounded
 *       and packed once per call (below);
 *   fp32: per head (self) or per KV head's group of query heads (cache), two
 *       sv_matmul products on gathered copies, scores = Q K^T and out = P V;
 *   one cached row (decode): dot products per head against the cache, on
 *       vdpbf16ps for a BF16 cache where the BF16 kernels run (q and the
 *       softmax's terms rounded to BF16 as below).
 *
 * The fused path.  As two sv_matmul calls per head, each call re-rounded its
 * input, re-packed K (or the whole probability matrix) into panels and left a
 * transpose to put the heads back together; the vision tower's attention ran
 * at half the GEMM's speed.  Here the operands are rounded and packed once:
 *
 *   1. (self only) split, over tokens: k and v^T rounded to BF16, per head;
 *   2. prepare, over heads x panels: q * scale rounded to BF16, and K and V^T
 *      (BF16 already: the split's, or the decoder's cache) into panels;
 *   3. attend, over heads x query blocks: the scores of a block of queries
 *      against the keys it sees (GEMM), the softmax's terms e^(s - max) in
 *      fp32 rounded to BF16 as they are made, multiplied into v (GEMM),
 *      written straight into out, and divided there by the terms' sum (a
 *      pass over head_dim outputs instead of two over the scores).
 *
 * The roundings are the ones precision "bf16" makes everywhere (and
 * transformers' BF16 run keeps these tensors in BF16): q, k, v and the
 * softmax's terms (relative rounding, so the same bound as rounding the
 * probabilities); scores, softmax sums and products' sums stay fp32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../kernels.h"
#include "isa.h"

/* ---- the fused BF16 core ---- */

/* Per query head h (KV head g = h / (heads / kv_heads)), out[:, h] = softmax(q[:, h] K_g^T * scale) V_g.
 * Query i sits at position keys - queries + i; causal: it sees keys up to its own position, else all. */
typedef struct {
    int64_t queries, keys, heads, kv_heads, head_dim;
    int causal;
    float scale;
} attn_shape;

typedef struct {
    const float *q;                                /* [queries, ldq] */
    int64_t ldq;
    float *out;                                    /* [queries, ldo] */
    int64_t ldo;
    const uint16_t *k;                             /* K_g: BF16 [keys, head_dim] at k + g * k_head_stride */
    int64_t k_head_stride, ldk;                    /* ... with rows ldk apart */
    const uint16_t *vt;                            /* V_g^T: BF16 [head_dim, keys] at vt + g * vt_head_stride */
    int64_t vt_head_stride, ldvt;                  /* ... with rows ldvt apart */
} attn_operands;

enum { QUERY_BLOCK = 32 }; /* queries per attend item: their scores and probabilities stay in L2 */

static int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }
static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

/* The kernels of the fused path: bf rounds, and multiplies unless amx (the tile GEMM, which reads the same
 * panels padded to whole tiles: K rounded up to its k_align, and A rows read in whole tiles of row_align). */
typedef struct {
    const sv_bf16_isa *bf;
    const sv_amx_isa *amx;
} attn_kernels;

static int64_t k_align(const attn_kernels *kn) { return kn->amx ? kn->amx->k_align : 2; }
static int64_t row_pad(const attn_kernels *kn) { return kn->amx ? kn->amx->row_align : 0; }

static void pack_panel(const attn_kernels *kn, uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols,
                       int64_t r0, int64_t r1) {
    (kn->amx ? kn->amx->pack : kn->bf->pack)(panel, w, ldw, cols, r0, r1);
}

/* y[i, c] = xb[i, :] . W[c, :] for i < n, c < width, W's rows packed in panels of the GEMM's width, panel_words
 * apart: xb[n, ldx] BF16, ldx a multiple of k_align, and on AMX readable (not used) up to row
 * round_up(n, row_align). */
static void panels_gemm(const attn_kernels *kn, float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n,
                        const uint32_t *panels, int64_t panel_words, int64_t width) {
    if (kn->amx) {
        const int64_t tk = kn->amx->k_align;
        sv_amx_operand a = {xb, ldx * (int64_t)sizeof *xb, tk, kn->amx->row_align * ldx};
        kn->amx->gemm(y, ldy, &a, n, ldx / tk, panels, panel_words, width, NULL);
        return;
    }
    for (int64_t c = 0; c < width; c += kn->bf->panel_width)
        kn->bf->gemm(y + c, ldy, xb, ldx, n, panels + c / kn->bf->panel_width * panel_words,
                     width - c < kn->bf->panel_width ? width - c : kn->bf->panel_width, NULL);
}

typedef struct {
    int64_t width;      /* panel width of the BF16 GEMM */
    int64_t ldq;        /* head_dim rounded up to k_align: q16's rows */
    int64_t k_panels;   /* ceil(keys / width) per KV head */
    int64_t v_panels;   /* ceil(head_dim / width) per KV head */
    int64_t k_panel, v_panel; /* 32-bit words per panel */
    size_t q16, kp, vp, total; /* byte offsets into the workspace, and its size */
} layout;

static layout layout_of(const attn_kernels *kn, const attn_shape *a) {
    int64_t width = kn->amx ? kn->amx->panel_width : kn->bf->panel_width;
    layout l = {width, round_up(a->head_dim, k_align(kn)), 0, 0, 0, 0, 0, 0, 0, 0};
    l.k_panels = (a->keys + l.width - 1) / l.width;
    l.v_panels = (a->head_dim + l.width - 1) / l.width;
    l.k_panel = l.ldq / 2 * l.width;
    l.v_panel = round_up(a->keys, k_align(kn)) / 2 * l.width;
    size_t at = 0; /* q16 has row_pad zero rows more: the last head's last query block reads whole tiles */
    l.q16 = at, at += align64((size_t)((a->heads * a->queries + row_pad(kn)) * l.ldq) * 2);
    l.kp = at, at += (size_t)(a->kv_heads * l.k_panels * l.k_panel) * 4;
    l.vp = at, at += (size_t)(a->kv_heads * l.v_panels * l.v_panel) * 4;
    l.total = at;
    return l;
}

/* Per-thread scratch of attend: scores [QUERY_BLOCK, k_panels * width] fp32, probabilities
 * [QUERY_BLOCK, keys rounded up to k_align] BF16 (QUERY_BLOCK is whole AMX tiles of rows). */
static size_t attend_scratch(const attn_kernels *kn, const layout *l, const attn_shape *a) {
    return (size_t)(QUERY_BLOCK * l->k_panels * l->width) * 4 + (size_t)(QUERY_BLOCK * round_up(a->keys, k_align(kn))) * 2;
}

typedef struct {
    const attn_kernels *kn;
    sv_pool *pool;
    const attn_shape *a;
    const attn_operands *o;
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

/* dst[i, 0:ld] = q[i, 0:hd] * scale rounded to BF16, zero-padded, for n queries ldq apart: the queries as both
 * BF16 paths (the fused chunks and decode's rows) multiply them; scaled[n, hd] is the caller's fp32 scratch. */
static void round_scaled_queries(const sv_bf16_isa *bf, uint16_t *dst, int64_t ld, const float *q, int64_t ldq,
                                 int64_t n, float scale, int64_t hd, float *scaled) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < hd; d++) scaled[i * hd + d] = q[i * ldq + d] * scale;
    bf->round_rows(dst, ld, scaled, hd, n, hd);
}

/* Items: one per query head, rounding its queries (q16[h] = q[:, head h] * scale); then per KV head its
 * K panels and V^T panels. */
static void prepare_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const attn_shape *a = j->a;
    const attn_operands *o = j->o;
    const layout *l = &j->l;
    int64_t per_kv_head = l->k_panels + l->v_panels, hd = a->head_dim;
    float *scaled = sv_pool_scratch(j->pool, thread);
    for (int64_t item = begin; item < end; item++) {
        if (item < a->heads) { /* the head's queries scaled in the scratch, as many as it holds, rounded at once */
            const int64_t most = SV_POOL_SCRATCH_BYTES / (hd * (int64_t)sizeof *scaled);
            for (int64_t i0 = 0; i0 < a->queries; i0 += most)
                round_scaled_queries(j->kn->bf, q16_of(j, item) + i0 * l->ldq, l->ldq, o->q + i0 * o->ldq + item * hd,
                                     o->ldq, a->queries - i0 < most ? a->queries - i0 : most, a->scale, hd, scaled);
            continue;
        }
        int64_t g = (item - a->heads) / per_kv_head, p = (item - a->heads) % per_kv_head;
        if (p < l->k_panels) {
            int64_t r0 = p * l->width, r1 = r0 + l->width < a->keys ? r0 + l->width : a->keys;
            pack_panel(j->kn, k_panel(j, g, p), o->k + g * o->k_head_stride, o->ldk, hd, r0, r1);
        } else {
            p -= l->k_panels;
            int64_t r0 = p * l->width, r1 = r0 + l->width < hd ? r0 + l->width : hd;
            pack_panel(j->kn, v_panel(j, g, p), o->vt + g * o->vt_head_stride, o->ldvt, a->keys, r0, r1);
        }
    }
}

/* Items are (head, block of QUERY_BLOCK queries). */
static void attend_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attn_job *j = arg;
    const attn_shape *a = j->a;
    const attn_operands *o = j->o;
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
        panels_gemm(j->kn, scores, lds, q16, l->ldq, nq, k_panel(j, g, 0), l->k_panel, seen);
        int64_t ldp = round_up(seen, k_align(j->kn));
        float inv_sum[QUERY_BLOCK];
        for (int64_t i = 0; i < nq; i++) {
            int64_t row_seen = a->causal ? first + q0 + i + 1 : a->keys;
            inv_sum[i] = 1.0f / sv_softmax_bf16(probs + i * ldp, ldp, scores + i * lds, row_seen); /* zero past */
        }
        float *out = o->out + q0 * o->ldo + h * a->head_dim;
        panels_gemm(j->kn, out, o->ldo, probs, ldp, nq, v_panel(j, g, 0), l->v_panel, a->head_dim);
        for (int64_t i = 0; i < nq; i++) /* the softmax's division, on head_dim sums instead of seen terms */
            for (int64_t d = 0; d < a->head_dim; d++) out[i * o->ldo + d] *= inv_sum[i];
    }
}

static int shape_ok(const attn_shape *a) {
    return a->queries >= 1 && a->keys >= a->queries && a->heads >= 1 && a->kv_heads >= 1 &&
           a->heads % a->kv_heads == 0 && a->head_dim >= 1;
}

/* Workspace bytes (64-byte aligned) of the fused path for a shape; 0 without BF16 kernels or where the
 * shape is beyond what the per-thread scratch holds: then the fp32 path runs. */
static size_t fused_bytes(const attn_kernels *kn, const attn_shape *a) {
    if (!kn->bf || !shape_ok(a)) return 0;
    layout l = layout_of(kn, a);
    size_t row = (size_t)l.ldq * 4; /* prepare's scaled query row */
    if (attend_scratch(kn, &l, a) > SV_POOL_SCRATCH_BYTES || row > SV_POOL_SCRATCH_BYTES) return 0;
    return l.total;
}

static void fused(sv_pool *pool, const attn_kernels *kn, void *workspace, const attn_shape *a,
                  const attn_operands *o) {
    attn_job j = {kn, pool, a, o, layout_of(kn, a), workspace};
    memset(q16_of(&j, a->heads), 0, (size_t)(row_pad(kn) * j.l.ldq) * 2); /* the padding rows after the last head */
    sv_pool_run(pool, prepare_task, &j, a->heads + a->kv_heads * (j.l.k_panels + j.l.v_panels));
    sv_pool_run(pool, attend_task, &j, a->heads * ((a->queries + QUERY_BLOCK - 1) / QUERY_BLOCK));
}

/* The kernels attention next to products with these weights runs on: bf NULL for fp32. */
static attn_kernels fused_kernels(const sv_ctx *ctx, st_dtype weights) {
    attn_kernels kn = {NULL, NULL};
    if (!sv_matmul_in_bf16(ctx, weights)) return kn;
    kn.bf = sv_bf16_isa_for(sv_isa_selected());
    kn.amx = sv_amx_for(sv_isa_selected());
    return kn;
}

/* ---- self-attention, fused: fp32 q, k, v [n, ld] split into BF16 per head first ---- */

/* After the core's workspace: k16 [heads, n, head_dim] and vt16 [heads, head_dim, n]. */
static size_t self_staging(int64_t n, int64_t heads, int64_t hd) { return align64((size_t)(heads * n * hd) * 2); }

typedef struct {
    const sv_bf16_isa *bf;
    sv_pool *pool;
    const float *k, *v;
    int64_t ld, n, heads, hd;
    uint16_t *k16, *vt16;
} split_job;

/* Tokens [begin, end): k16[h, i, :] = k[i, head h] and vt16[h, :, i] = v[i, head h], rounded to BF16 a head
 * at a time (sv_head_kv_to_bf16). */
static void split_task(void *arg, int64_t begin, int64_t end, int thread) {
    const split_job *j = arg;
    const int64_t hd = j->hd;
    for (int64_t h = 0; h < j->heads; h++)
        sv_head_kv_to_bf16(j->bf->round_rows, j->k16 + (h * j->n + begin) * hd, j->vt16 + h * hd * j->n + begin, j->n,
                           j->k + begin * j->ld + h * hd, j->v + begin * j->ld + h * hd, j->ld, end - begin, hd,
                           (uint16_t *)sv_pool_scratch(j->pool, thread), SV_POOL_SCRATCH_BYTES);
}

static size_t self_fused_bytes(const attn_kernels *kn, int64_t n, int64_t heads, int64_t head_dim) {
    attn_shape a = {n, n, heads, heads, head_dim, 0, 1.0f};
    size_t core = fused_bytes(kn, &a);
    if (!core || (size_t)head_dim * 2 > SV_POOL_SCRATCH_BYTES) return 0;
    return align64(core) + 2 * self_staging(n, heads, head_dim);
}

static void self_fused(sv_pool *pool, const attn_kernels *kn, void *workspace, float *out, const float *q,
                       const float *k, const float *v, int64_t ld, int64_t n, int64_t heads, int64_t head_dim,
                       float scale) {
    attn_shape a = {n, n, heads, heads, head_dim, 0, scale};
    unsigned char *staging = (unsigned char *)workspace + align64(fused_bytes(kn, &a));
    split_job s = {kn->bf, pool, k, v, ld, n, heads, head_dim, (uint16_t *)staging,
                   (uint16_t *)(staging + self_staging(n, heads, head_dim))};
    sv_pool_run(pool, split_task, &s, n);
    attn_operands o = {q, ld, out, ld, s.k16, n * head_dim, head_dim, s.vt16, head_dim * n, n};
    fused(pool, kn, workspace, &a, &o);
}

/* ---- self-attention ---- */

struct sv_self_attention {
    int64_t n, heads, head_dim;
    float scale;
    attn_kernels kn;       /* the fused path's kernels; kn.bf NULL: fp32 */
    void *fused;           /* its workspace */
    /* fp32, heads side by side: */
    float *qh, *kh;        /* [heads, n, head_dim] each; qh pre-scaled */
    float *vt;             /* [heads, head_dim, n] */
    float *probs;          /* [n, n] one head's scores, then probabilities */
    float *outt;           /* [heads * head_dim, n] the output, transposed */
};

sv_self_attention *sv_self_attention_new(const sv_ctx *ctx, st_dtype weights, int64_t n, int64_t heads,
                                         int64_t head_dim) {
    sv_self_attention *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->n = n;
    a->heads = heads;
    a->head_dim = head_dim;
    a->scale = (float)(1.0 / sqrt((double)head_dim));
    a->kn = fused_kernels(ctx, weights);
    size_t bytes = self_fused_bytes(&a->kn, n, heads, head_dim);
    if (bytes) {
        if (posix_memalign(&a->fused, 64, bytes) != 0) a->fused = NULL;
        if (a->fused) return a;
    } else {
        a->kn = (attn_kernels){NULL, NULL};
        size_t tile = (size_t)(n * heads * head_dim) * sizeof(float);
        a->qh = malloc(tile);
        a->kh = malloc(tile);
        a->vt = malloc(tile);
        a->outt = malloc(tile);
        a->probs = malloc((size_t)(n * n) * sizeof(float));
        if (a->qh && a->kh && a->vt && a->outt && a->probs) return a;
    }
    sv_self_attention_free(a);
    return NULL;
}

void sv_self_attention_free(sv_self_attention *a) {
    if (!a) return;
    free(a->fused);
    free(a->qh);
    free(a->kh);
    free(a->vt);
    free(a->probs);
    free(a->outt);
    free(a);
}

typedef struct {
    sv_self_attention *a;
    const float *q, *k, *v; /* [n, heads * head_dim] each */
    float *out;
} heads_job;

/* Token rows [begin, end) of q, k, v into the head-major qh (scaled), kh and vt. */
static void split_heads_task(void *arg, int64_t begin, int64_t end, int thread) {
    const heads_job *j = arg;
    const sv_self_attention *a = j->a;
    int64_t P = a->n, hd = a->head_dim, H = a->heads * hd;
    for (int64_t i = begin; i < end; i++)
        for (int64_t h = 0; h < a->heads; h++) {
            const float *q = j->q + i * H + h * hd, *k = j->k + i * H + h * hd, *v = j->v + i * H + h * hd;
            float *qh = a->qh + (h * P + i) * hd, *kh = a->kh + (h * P + i) * hd;
            float *vt = a->vt + h * hd * P + i;
            for (int64_t d = 0; d < hd; d++) {
                qh[d] = q[d] * a->scale;
                vt[d * P] = v[d];
            }
            memcpy(kh, k, (size_t)hd * sizeof *kh);
        }
}

/* Token rows [begin, end) of out from the transposed outt. */
static void merge_heads_task(void *arg, int64_t begin, int64_t end, int thread) {
    const heads_job *j = arg;
    int64_t P = j->a->n, H = j->a->heads * j->a->head_dim;
    for (int64_t i = begin; i < end; i++)
        for (int64_t c = 0; c < H; c++) j->out[i * H + c] = j->a->outt[c * P + i];
}

static void softmax_task(void *arg, int64_t begin, int64_t end, int thread) {
    const heads_job *j = arg;
    int64_t P = j->a->n;
    for (int64_t i = begin; i < end; i++) sv_softmax(j->a->probs + i * P, P);
}

/* fp32: per head, probs = softmax(q k^T * scale) and out^T = v^T probs^T, so that both products are
 * sv_matmul's y = x W^T. */
void sv_attend_self(const sv_ctx *ctx, sv_self_attention *a, float *out, const float *q, const float *k,
                       const float *v) {
    double t = sv_op_begin(ctx);
    int64_t P = a->n, hd = a->head_dim, ld = a->heads * hd;
    if (a->kn.bf) {
        self_fused(ctx->pool, &a->kn, a->fused, out, q, k, v, ld, P, a->heads, hd, a->scale);
    } else {
        heads_job j = {a, q, k, v, out};
        sv_matrix probs = {a->probs, ST_F32, P, P};
        sv_pool_run(ctx->pool, split_heads_task, &j, P);
        for (int64_t h = 0; h < a->heads; h++) {
            sv_matrix keys = {a->kh + h * P * hd, ST_F32, P, hd};
            sv_matmul(ctx, a->probs, a->qh + h * P * hd, P, &keys, NULL);           /* [queries, keys] */
            sv_pool_run(ctx->pool, softmax_task, &j, P);
            sv_matmul(ctx, a->outt + h * hd * P, a->vt + h * hd * P, hd, &probs, NULL); /* [head_dim, queries] */
        }
        sv_pool_run(ctx->pool, merge_heads_task, &j, P);
    }
    sv_op_end(ctx, SV_OP_ATTENTION, t);
}

/* ---- attention against a KV cache ---- */

struct sv_cached_attention {
    int64_t heads, max_queries, capacity; /* made for chunks of max_queries against caches of capacity */
    float scale;
    attn_kernels kn;       /* the fused path's kernels (BF16 cache); kn.bf NULL: chunks run in fp32 */
    void *fused;           /* its workspace */
    float *scores;         /* [threads, capacity]: one decoded query's attention row per thread */
    /* Decoded queries against a BF16 cache where the BF16 kernels run (rows_bf; NULL without them: sv_ops'
     * fp32 dot_rows): each thread's query and softmax terms in BF16, [threads, head_dim], [threads, capacity]. */
    const sv_bf16_isa *rows_bf;
    uint16_t *row_query, *row_terms;
    /* fp32 chunks, one KV head's group of query heads at a time: */
    float *group_q;        /* [group * max_queries, head_dim]: the queries of one KV head's group */
    float *group_scores;   /* room for [group * max_queries, capacity], used as [group * n, keys] */
    float *group_out;      /* [group * max_queries, head_dim] */
    void *v_keys;          /* room for [head_dim, capacity]: V^T of the keys so far, used as [head_dim, keys] */
    int64_t bytes;
};

sv_cached_attention *sv_cached_attention_new(const sv_ctx *ctx, const sv_kv_cache *c, int64_t heads,
                                             int64_t max_queries) {
    sv_cached_attention *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    int64_t hd = c->head_dim, cap = c->capacity, threads = sv_pool_threads(ctx->pool);
    a->heads = heads;
    a->max_queries = max_queries;
    a->capacity = cap;
    a->scale = 1.0f / sqrtf((float)hd);
    attn_shape widest = {max_queries, cap, heads, c->kv_heads, hd, 1, 1.0f};
    attn_kernels kn = {c->bf16 ? sv_bf16_isa_for(sv_isa_selected()) : NULL, NULL};
    if (kn.bf) kn.amx = sv_amx_for(sv_isa_selected());
    size_t fused_size = fused_bytes(&kn, &widest);
    int64_t group_rows = fused_size ? 0 : max_queries * (heads / c->kv_heads), vk = fused_size ? 0 : hd * cap;
    size_t kv_bytes = c->bf16 ? sizeof(uint16_t) : sizeof(float);
    a->scores = malloc((size_t)(threads * cap) * sizeof(float));
    int ok = a->scores != NULL;
    a->rows_bf = c->bf16 ? sv_bf16_isa_for(sv_isa_selected()) : NULL;
    int64_t row_bf16 = a->rows_bf ? threads * (hd + cap) : 0; /* row_query and row_terms */
    if (row_bf16) {
        a->row_query = malloc((size_t)(threads * hd) * sizeof(uint16_t));
        a->row_terms = malloc((size_t)(threads * cap) * sizeof(uint16_t));
        ok = ok && a->row_query && a->row_terms;
    }
    if (fused_size) {
        a->kn = kn;
        ok = ok && posix_memalign(&a->fused, 64, fused_size) == 0;
        if (!ok) a->fused = NULL;
    } else {
        a->group_q = malloc((size_t)(group_rows * hd) * sizeof(float));
        a->group_scores = malloc((size_t)(group_rows * cap) * sizeof(float));
        a->group_out = malloc((size_t)(group_rows * hd) * sizeof(float));
        a->v_keys = malloc((size_t)vk * kv_bytes);
        ok = ok && a->group_q && a->group_scores && a->group_out && a->v_keys;
    }
    if (!ok) {
        sv_cached_attention_free(a);
        return NULL;
    }
    a->bytes = (int64_t)fused_size + (threads * cap + group_rows * (2 * hd + cap)) * (int64_t)sizeof(float) +
               vk * (int64_t)kv_bytes + row_bf16 * (int64_t)sizeof(uint16_t);
    return a;
}

void sv_cached_attention_free(sv_cached_attention *a) {
    if (!a) return;
    free(a->fused);
    free(a->scores);
    free(a->row_query);
    free(a->row_terms);
    free(a->group_q);
    free(a->group_scores);
    free(a->group_out);
    free(a->v_keys);
    free(a);
}

int64_t sv_cached_attention_bytes(const sv_cached_attention *a) { return a->bytes; }

typedef struct {
    sv_cached_attention *a;
    const sv_kv_cache *c;
    int64_t layer, n, pos0;
    float *out;
    const float *q;
} cached_job;

/* The cache offset of (layer, KV head): K rows at k + base, V^T rows at vt + base (both regions are
 * capacity * head_dim values). */
static int64_t cache_base(const sv_kv_cache *c, int64_t layer, int64_t kv_head) {
    return (layer * c->kv_heads + kv_head) * c->capacity * c->head_dim;
}

/* Single query rows, each against its own cache and position (decode steps of one or several
 * sequences): row r is q[r, heads * head_dim] at pos[r] in caches[r]. */
typedef struct {
    sv_cached_attention *a;
    const sv_kv_cache *const *caches;
    const int64_t *pos;
    int64_t layer;
    float *out;
    const float *q;
} rows_job;

/* Items are (row, query head): softmax(q K^T / sqrt(hd)) V over the row's cached positions 0..pos.  A BF16
 * cache with the BF16 kernels: q * scale and the softmax's terms rounded to BF16 (as the fused path), both
 * products on vdpbf16ps and the terms' sum divided out of the outputs; else fp32 products (the cache's
 * values widened). */
static void row_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    const sv_cached_attention *a = j->a;
    int64_t heads = a->heads;
    float *scores = a->scores + (int64_t)thread * a->capacity;
    for (int64_t item = begin; item < end; item++) {
        int64_t r = item / heads, h = item % heads;
        const sv_kv_cache *c = j->caches[r];
        int64_t hd = c->head_dim, cap = c->capacity, keys = j->pos[r] + 1, group = heads / c->kv_heads;
        int64_t base = cache_base(c, j->layer, h / group);
        const float *q = j->q + (r * heads + h) * hd;
        float *out = j->out + (r * heads + h) * hd;
        if (c->bf16 && a->rows_bf) {
            const uint16_t *K = (const uint16_t *)c->k + base, *Vt = (const uint16_t *)c->vt + base;
            uint16_t *query = a->row_query + (int64_t)thread * hd, *terms = a->row_terms + (int64_t)thread * a->capacity;
            round_scaled_queries(a->rows_bf, query, hd, q, hd, 1, a->scale, hd, out); /* out: free until the last product */
            a->rows_bf->dot_rows(scores, query, K, keys, hd, hd, 1.0f);
            float sum = sv_softmax_bf16(terms, keys, scores, keys);
            a->rows_bf->dot_rows(out, terms, Vt, hd, keys, cap, 1.0f / sum);
        } else if (c->bf16) {
            const uint16_t *K = (const uint16_t *)c->k + base, *Vt = (const uint16_t *)c->vt + base;
            sv_dot_rows_bf16(scores, q, K, keys, hd, hd, a->scale);
            sv_softmax(scores, keys);
            sv_dot_rows_bf16(out, scores, Vt, hd, keys, cap, 1.0f);
        } else {
            const float *K = (const float *)c->k + base, *Vt = (const float *)c->vt + base;
            sv_dot_rows(scores, q, K, keys, hd, hd, a->scale);
            sv_softmax(scores, keys);
            sv_dot_rows(out, scores, Vt, hd, keys, cap, 1.0f);
        }
    }
}

/* fp32 chunk, softmax step: row r of group_scores [group * n, keys] is query row r % n, which sees keys
 * 0..pos0 + r % n (causal); the rest is 0. */
static void causal_softmax_task(void *arg, int64_t begin, int64_t end, int thread) {
    const cached_job *j = arg;
    int64_t keys = j->pos0 + j->n;
    for (int64_t r = begin; r < end; r++) {
        float *row = j->a->group_scores + r * keys;
        int64_t seen = j->pos0 + r % j->n + 1;
        for (int64_t p = 0; p < seen; p++) row[p] *= j->a->scale;
        sv_softmax(row, seen);
        memset(row + seen, 0, (size_t)(keys - seen) * sizeof *row);
    }
}

/* fp32 chunk: for each KV head, its group's queries at once as scores = Q K^T and out = P V, two
 * matmuls over the keys 0..pos0+n. */
static void chunk_fp32(const sv_ctx *ctx, const cached_job *j) {
    const sv_kv_cache *c = j->c;
    sv_cached_attention *a = j->a;
    int64_t hd = c->head_dim, qd = a->heads * hd, cap = c->capacity, n = j->n;
    int64_t group = a->heads / c->kv_heads, keys = j->pos0 + n, rows = group * n;
    size_t head_bytes = (size_t)hd * sizeof(float), kv_bytes = c->bf16 ? sizeof(uint16_t) : sizeof(float);
    st_dtype kv_dtype = c->bf16 ? ST_BF16 : ST_F32;
    for (int64_t kvh = 0; kvh < c->kv_heads; kvh++) {
        int64_t base = cache_base(c, j->layer, kvh);
        for (int64_t g = 0; g < group; g++)
            for (int64_t i = 0; i < n; i++)
                memcpy(a->group_q + (g * n + i) * hd, j->q + i * qd + (kvh * group + g) * hd, head_bytes);
        sv_matrix K = {(const char *)c->k + base * kv_bytes, kv_dtype, keys, hd};
        sv_matmul(ctx, a->group_scores, a->group_q, rows, &K, NULL);
        sv_pool_run(ctx->pool, causal_softmax_task, (void *)j, rows);
        for (int64_t k = 0; k < hd; k++)
            memcpy((char *)a->v_keys + k * keys * kv_bytes, (const char *)c->vt + (base + k * cap) * kv_bytes,
                   (size_t)keys * kv_bytes);
        sv_matrix Vt = {a->v_keys, kv_dtype, hd, keys};
        sv_matmul(ctx, a->group_out, a->group_scores, rows, &Vt, NULL);
        for (int64_t g = 0; g < group; g++)
            for (int64_t i = 0; i < n; i++)
                memcpy(j->out + i * qd + (kvh * group + g) * hd, a->group_out + (g * n + i) * hd, head_bytes);
    }
}

void sv_attend_cache(const sv_ctx *ctx, sv_cached_attention *a, const sv_kv_cache *c, int64_t layer, float *out,
                     const float *q, int64_t n, int64_t pos0) {
    if (n == 1) {
        sv_attend_cache_rows(ctx, a, &c, layer, out, q, 1, &pos0);
        return;
    }
    double t = sv_op_begin(ctx);
    cached_job j = {a, c, layer, n, pos0, out, q};
    if (a->kn.bf) {
        int64_t hd = c->head_dim, qd = a->heads * hd, cap = c->capacity;
        attn_shape shape = {n, pos0 + n, a->heads, c->kv_heads, hd, 1, a->scale};
        const uint16_t *k = (const uint16_t *)c->k + cache_base(c, layer, 0);
        const uint16_t *vt = (const uint16_t *)c->vt + cache_base(c, layer, 0);
        attn_operands o = {q, qd, out, qd, k, cap * hd, hd, vt, cap * hd, cap};
        fused(ctx->pool, &a->kn, a->fused, &shape, &o);
    } else {
        chunk_fp32(ctx, &j);
    }
    sv_op_end(ctx, SV_OP_ATTENTION, t);
}

void sv_attend_cache_rows(const sv_ctx *ctx, sv_cached_attention *a, const sv_kv_cache *const *caches,
                          int64_t layer, float *out, const float *q, int64_t n, const int64_t *pos) {
    double t = sv_op_begin(ctx);
    rows_job j = {a, caches, pos, layer, out, q};
    sv_pool_run(ctx->pool, row_task, &j, n * a->heads);
    sv_op_end(ctx, SV_OP_ATTENTION, t);
}

/* ---- test hooks (declared in smolvision.h) ---- */

/* The fused path's kernels at a named level: avx512bf16's own GEMM, or amx's tiles. */
static sv_status debug_kernels(const char *isa, attn_kernels *kn) {
    int level = isa ? sv_isa_parse(isa) : -1;
    if (level < 0) return sv_fail(SV_ERR_ARG, "unknown ISA '%s'", isa ? isa : "(null)");
    kn->bf = sv_bf16_isa_for((sv_isa_level)level);
    kn->amx = level == SV_ISA_AMX ? sv_amx_for(SV_ISA_AMX) : NULL;
    if (!kn->bf || (level == SV_ISA_AMX && !kn->amx))
        return sv_fail(SV_ERR_UNSUPPORTED, "the %s BF16 kernels do not run in this process (amx: %s)", isa,
                       sv_amx_status());
    return SV_OK;
}

sv_status sv_debug_attention_bf16(const char *isa, const float *q, const float *k, const float *v, float *out,
                                  int64_t n, int64_t heads, int64_t head_dim, float scale, int32_t threads) {
    if (!q || !k || !v || !out || n < 1 || heads < 1 || head_dim < 1 || threads < 1 || n > INT32_MAX ||
        heads * head_dim > INT32_MAX)
        return sv_fail(SV_ERR_ARG, "bad attention arguments n=%lld heads=%lld head_dim=%lld threads=%d",
                       (long long)n, (long long)heads, (long long)head_dim, threads);
    attn_kernels kn;
    sv_status s = debug_kernels(isa, &kn);
    if (s != SV_OK) return s;
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    size_t bytes = self_fused_bytes(&kn, n, heads, head_dim);
    void *workspace = NULL;
    if (!bytes) s = sv_fail(SV_ERR_UNSUPPORTED, "the shapes are too big for the fused path");
    else if (posix_memalign(&workspace, 64, bytes) != 0) s = sv_fail(SV_ERR_NOMEM, "out of memory");
    if (s == SV_OK) self_fused(pool, &kn, workspace, out, q, k, v, heads * head_dim, n, heads, head_dim, scale);
    free(workspace);
    sv_pool_free(pool);
    return s;
}

sv_status sv_debug_attention_bf16_kv(const char *isa, const float *q, const float *k, const float *v, float *out,
                                     int64_t queries, int64_t keys, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                     int32_t causal, float scale, int32_t threads) {
    attn_shape a = {queries, keys, heads, kv_heads, head_dim, causal != 0, scale};
    if (!q || !k || !v || !out || !shape_ok(&a) || threads < 1 || keys > INT32_MAX || heads * head_dim > INT32_MAX)
        return sv_fail(SV_ERR_ARG, "bad attention arguments queries=%lld keys=%lld heads=%lld kv_heads=%lld "
                                   "head_dim=%lld threads=%d", (long long)queries, (long long)keys, (long long)heads,
                       (long long)kv_heads, (long long)head_dim, threads);
    attn_kernels kn;
    sv_status s = debug_kernels(isa, &kn);
    if (s != SV_OK) return s;
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    size_t bytes = fused_bytes(&kn, &a);
    /* The decoder cache's layout (sv_kv_cache, one layer): K [kv_heads, capacity, head_dim], V^T [kv_heads,
     * head_dim, capacity], with a capacity beyond the keys.  One query takes decode's path (row_task). */
    int64_t cap = keys + 5, kvd = kv_heads * head_dim;
    uint16_t *k16 = malloc((size_t)(kvd * cap) * 2), *vt16 = malloc((size_t)(kvd * cap) * 2);
    const int64_t block_bytes = 64 * head_dim * (int64_t)sizeof(uint16_t); /* 64 values at a time into V^T */
    uint16_t *block = malloc((size_t)block_bytes);
    sv_cached_attention rows = {.heads = heads, .max_queries = 1, .capacity = cap, .scale = scale, .rows_bf = kn.bf};
    rows.scores = malloc((size_t)(threads * cap) * sizeof(float));
    rows.row_query = malloc((size_t)(threads * head_dim) * sizeof(uint16_t));
    rows.row_terms = malloc((size_t)(threads * cap) * sizeof(uint16_t));
    void *workspace = NULL;
    if (!bytes) s = sv_fail(SV_ERR_UNSUPPORTED, "the shapes are too big for the fused path");
    else if (!k16 || !vt16 || !block || !rows.scores || !rows.row_query || !rows.row_terms ||
             posix_memalign(&workspace, 64, bytes) != 0)
        s = sv_fail(SV_ERR_NOMEM, "out of memory");
    if (s == SV_OK) {
        for (int64_t g = 0; g < kv_heads; g++) /* as the decoder's cache store lays a head out */
            sv_head_kv_to_bf16(sv_to_bf16_rows, k16 + g * cap * head_dim, vt16 + g * head_dim * cap, cap,
                               k + g * head_dim, v + g * head_dim, kvd, keys, head_dim, block, block_bytes);
        if (queries == 1) {
            sv_kv_cache c = {1, kv_heads, head_dim, cap, 1, k16, vt16};
            const sv_kv_cache *caches[1] = {&c};
            int64_t pos = keys - 1;
            rows_job j = {&rows, caches, &pos, 0, out, q};
            sv_pool_run(pool, row_task, &j, heads);
        } else {
            attn_operands o = {q, heads * head_dim, out, heads * head_dim, k16, cap * head_dim, head_dim,
                               vt16, head_dim * cap, cap};
            fused(pool, &kn, workspace, &a, &o);
        }
    }
    free(workspace);
    free(k16);
    free(vt16);
    free(block);
    free(rows.scores);
    free(rows.row_query);
    free(rows.row_terms);
    sv_pool_free(pool);
    return s;
}
