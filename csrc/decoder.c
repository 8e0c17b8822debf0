/* decoder.c - the Llama text decoder: token (and image) embeddings, N layers
 * of RMSNorm -> attention with RoPE over a KV cache -> RMSNorm -> SwiGLU MLP,
 * the final norm and the LM head.
 *
 * Prompts run in equal chunks of at most PREFILL_CHUNK rows: each chunk goes
 * through all layers with batched matmuls, its keys and values are appended
 * to the cache, and its queries attend causally to everything cached.  A
 * chunk's attention is two matmuls per KV head (scores = Q K^T, out = P V),
 * all query heads of a GQA group at once; a single decoded row uses plain dot
 * products instead.  So the scratch is O(chunk * (width + context)) and no
 * [n, n] score matrix ever exists.
 *
 * The cache keeps K as rows [position, head_dim] and V transposed
 * [head_dim, position], the layouts both matmuls and the decode loops read
 * contiguously.  When the matmuls run in BF16 (precision "bf16" with BF16
 * or quantized weights on a CPU with AVX512_BF16) the cache holds BF16, as transformers'
 * BF16 run does: half the memory, and half the bytes each decoded token reads
 * from a long context. */
#include "decoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kernels.h"
#include "profile.h"
#include "quant.h"

#define PREFILL_CHUNK 512
/* Capacities are rounded up to this many positions so that a chat whose
 * context grows by a few tokens per turn does not reallocate every call. */
#define CAPACITY_STEP 256

struct sv_decoder {
    int32_t capacity;     /* positions the KV cache holds */
    int32_t chunk;        /* rows the prefill scratch holds */
    int32_t n_past;       /* positions now in the cache */
    int busy;
    int n_threads;
    int kv_bf16;          /* the caches and v_keys hold BF16 (uint16_t), else float */
    void *k_cache;        /* [layers, kv_heads, capacity, head_dim] */
    void *v_cache;        /* [layers, kv_heads, head_dim, capacity]: transposed */
    float *x;             /* [chunk, hidden]: the residual stream; starts the one scratch block */
    float *xn;            /* [chunk, hidden]: normed input / projection output */
    float *q;             /* [chunk, heads * head_dim] */
    float *k, *v;         /* [chunk, kv_heads * head_dim] */
    float *att;           /* [chunk, heads * head_dim]: attention output */
    float *gate, *up;     /* [chunk, intermediate] */
    float *cos, *sin;     /* [chunk, head_dim / 2] */
    float *inv_freq;      /* [head_dim / 2] */
    void *attn;           /* sv_attention_bf16's workspace (BF16 cache), else NULL and chunk attention
                           * runs per KV head through sv_matmul on the group_* buffers and v_keys */
    float *group_q;       /* [group * chunk, head_dim]: the queries of one KV head's group */
    float *group_scores;  /* room for [group * chunk, capacity]: their weights, used as [group * n, keys] */
    float *group_out;     /* [group * chunk, head_dim] */
    float *v_keys;        /* room for [head_dim, capacity]: V^T of the keys so far, used as [head_dim, keys]
                           * (of uint16_t when kv_bf16) */
    float *scores;        /* [n_threads, capacity]: one decoded query's attention row per thread */
    float *logits;        /* [vocab] */
    int64_t bytes;        /* everything above */
};

/* ---- state ---- */

sv_status sv_decoder_check_prompt(const sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds,
                                  int32_t n_image_rows, int32_t extra) {
    const sv_config *c = &m->cfg;
    if (n < 1 || !ids) return sv_fail(SV_ERR_ARG, "the prompt is empty: at least one token id is needed");
    if (extra < 0) return sv_fail(SV_ERR_ARG, "max_tokens must be >= 0, not %d", extra);
    if ((int64_t)n + extra > c->max_position_embeddings)
        return sv_fail(SV_ERR_ARG,
                       "the prompt's %d tokens plus max_tokens %d exceed the model's context of %d positions "
                       "(max_position_embeddings)",
                       n, extra, c->max_position_embeddings);
    if (n_image_rows < 0) return sv_fail(SV_ERR_ARG, "n_image_rows must be >= 0, not %d", n_image_rows);
    if (n_image_rows > 0 && !image_embeds) return sv_fail(SV_ERR_ARG, "%d image rows announced but none given",
                                                          n_image_rows);
    int32_t n_image_tokens = 0;
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return sv_fail(SV_ERR_ARG, "token id %d at position %d is outside the vocabulary [0, %d)", ids[i], i,
                           c->vocab_size);
        n_image_tokens += ids[i] == c->image_token_id;
    }
    if (n_image_tokens != n_image_rows)
        return sv_fail(SV_ERR_ARG,
                       "the prompt has %d image tokens (id %d) but %d image embedding rows were given; "
                       "they must match one to one",
                       n_image_tokens, c->image_token_id, n_image_rows);
    return SV_OK;
}

void sv_decoder_free(sv_decoder *d) {
    if (!d) return;
    free(d->k_cache);
    free(d->v_cache);
    free(d->attn);
    free(d->x);
    free(d);
}

/* The inverse frequencies exactly as transformers computes them in float32:
 * 1 / theta ** (float(2i) / head_dim). */
static void rope_inv_freq(float *inv_freq, const sv_config *c) {
    int32_t half = c->head_dim / 2;
    float theta = (float)c->rope_theta;
    for (int32_t i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)c->head_dim;
        inv_freq[i] = 1.0f / (float)pow((double)theta, (double)exponent);
    }
}

static sv_status decoder_alloc(sv_model *m, int32_t capacity, sv_decoder **out) {
    const sv_config *c = &m->cfg;
    int64_t hd = c->head_dim, half = hd / 2, qd = (int64_t)c->text_heads * hd;
    int64_t kvd = (int64_t)c->text_kv_heads * hd, d = c->text_hidden, f = c->text_intermediate;
    sv_decoder *s = calloc(1, sizeof *s);
    if (!s) return sv_fail(SV_ERR_NOMEM, "out of memory allocating the decoder state");
    s->capacity = capacity;
    s->chunk = capacity < PREFILL_CHUNK ? capacity : PREFILL_CHUNK;
    s->n_threads = sv_pool_threads(m->pool);
    int64_t ch = s->chunk;
    int64_t cache_values = (int64_t)c->text_layers * kvd * capacity;
    /* BF16 weights, or quantized ones (their prompts run the BF16 GEMM too), in precision "bf16". */
    st_dtype weights = m->text.layers[0].q.dtype;
    s->kv_bf16 = sv_matmul_bf16(m->pool) && (weights == ST_BF16 || sv_dtype_is_quant(weights));
    size_t kv_bytes = s->kv_bf16 ? sizeof(uint16_t) : sizeof(float);
    /* All scratch is one block (freed through x), carved in the order of slots[]. */
    sv_attention_shape widest = {ch, capacity, c->text_heads, c->text_kv_heads, hd, 1, 1.0f};
    size_t attn_bytes = s->kv_bf16 ? sv_attention_bf16_bytes(m->pool, &widest) : 0;
    int64_t gch = attn_bytes ? 0 : ch * (c->text_heads / c->text_kv_heads), vk = attn_bytes ? 0 : hd * capacity;
    int64_t sizes[] = {ch * d,   ch * d,         ch * qd,    ch * kvd,  ch * kvd, ch * qd, ch * f, ch * f,
                       ch * half, ch * half,     half,       gch * hd,  gch * capacity, gch * hd,
                       vk,       (int64_t)s->n_threads * capacity, c->vocab_size};
    float **slots[] = {&s->x,   &s->xn,  &s->q,        &s->k,            &s->v,         &s->att,
                       &s->gate, &s->up, &s->cos,      &s->sin,          &s->inv_freq,  &s->group_q,
                       &s->group_scores, &s->group_out, &s->v_keys,      &s->scores,    &s->logits};
    int64_t scratch_floats = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) scratch_floats += sizes[i];
    s->bytes = 2 * cache_values * (int64_t)kv_bytes + scratch_floats * (int64_t)sizeof(float) + (int64_t)attn_bytes;
    s->k_cache = malloc((size_t)cache_values * kv_bytes);
    s->v_cache = malloc((size_t)cache_values * kv_bytes);
    float *block = malloc((size_t)scratch_floats * sizeof(float));
    if (attn_bytes && posix_memalign(&s->attn, 64, attn_bytes) != 0) s->attn = NULL;
    if (!s->k_cache || !s->v_cache || !block || (attn_bytes && !s->attn)) {
        free(block);
        sv_decoder_free(s);
        return sv_fail(SV_ERR_NOMEM, "out of memory allocating %.1f MiB of decoder state for %d positions",
                       (double)s->bytes / (1 << 20), capacity);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *slots[i] = block;
        block += sizes[i];
    }
    rope_inv_freq(s->inv_freq, c);
    *out = s;
    return SV_OK;
}

sv_status sv_decoder_begin(sv_model *m, int32_t capacity) {
    sv_decoder *s = m->decoder;
    if (s && s->busy)
        return sv_fail(SV_ERR_ARG, "this model is already running a decoder call (calls must not overlap, "
                                   "e.g. from inside a token callback)");
    if (!s || s->capacity < capacity) {
        int64_t rounded = ((int64_t)capacity + CAPACITY_STEP - 1) / CAPACITY_STEP * CAPACITY_STEP;
        if (rounded > m->cfg.max_position_embeddings) rounded = m->cfg.max_position_embeddings;
        if (rounded < capacity) rounded = capacity;
        /* The old state goes first so the two never coexist at the peak. */
        sv_decoder_free(s);
        m->decoder = s = NULL;
        sv_status st = decoder_alloc(m, (int32_t)rounded, &s);
        if (st != SV_OK) return st;
        m->decoder = s;
    }
    s->busy = 1;
    s->n_past = 0;
    return SV_OK;
}

void sv_decoder_end(sv_model *m) {
    if (m->decoder) m->decoder->busy = 0;
}

int64_t sv_decoder_state_bytes(const sv_model *m) { return m && m->decoder ? m->decoder->bytes : 0; }

/* ---- the layers ---- */

/* Rotates pairs (i, i + half) of each head of rows[n, n_heads * head_dim] by
 * the angles in cos/sin [n, half] (transformers' rotate_half convention). */
static void apply_rope(float *rows, int64_t n, int64_t n_heads, int64_t hd, const float *cos, const float *sin) {
    int64_t half = hd / 2;
    for (int64_t i = 0; i < n; i++) {
        const float *ci = cos + i * half, *si = sin + i * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *x = rows + (i * n_heads + h) * hd;
            for (int64_t k = 0; k < half; k++) {
                float a = x[k], b = x[k + half];
                x[k] = a * ci[k] - b * si[k];
                x[k + half] = b * ci[k] + a * si[k];
            }
        }
    }
}

typedef struct {
    const sv_config *c;
    sv_decoder *s;
    int64_t layer, n, pos0;
} attention_job;

/* The cache base of (layer, kv head): K rows at k_cache + base, V^T rows at
 * v_cache + base (both regions are capacity * head_dim values). */
static int64_t cache_base(const sv_config *c, const sv_decoder *s, int64_t layer, int64_t kv_head) {
    return (layer * c->text_kv_heads + kv_head) * s->capacity * c->head_dim;
}

/* Decode attention for the single row at pos0, one task per query head:
 * softmax(q K^T / sqrt(hd)) V over the cached positions 0..pos0. */
static void attention_row_task(void *arg, int64_t begin, int64_t end, int thread) {
    const attention_job *j = arg;
    const sv_config *c = j->c;
    sv_decoder *s = j->s;
    int64_t hd = c->head_dim, cap = s->capacity, keys = j->pos0 + 1;
    int64_t group = c->text_heads / c->text_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    float *scores = s->scores + (int64_t)thread * cap;
    for (int64_t h = begin; h < end; h++) {
        int64_t base = cache_base(c, s, j->layer, h / group);
        const float *q = s->q + h * hd;
        if (s->kv_bf16) {
            const uint16_t *K = (const uint16_t *)s->k_cache + base, *Vt = (const uint16_t *)s->v_cache + base;
            sv_dot_rows_bf16(scores, q, K, keys, hd, hd, scale);
            sv_softmax(scores, keys);
            sv_dot_rows_bf16(s->att + h * hd, scores, Vt, hd, keys, cap, 1.0f);
        } else {
            const float *K = (const float *)s->k_cache + base, *Vt = (const float *)s->v_cache + base;
            sv_dot_rows(scores, q, K, keys, hd, hd, scale);
            sv_softmax(scores, keys);
            sv_dot_rows(s->att + h * hd, scores, Vt, hd, keys, cap, 1.0f);
        }
    }
}

/* Chunk attention, softmax step: row r of group_scores [group * n, keys] is
 * query row r % n, which sees keys 0..pos0 + r % n (causal); the rest is 0. */
static void causal_softmax_task(void *arg, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const attention_job *j = arg;
    int64_t keys = j->pos0 + j->n;
    float scale = 1.0f / sqrtf((float)j->c->head_dim);
    for (int64_t r = begin; r < end; r++) {
        float *row = j->s->group_scores + r * keys;
        int64_t seen = j->pos0 + r % j->n + 1;
        for (int64_t p = 0; p < seen; p++) row[p] *= scale;
        sv_softmax(row, seen);
        memset(row + seen, 0, (size_t)(keys - seen) * sizeof *row);
    }
}

/* Chunk attention.  With the BF16 cache, sv_attention_bf16 (all heads in two pool runs).  Else, for
 * each KV head, its group's queries at once as scores = Q K^T and out = P V, two fp32 matmuls over the
 * keys 0..pos0+n. */
static void attention_chunk(sv_model *m, int64_t layer, int64_t n, int64_t pos0) {
    const sv_config *c = &m->cfg;
    sv_decoder *s = m->decoder;
    int64_t hd = c->head_dim, qd = (int64_t)c->text_heads * hd, cap = s->capacity;
    int64_t group = c->text_heads / c->text_kv_heads, keys = pos0 + n, rows = group * n;
    if (s->attn) {
        sv_attention_shape shape = {n, keys, c->text_heads, c->text_kv_heads, hd, 1, 1.0f / sqrtf((float)hd)};
        const uint16_t *k = (const uint16_t *)s->k_cache + cache_base(c, s, layer, 0);
        const uint16_t *vt = (const uint16_t *)s->v_cache + cache_base(c, s, layer, 0);
        sv_attention_operands o = {s->q, qd, s->att, qd, k, cap * hd, hd, vt, cap * hd, cap};
        sv_attention_bf16(m->pool, s->attn, &shape, &o);
        return;
    }
    attention_job job = {c, s, layer, n, pos0};
    size_t head_bytes = (size_t)hd * sizeof(float);
    for (int64_t kvh = 0; kvh < c->text_kv_heads; kvh++) {
        int64_t base = cache_base(c, s, layer, kvh);
        for (int64_t g = 0; g < group; g++)
            for (int64_t i = 0; i < n; i++)
                memcpy(s->group_q + (g * n + i) * hd, s->q + i * qd + (kvh * group + g) * hd, head_bytes);
        size_t kv_bytes = s->kv_bf16 ? sizeof(uint16_t) : sizeof(float);
        st_dtype kv_dtype = s->kv_bf16 ? ST_BF16 : ST_F32;
        sv_matrix K = {(const char *)s->k_cache + base * kv_bytes, kv_dtype, keys, hd};
        sv_matmul(m->pool, s->group_scores, s->group_q, rows, &K, NULL);
        sv_pool_run(m->pool, causal_softmax_task, &job, rows);
        for (int64_t k = 0; k < hd; k++)
            memcpy((char *)s->v_keys + k * keys * kv_bytes, (const char *)s->v_cache + (base + k * cap) * kv_bytes,
                   (size_t)keys * kv_bytes);
        sv_matrix Vt = {s->v_keys, kv_dtype, hd, keys};
        sv_matmul(m->pool, s->group_out, s->group_scores, rows, &Vt, NULL);
        for (int64_t g = 0; g < group; g++)
            for (int64_t i = 0; i < n; i++)
                memcpy(s->att + i * qd + (kvh * group + g) * hd, s->group_out + (g * n + i) * hd, head_bytes);
    }
}

/* The row-wise work between the matmuls, split over the pool by rows of the chunk. */
typedef struct {
    sv_model *m;
    int64_t layer, pos0;
    const float *norm; /* norm_task's weights */
} rows_job;

static void norm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_decoder *s = j->m->decoder;
    int64_t d = j->m->cfg.text_hidden;
    sv_rmsnorm(s->xn + begin * d, s->x + begin * d, j->norm, end - begin, d, (float)j->m->cfg.rms_norm_eps);
}

static void residual_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_decoder *s = j->m->decoder;
    int64_t d = j->m->cfg.text_hidden;
    sv_add(s->x + begin * d, s->xn + begin * d, (end - begin) * d);
}

static void silu_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_decoder *s = j->m->decoder;
    int64_t f = j->m->cfg.text_intermediate;
    sv_silu_mul(s->gate + begin * f, s->up + begin * f, (end - begin) * f);
}

/* RoPE on rows [begin, end) of q and k, then their keys and values into the cache. */
static void rope_cache_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    const sv_config *c = &j->m->cfg;
    sv_decoder *s = j->m->decoder;
    int64_t hd = c->head_dim, half = hd / 2, kvh = c->text_kv_heads, kvd = kvh * hd, cap = s->capacity;
    int64_t n = end - begin, qd = (int64_t)c->text_heads * hd;
    apply_rope(s->q + begin * qd, n, c->text_heads, hd, s->cos + begin * half, s->sin + begin * half);
    apply_rope(s->k + begin * kvd, n, kvh, hd, s->cos + begin * half, s->sin + begin * half);
    for (int64_t h = 0; h < kvh; h++) {
        int64_t base = cache_base(c, s, j->layer, h);
        for (int64_t i = begin; i < end; i++) {
            const float *k = s->k + i * kvd + h * hd, *v = s->v + i * kvd + h * hd;
            int64_t pos = j->pos0 + i;
            if (s->kv_bf16) {
                uint16_t *kc = (uint16_t *)s->k_cache + base, *vc = (uint16_t *)s->v_cache + base;
                sv_to_bf16(kc + pos * hd, k, hd);
                uint16_t vb[64]; /* v rounded a block at a time, then scattered into its column */
                for (int64_t e0 = 0; e0 < hd; e0 += 64) {
                    int64_t len = hd - e0 < 64 ? hd - e0 : 64;
                    sv_to_bf16(vb, v + e0, len);
                    for (int64_t e = 0; e < len; e++) vc[(e0 + e) * cap + pos] = vb[e];
                }
            } else {
                float *kc = (float *)s->k_cache + base, *vc = (float *)s->v_cache + base;
                memcpy(kc + pos * hd, k, (size_t)hd * sizeof(float));
                for (int64_t e = 0; e < hd; e++) vc[e * cap + pos] = v[e];
            }
        }
    }
}

/* Runs the embedded rows s->x[n, hidden] at positions pos0.. through every
 * layer, appending their keys and values to the cache; s->x ends up holding
 * the last layer's output. */
static void forward_rows(sv_model *m, int64_t n, int64_t pos0) {
    const sv_config *c = &m->cfg;
    sv_decoder *s = m->decoder;
    int64_t half = c->head_dim / 2;

    for (int64_t i = 0; i < n; i++) {
        float position = (float)(pos0 + i);
        for (int64_t k = 0; k < half; k++) {
            float angle = position * s->inv_freq[k]; /* a float32 product, as in the reference */
            s->cos[i * half + k] = cosf(angle);
            s->sin[i * half + k] = sinf(angle);
        }
    }

    sv_profile *prof = m->profile;
    for (int64_t l = 0; l < c->text_layers; l++) {
        const text_layer *w = &m->text.layers[l];
        rows_job rows = {m, l, pos0, w->attn_norm};
        double t = sv_profile_now(prof);
        sv_pool_run(m->pool, norm_task, &rows, n);
        sv_profile_add(prof, SV_OP_NORM, t);
        t = sv_profile_now(prof);
        sv_matmul(m->pool, s->q, s->xn, n, &w->q, w->q_b);
        sv_matmul(m->pool, s->k, s->xn, n, &w->k, w->k_b);
        sv_matmul(m->pool, s->v, s->xn, n, &w->v, w->v_b);
        sv_profile_add(prof, SV_OP_MATMUL, t);
        sv_pool_run(m->pool, rope_cache_task, &rows, n);
        t = sv_profile_now(prof);
        if (n == 1) {
            attention_job job = {c, s, l, n, pos0};
            sv_pool_run(m->pool, attention_row_task, &job, c->text_heads);
        } else {
            attention_chunk(m, l, n, pos0);
        }
        sv_profile_add(prof, SV_OP_ATTENTION, t);
        t = sv_profile_now(prof);
        sv_matmul(m->pool, s->xn, s->att, n, &w->o, w->o_b);
        sv_profile_add(prof, SV_OP_MATMUL, t);
        sv_pool_run(m->pool, residual_task, &rows, n);

        rows.norm = w->mlp_norm;
        t = sv_profile_now(prof);
        sv_pool_run(m->pool, norm_task, &rows, n);
        sv_profile_add(prof, SV_OP_NORM, t);
        t = sv_profile_now(prof);
        sv_matmul(m->pool, s->gate, s->xn, n, &w->gate, w->gate_b);
        sv_matmul(m->pool, s->up, s->xn, n, &w->up, w->up_b);
        sv_profile_add(prof, SV_OP_MATMUL, t);
        t = sv_profile_now(prof);
        sv_pool_run(m->pool, silu_task, &rows, n);
        sv_profile_add(prof, SV_OP_ACTIVATION, t);
        t = sv_profile_now(prof);
        sv_matmul(m->pool, s->xn, s->gate, n, &w->down, w->down_b);
        sv_profile_add(prof, SV_OP_MATMUL, t);
        sv_pool_run(m->pool, residual_task, &rows, n);
    }
}

/* logits = lm_head(norm(row)) for the residual row s->x[row]. */
static const float *project_row(sv_model *m, int64_t row) {
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    double t = sv_profile_now(m->profile);
    sv_rmsnorm(s->xn, s->x + row * d, m->text.norm, 1, d, (float)m->cfg.rms_norm_eps);
    sv_matmul(m->pool, s->logits, s->xn, 1, &m->text.lm_head, NULL);
    sv_profile_add(m->profile, SV_OP_LM_HEAD, t);
    return s->logits;
}

const float *sv_decoder_prefill(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds) {
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    int64_t next_image_row = 0, rows = 0;
    sv_profile_phase_begin(m->profile, SV_PHASE_PREFILL);
    s->n_past = 0;
    /* Equal chunks: every chunk streams (and packs) all the weights once, so a short remnant chunk
     * would cost nearly as much as a full one. */
    int64_t chunks = (n + s->chunk - 1) / s->chunk, per_chunk = (n + chunks - 1) / chunks;
    for (int64_t start = 0; start < n; start += rows) {
        rows = n - start < per_chunk ? n - start : per_chunk;
        for (int64_t i = 0; i < rows; i++) {
            int32_t id = ids[start + i];
            if (id == m->cfg.image_token_id)
                memcpy(s->x + i * d, image_embeds + next_image_row++ * d, (size_t)d * sizeof(float));
            else
                sv_matrix_row(s->x + i * d, &m->text.embed, id);
        }
        forward_rows(m, rows, start);
    }
    s->n_past = n;
    const float *logits = project_row(m, rows - 1);
    sv_profile_phase_end(m->profile);
    return logits;
}

const float *sv_decoder_step(sv_model *m, int32_t id) {
    sv_decoder *s = m->decoder;
    sv_profile_phase_begin(m->profile, SV_PHASE_DECODE);
    sv_matrix_row(s->x, &m->text.embed, id);
    forward_rows(m, 1, s->n_past);
    s->n_past++;
    const float *logits = project_row(m, 0);
    sv_profile_phase_end(m->profile);
    return logits;
}

sv_status sv_logits(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds, int32_t n_image_rows,
                    float *out_logits) {
    sv_clear_error();
    if (!m || !out_logits) return sv_fail(SV_ERR_ARG, "sv_logits: model and out_logits must not be NULL");
    sv_status st = sv_decoder_check_prompt(m, ids, n, image_embeds, n_image_rows, 0);
    if (st == SV_OK) st = sv_decoder_begin(m, n);
    if (st != SV_OK) return st;
    const float *logits = sv_decoder_prefill(m, ids, n, image_embeds);
    memcpy(out_logits, logits, (size_t)m->cfg.vocab_size * sizeof(float));
    sv_decoder_end(m);
    return SV_OK;
}
