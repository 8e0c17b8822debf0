/* kv_cache.c - the decoder's KV cache (kernels.h: sv_kv_cache): allocation,
 * growth, and storing keys and values (a prompt chunk's into one cache, or a
 * decode step's rows each into its own sequence's cache). */
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"
#include "../quant.h"
#include "isa.h"

int sv_kv_in_bf16(const sv_ctx *ctx, st_dtype weights) {
    return ctx->precision == SV_PRECISION_BF16 && (weights == ST_BF16 || sv_dtype_is_quant(weights));
}

int sv_kv_cache_init(sv_kv_cache *c, const sv_ctx *ctx, st_dtype weights, int64_t layers, int64_t kv_heads,
                     int64_t head_dim, int64_t capacity) {
    *c = (sv_kv_cache){layers, kv_heads, head_dim, capacity, sv_kv_in_bf16(ctx, weights), NULL, NULL};
    size_t bytes = (size_t)(sv_kv_cache_bytes(c) / 2);
    c->k = malloc(bytes);
    c->vt = malloc(bytes);
    if (!c->k || !c->vt) {
        sv_kv_cache_free(c);
        return 0;
    }
    return 1;
}

void sv_kv_cache_free(sv_kv_cache *c) {
    free(c->k);
    free(c->vt);
    c->k = c->vt = NULL;
}

int64_t sv_kv_cache_bytes(const sv_kv_cache *c) {
    int64_t values = c->layers * c->kv_heads * c->head_dim * c->capacity;
    return 2 * values * (int64_t)(c->bf16 ? sizeof(uint16_t) : sizeof(float));
}

typedef struct {
    sv_kv_cache *const *caches; /* rows: one per row; else caches[0] takes every row */
    const int64_t *pos;         /* rows: row i's position; else row i goes to pos0 + i */
    int64_t layer, pos0;
    const float *k, *v;
    sv_pool *pool;
} store_job;

void sv_head_kv_to_bf16(sv_round_rows_fn *round, uint16_t *kb, uint16_t *vt, int64_t ldvt, const float *k,
                        const float *v, int64_t ld, int64_t n, int64_t hd, uint16_t *scratch, int64_t scratch_bytes) {
    const int64_t block = scratch_bytes / (hd * (int64_t)sizeof *scratch);
    round(kb, hd, k, ld, n, hd);
    for (int64_t t0 = 0; t0 < n; t0 += block) {
        const int64_t rows = n - t0 < block ? n - t0 : block;
        round(scratch, hd, v + t0 * ld, ld, rows, hd);
        for (int64_t e = 0; e < hd; e++)
            for (int64_t t = 0; t < rows; t++) vt[e * ldvt + t0 + t] = scratch[t * hd + e];
    }
}

/* n consecutive rows of k and v (kvd values apart) into positions pos .. pos + n - 1 of every KV head of the
 * layer (BF16: sv_head_kv_to_bf16 for each head, through the thread's scratch). */
static void store_run(const store_job *j, sv_kv_cache *c, int64_t pos, const float *k, const float *v, int64_t n,
                      int thread) {
    const int64_t hd = c->head_dim, kvd = c->kv_heads * hd, cap = c->capacity;
    for (int64_t h = 0; h < c->kv_heads; h++) {
        const int64_t base = (j->layer * c->kv_heads + h) * cap * hd;
        if (c->bf16) {
            uint16_t *kc = (uint16_t *)c->k + base, *vc = (uint16_t *)c->vt + base;
            sv_head_kv_to_bf16(sv_to_bf16_rows, kc + pos * hd, vc + pos, cap, k + h * hd, v + h * hd, kvd, n, hd,
                               (uint16_t *)sv_pool_scratch(j->pool, thread), SV_POOL_SCRATCH_BYTES);
        } else {
            float *kc = (float *)c->k + base, *vc = (float *)c->vt + base;
            for (int64_t t = 0; t < n; t++) memcpy(kc + (pos + t) * hd, k + t * kvd + h * hd, (size_t)hd * sizeof *kc);
            for (int64_t e = 0; e < hd; e++)
                for (int64_t t = 0; t < n; t++) vc[e * cap + pos + t] = v[t * kvd + h * hd + e];
        }
    }
}

/* Rows [begin, end) of k and v: a chunk's rows as one run, or each row into its own cache. */
static void store_task(void *arg, int64_t begin, int64_t end, int thread) {
    const store_job *j = arg;
    const int64_t kvd = j->caches[0]->kv_heads * j->caches[0]->head_dim;
    if (!j->pos) {
        store_run(j, j->caches[0], j->pos0 + begin, j->k + begin * kvd, j->v + begin * kvd, end - begin, thread);
        return;
    }
    for (int64_t i = begin; i < end; i++) store_run(j, j->caches[i], j->pos[i], j->k + i * kvd, j->v + i * kvd, 1, thread);
}

void sv_kv_cache_store(const sv_ctx *ctx, sv_kv_cache *c, int64_t layer, int64_t pos0, const float *k,
                       const float *v, int64_t n) {
    store_job j = {.caches = &c, .layer = layer, .pos0 = pos0, .k = k, .v = v, .pool = ctx->pool};
    sv_pool_run(ctx->pool, store_task, &j, n);
}

void sv_kv_cache_store_rows(const sv_ctx *ctx, sv_kv_cache *const *caches, int64_t layer, const int64_t *pos,
                            const float *k, const float *v, int64_t n) {
    store_job j = {.caches = caches, .pos = pos, .layer = layer, .k = k, .v = v, .pool = ctx->pool};
    sv_pool_run(ctx->pool, store_task, &j, n);
}

int sv_kv_cache_grow(sv_kv_cache *c, int64_t capacity, int64_t keep) {
    sv_kv_cache grown = *c;
    grown.capacity = capacity;
    size_t bytes = (size_t)(sv_kv_cache_bytes(&grown) / 2), elem = c->bf16 ? sizeof(uint16_t) : sizeof(float);
    grown.k = malloc(bytes);
    grown.vt = malloc(bytes);
    if (!grown.k || !grown.vt) {
        free(grown.k);
        free(grown.vt);
        return 0;
    }
    int64_t hd = c->head_dim;
    for (int64_t g = 0; g < c->layers * c->kv_heads; g++) {
        if (keep > 0) memcpy((char *)grown.k + (size_t)(g * capacity * hd) * elem,
                             (const char *)c->k + (size_t)(g * c->capacity * hd) * elem, (size_t)(keep * hd) * elem);
        for (int64_t e = 0; keep > 0 && e < hd; e++)
            memcpy((char *)grown.vt + (size_t)((g * hd + e) * capacity) * elem,
                   (const char *)c->vt + (size_t)((g * hd + e) * c->capacity) * elem, (size_t)keep * elem);
    }
    sv_kv_cache_free(c);
    *c = grown;
    return 1;
}
