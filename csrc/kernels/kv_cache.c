/* kv_cache.c - the decoder's KV cache (kernels.h: sv_kv_cache): allocation
 * and storing a chunk's keys and values. */
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"
#include "../quant.h"

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
    sv_kv_cache *c;
    int64_t layer, pos0;
    const float *k, *v;
} store_job;

/* Rows [begin, end) of k and v into positions pos0 + begin .. of every KV head of the layer. */
static void store_task(void *arg, int64_t begin, int64_t end, int thread) {
    const store_job *j = arg;
    const sv_kv_cache *c = j->c;
    int64_t hd = c->head_dim, kvd = c->kv_heads * hd, cap = c->capacity;
    for (int64_t h = 0; h < c->kv_heads; h++) {
        int64_t base = (j->layer * c->kv_heads + h) * cap * hd;
        for (int64_t i = begin; i < end; i++) {
            const float *k = j->k + i * kvd + h * hd, *v = j->v + i * kvd + h * hd;
            int64_t pos = j->pos0 + i;
            if (c->bf16) {
                uint16_t *kc = (uint16_t *)c->k + base, *vc = (uint16_t *)c->vt + base;
                sv_to_bf16(kc + pos * hd, k, hd);
                uint16_t vb[64]; /* v rounded a block at a time, then scattered into its column */
                for (int64_t e0 = 0; e0 < hd; e0 += 64) {
                    int64_t len = hd - e0 < 64 ? hd - e0 : 64;
                    sv_to_bf16(vb, v + e0, len);
                    for (int64_t e = 0; e < len; e++) vc[(e0 + e) * cap + pos] = vb[e];
                }
            } else {
                float *kc = (float *)c->k + base, *vc = (float *)c->vt + base;
                memcpy(kc + pos * hd, k, (size_t)hd * sizeof(float));
                for (int64_t e = 0; e < hd; e++) vc[e * cap + pos] = v[e];
            }
        }
    }
}

void sv_kv_cache_store(const sv_ctx *ctx, sv_kv_cache *c, int64_t layer, int64_t pos0, const float *k,
                       const float *v, int64_t n) {
    store_job j = {c, layer, pos0, k, v};
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
