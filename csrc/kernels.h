/* kernels.h - the numeric building blocks the vision encoder and decoder are
 * written in.  Model code says what to compute; how (SIMD, BLAS, threads,
 * BF16 or fp32 products) is decided here.  Activations are fp32; weights stay
 * in their checkpoint dtype (F32, F16 or BF16) or quantized, and are widened
 * on the fly.
 *
 * The ops taking an sv_ctx are the ones a forward pass is written in: they
 * split their work over the context's pool and time themselves under their
 * op class in its profile.  The plain ones below them compute one thread's
 * share. */
#ifndef SV_KERNELS_H
#define SV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/matrix.h"
#include "profile.h"
#include "smolvision.h"
#include "threadpool.h"

/* ---- the context ops run in ---- */

typedef struct {
    sv_pool *pool;          /* the threads an op splits its work over */
    sv_precision precision; /* how sv_matmul multiplies (smolvision.h) */
    sv_profile *profile;    /* where ops record their time; NULL: nowhere */
    int timed_as;           /* SV_OP_COUNT: each op under its own class; else every op under this sv_profile_op */
} sv_ctx;

static inline sv_ctx sv_ctx_make(sv_pool *pool, sv_precision precision, sv_profile *profile) {
    sv_ctx ctx = {pool, precision, profile, SV_OP_COUNT};
    return ctx;
}

/* How the ops below time themselves: t = sv_op_begin(ctx); ...; sv_op_end(ctx, class, t). */
static inline double sv_op_begin(const sv_ctx *ctx) { return sv_profile_op_begin(ctx->profile); }
static inline void sv_op_end(const sv_ctx *ctx, sv_profile_op op, double since) {
    sv_profile_op_end(ctx->profile, ctx->timed_as == SV_OP_COUNT ? op : (sv_profile_op)ctx->timed_as, since);
}

/* ---- ops (timed class in brackets; the unnamed ones count as the phase's "other") ---- */

/* [matmul] y = x @ W^T + b: x[n, W.cols], W[W.rows, W.cols], b[W.rows] or NULL, y[n, W.rows]. */
void sv_matmul(const sv_ctx *ctx, float *y, const float *x, int64_t n, const sv_matrix *W, const float *b);

/* One of several products of the same input (sv_matmul_shared): y = x @ W^T + b. */
typedef struct {
    float *y;
    const sv_matrix *W;
    const float *b;
} sv_product;

/* [matmul] sv_matmul for each of count products of one x (q, k and v; gate and up): where their weights
 * share a dtype and a width, x is rounded to BF16 for the BF16 kernels once rather than once per product. */
void sv_matmul_shared(const sv_ctx *ctx, const float *x, int64_t n, const sv_product *products, int count);

/* 1 if sv_matmul in this context multiplies weights of this dtype in BF16 products (precision "bf16" on
 * a CPU with AVX512_BF16, for BF16 weights and for quantized ones, whose prompts run the BF16 GEMM).
 * Attention next to such products runs in BF16 too. */
int sv_matmul_in_bf16(const sv_ctx *ctx, st_dtype weights);

/* [norm] y = (x - mean) / sqrt(var + eps) * w + b per row: x, y [n, dim]; y may alias x. */
void sv_layernorm_rows(const sv_ctx *ctx, float *y, const float *x, const float *w, const float *b, int64_t n,
                       int64_t dim, float eps);
/* [norm] y = x / sqrt(mean(x^2) + eps) * w per row: x, y [n, dim]; y may alias x. */
void sv_rmsnorm_rows(const sv_ctx *ctx, float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps);
/* [norm] residual += x, then y = layernorm(residual) (as sv_layernorm_rows), a few rows at a time while they
 * are in cache: the residual add and the norm that reads it in one pass; y may alias x. */
void sv_add_layernorm_rows(const sv_ctx *ctx, float *residual, const float *x, float *y, const float *w,
                           const float *b, int64_t n, int64_t dim, float eps);
/* [norm] residual += x, then y = rmsnorm(residual) (as sv_rmsnorm_rows), as sv_add_layernorm_rows. */
void sv_add_rmsnorm_rows(const sv_ctx *ctx, float *residual, const float *x, float *y, const float *w, int64_t n,
                         int64_t dim, float eps);
/* [activation] x = gelu_tanh(x): x[n, dim]. */
void sv_gelu_rows(const sv_ctx *ctx, float *x, int64_t n, int64_t dim);
/* [activation] gate = silu(gate) * up: gate, up [n, dim]. */
void sv_silu_mul_rows(const sv_ctx *ctx, float *gate, const float *up, int64_t n, int64_t dim);
/* y += x: x, y [n, dim]. */
void sv_add_rows(const sv_ctx *ctx, float *y, const float *x, int64_t n, int64_t dim);
/* Rotates pairs (i, i + head_dim / 2) of each head of x[n, heads * head_dim] by the angles in cos, sin
 * [n, head_dim / 2] (transformers' rotate_half convention). */
void sv_rope_rows(const sv_ctx *ctx, float *x, int64_t n, int64_t heads, int64_t head_dim, const float *cos,
                  const float *sin);

/* ---- attention (kernels/attention.c, kernels/kv_cache.c) ----
 *
 * Multi-head attention: per query head h (KV head g = h / (heads / kv_heads)),
 * out[:, h] = softmax(q[:, h] K_g^T / sqrt(head_dim)) V_g, where [:, h] are the columns
 * [h * head_dim, (h + 1) * head_dim) of rows heads * head_dim (or kv_heads * head_dim) wide.
 * Each form runs in BF16 products (q, k, v and the probabilities rounded to BF16, as transformers' BF16
 * run keeps them) where its context's matmuls with the given weights do (sv_matmul_in_bf16), else fp32. */

/* [attention] Self-attention of a group of n tokens, every token seeing every token (the vision tower's
 * tiles): q, k, v, out [n, heads * head_dim], heads = kv_heads.  The workspace is made for one shape. */
typedef struct sv_self_attention sv_self_attention;
sv_self_attention *sv_self_attention_new(const sv_ctx *ctx, st_dtype weights, int64_t n, int64_t heads,
                                         int64_t head_dim); /* NULL: out of memory */
void sv_self_attention_free(sv_self_attention *a);
void sv_attend_self(const sv_ctx *ctx, sv_self_attention *a, float *out, const float *q, const float *k,
                       const float *v);

/* A KV cache of `capacity` positions per layer: K as rows [position, head_dim] and V transposed
 * [head_dim, position] per (layer, KV head), the layouts attention reads contiguously; BF16 in precision
 * "bf16" next to BF16 or quantized weights (sv_kv_in_bf16: half the memory, and half the bytes a decoded
 * token reads), else fp32. */
typedef struct {
    int64_t layers, kv_heads, head_dim, capacity;
    int bf16;  /* k and vt hold BF16 (uint16_t), else float */
    void *k;   /* [layers, kv_heads, capacity, head_dim] */
    void *vt;  /* [layers, kv_heads, head_dim, capacity] */
} sv_kv_cache;

/* Whether a cache next to products with these weights holds BF16: precision "bf16" with BF16 or quantized
 * weights, whatever the CPU (where there are no BF16 kernels attention widens the cached BF16 values and
 * computes in fp32; transformers' BF16 run keeps its cache in BF16 too). */
int sv_kv_in_bf16(const sv_ctx *ctx, st_dtype weights);
/* 0 and an empty cache if out of memory. */
int sv_kv_cache_init(sv_kv_cache *c, const sv_ctx *ctx, st_dtype weights, int64_t layers, int64_t kv_heads,
                     int64_t head_dim, int64_t capacity);
void sv_kv_cache_free(sv_kv_cache *c);
int64_t sv_kv_cache_bytes(const sv_kv_cache *c);
/* Stores the keys and values k, v [n, kv_heads * head_dim] of positions pos0 .. pos0 + n - 1 in a layer. */
void sv_kv_cache_store(const sv_ctx *ctx, sv_kv_cache *c, int64_t layer, int64_t pos0, const float *k,
                       const float *v, int64_t n);
/* Stores row r of k and v [n, kv_heads * head_dim] at position pos[r] of caches[r] (decode steps of several
 * sequences: one pool run for all of them); the caches alike in shape and dtype. */
void sv_kv_cache_store_rows(const sv_ctx *ctx, sv_kv_cache *const *caches, int64_t layer, const int64_t *pos,
                            const float *k, const float *v, int64_t n);

/* Grows a cache to `capacity` positions keeping the first `keep` (their K rows and V^T columns);
 * 0 and the cache as it was if out of memory. */
int sv_kv_cache_grow(sv_kv_cache *c, int64_t capacity, int64_t keep);

/* [attention] Causal attention of n <= max_queries query rows q[n, heads * head_dim] at positions
 * pos0 .. pos0 + n - 1 against a cache's layer: query i sees positions 0 .. pos0 + i (all stored).
 * One row (decode) runs dot products per head; more run as a chunk (GEMMs over each KV head's group).
 * The workspace is made for caches of c's layout (dtype, KV heads, head_dim) and at most c's capacity,
 * and a largest chunk; it serves any such cache. */
typedef struct sv_cached_attention sv_cached_attention;
sv_cached_attention *sv_cached_attention_new(const sv_ctx *ctx, const sv_kv_cache *c, int64_t heads,
                                             int64_t max_queries); /* NULL: out of memory */
void sv_cached_attention_free(sv_cached_attention *a);
int64_t sv_cached_attention_bytes(const sv_cached_attention *a);
void sv_attend_cache(const sv_ctx *ctx, sv_cached_attention *a, const sv_kv_cache *c, int64_t layer, float *out,
                     const float *q, int64_t n, int64_t pos0);
/* [attention] n single query rows, each against its own cache (decode steps of several sequences in
 * one batch): row r of q, out [n, heads * head_dim] is at position pos[r] and sees positions 0 .. pos[r]
 * of caches[r] (all stored).  One pool run over rows x heads. */
void sv_attend_cache_rows(const sv_ctx *ctx, sv_cached_attention *a, const sv_kv_cache *const *caches,
                          int64_t layer, float *out, const float *q, int64_t n, const int64_t *pos);

/* ---- single-thread kernels ---- */

/* dst[r * ldd + c] = x[r * ldx + c] rounded to BF16, nearest even, for r < rows, c < n; zero for
 * n <= c < ldd. */
void sv_to_bf16_rows(uint16_t *dst, int64_t ldd, const float *x, int64_t ldx, int64_t rows, int64_t n);

/* dst[W.cols] = W[row, :] as fp32 (embedding lookup). */
void sv_matrix_row(float *dst, const sv_matrix *W, int64_t row);

/* y = (x - mean) / sqrt(var + eps) * w + b per row: x, y [n, dim]; y may alias x. */
void sv_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, int64_t dim, float eps);

/* y = x / sqrt(mean(x^2) + eps) * w per row: x, y [n, dim]; y may alias x. */
void sv_rmsnorm(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps);

/* x = gelu_tanh(x) elementwise: x[n]. */
void sv_gelu_tanh(float *x, int64_t n);

/* gate = silu(gate) * up elementwise: gate, up [n]. */
void sv_silu_mul(float *gate, const float *up, int64_t n);

/* x = softmax(x) in place: x[n]. */
void sv_softmax(float *x, int64_t n);
/* The softmax's terms without the division: p[i] = e^(x[i] - max x) rounded to BF16 for i < n, zeros up to
 * ld; returns their fp32 sum (of the unrounded terms), to divide by.  For the BF16 attention. */
float sv_softmax_bf16(uint16_t *p, int64_t ld, const float *x, int64_t n);

/* y += x: x, y [n]. */
void sv_add(float *y, const float *x, int64_t n);

/* out[r] = scale * (x . rows[r * stride : r * stride + len]) for r < n_rows: x[len]. */
void sv_dot_rows(float *out, const float *x, const float *rows, int64_t n_rows, int64_t len, int64_t stride,
                 float scale);
/* The same with BF16 rows, widened to fp32 (x stays fp32). */
void sv_dot_rows_bf16(float *out, const float *x, const uint16_t *rows, int64_t n_rows, int64_t len, int64_t stride,
                      float scale);

#endif
