/* decoder.c - the Llama text decoder: token (and image) embeddings, N layers
 * of RMSNorm -> attention with RoPE over a KV cache -> RMSNorm -> SwiGLU MLP,
 * the final norm and the LM head.
 *
 * Prompts run in equal chunks of at most PREFILL_CHUNK rows: each chunk goes
 * through all layers with batched matmuls, its keys and values are appended
 * to the cache, and its queries attend causally to everything cached
 * (kernels/attention.c: GEMMs over each KV head's group of query heads; a
 * single decoded row takes dot products instead).  So the scratch is
 * O(chunk * (width + context)) and no [n, n] score matrix ever exists.
 *
 * When the matmuls run in BF16 (precision "bf16" with BF16 or quantized
 * weights on a CPU with AVX512_BF16) the cache holds BF16, as transformers'
 * BF16 run does: half the memory, and half the bytes each decoded token reads
 * from a long context. */
#include "decoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kernels.h"

#define PREFILL_CHUNK 512
/* Capacities are rounded up to this many positions so that a chat whose
 * context grows by a few tokens per turn does not reallocate every call. */
#define CAPACITY_STEP 256

struct sv_decoder {
    int32_t capacity;     /* positions the KV cache holds */
    int32_t chunk;        /* rows the prefill scratch holds */
    int32_t n_past;       /* positions now in the cache */
    int busy;
    sv_kv_cache cache;
    sv_cached_attention *attention; /* its workspace */
    /* scratch, one block starting at x: */
    float *x;             /* [chunk, hidden]: the residual stream */
    float *xn;            /* [chunk, hidden]: normed input / projection output */
    float *q;             /* [chunk, heads * head_dim] */
    float *k, *v;         /* [chunk, kv_heads * head_dim] */
    float *att;           /* [chunk, heads * head_dim]: attention output */
    float *gate, *up;     /* [chunk, intermediate] */
    float *cos, *sin;     /* [chunk, head_dim / 2] */
    float *inv_freq;      /* [head_dim / 2] */
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
    sv_kv_cache_free(&d->cache);
    sv_cached_attention_free(d->attention);
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
    int64_t ch = s->chunk;
    /* The scratch is one block (freed through x), carved in this order. */
    struct {
        float **slot;
        int64_t floats;
    } scratch[] = {{&s->x, ch * d},      {&s->xn, ch * d},       {&s->q, ch * qd},   {&s->k, ch * kvd},
                   {&s->v, ch * kvd},    {&s->att, ch * qd},     {&s->gate, ch * f}, {&s->up, ch * f},
                   {&s->cos, ch * half}, {&s->sin, ch * half},   {&s->inv_freq, half},
                   {&s->logits, c->vocab_size}};
    enum { SLOTS = sizeof scratch / sizeof scratch[0] };
    int64_t scratch_floats = 0;
    for (int i = 0; i < SLOTS; i++) scratch_floats += scratch[i].floats;
    float *block = malloc((size_t)scratch_floats * sizeof(float));
    s->x = block;
    /* The cache's dtype follows the weights' products: BF16 weights, or quantized ones (their prompts run
     * the BF16 GEMM too), in precision "bf16". */
    int ok = block && sv_kv_cache_init(&s->cache, &m->ctx, m->text.layers[0].q.dtype, c->text_layers,
                                       c->text_kv_heads, hd, capacity);
    if (ok) s->attention = sv_cached_attention_new(&m->ctx, &s->cache, c->text_heads, ch);
    if (!ok || !s->attention) {
        int64_t cache_bytes = (int64_t)c->text_layers * kvd * capacity * 2 * (int64_t)sizeof(float);
        sv_decoder_free(s);
        return sv_fail(SV_ERR_NOMEM, "out of memory allocating %.1f MiB of decoder state for %d positions",
                       (double)(scratch_floats * (int64_t)sizeof(float) + cache_bytes) / (1 << 20), capacity);
    }
    for (int i = 0; i < SLOTS; i++) {
        *scratch[i].slot = block;
        block += scratch[i].floats;
    }
    s->bytes = scratch_floats * (int64_t)sizeof(float) + sv_kv_cache_bytes(&s->cache) +
               sv_cached_attention_bytes(s->attention);
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

/* cos, sin [n, head_dim / 2] of the RoPE angles of positions pos0 .. pos0 + n - 1. */
static void rope_angles(sv_decoder *s, int64_t half, int64_t n, int64_t pos0) {
    for (int64_t i = 0; i < n; i++) {
        float position = (float)(pos0 + i);
        for (int64_t k = 0; k < half; k++) {
            float angle = position * s->inv_freq[k]; /* a float32 product, as in the reference */
            s->cos[i * half + k] = cosf(angle);
            s->sin[i * half + k] = sinf(angle);
        }
    }
}

/* Runs the embedded rows s->x[n, hidden] at positions pos0.. through every
 * layer, appending their keys and values to the cache; s->x ends up holding
 * the last layer's output. */
static void forward_rows(sv_model *m, int64_t n, int64_t pos0) {
    const sv_config *c = &m->cfg;
    const sv_ctx *ctx = &m->ctx;
    sv_decoder *s = m->decoder;
    int64_t d = c->text_hidden, f = c->text_intermediate, hd = c->head_dim;
    float eps = (float)c->rms_norm_eps;
    rope_angles(s, hd / 2, n, pos0);
    for (int64_t l = 0; l < c->text_layers; l++) {
        const text_layer *w = &m->text.layers[l];
        sv_rmsnorm_rows(ctx, s->xn, s->x, w->attn_norm, n, d, eps);
        sv_matmul(ctx, s->q, s->xn, n, &w->q, w->q_b);
        sv_matmul(ctx, s->k, s->xn, n, &w->k, w->k_b);
        sv_matmul(ctx, s->v, s->xn, n, &w->v, w->v_b);
        sv_rope_rows(ctx, s->q, n, c->text_heads, hd, s->cos, s->sin);
        sv_rope_rows(ctx, s->k, n, c->text_kv_heads, hd, s->cos, s->sin);
        sv_kv_cache_store(ctx, &s->cache, l, pos0, s->k, s->v, n);
        sv_attend_cache(ctx, s->attention, &s->cache, l, s->att, s->q, n, pos0);
        sv_matmul(ctx, s->xn, s->att, n, &w->o, w->o_b);
        sv_add_rows(ctx, s->x, s->xn, n, d);

        sv_rmsnorm_rows(ctx, s->xn, s->x, w->mlp_norm, n, d, eps);
        sv_matmul(ctx, s->gate, s->xn, n, &w->gate, w->gate_b);
        sv_matmul(ctx, s->up, s->xn, n, &w->up, w->up_b);
        sv_silu_mul_rows(ctx, s->gate, s->up, n, f);
        sv_matmul(ctx, s->xn, s->gate, n, &w->down, w->down_b);
        sv_add_rows(ctx, s->x, s->xn, n, d);
    }
}

/* logits = lm_head(norm(row)) for the residual row s->x[row]. */
static const float *project_row(sv_model *m, int64_t row) {
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    sv_ctx head = m->ctx;
    head.timed_as = SV_OP_LM_HEAD; /* the final norm and the head count as one class */
    sv_rmsnorm_rows(&head, s->xn, s->x + row * d, m->text.norm, 1, d, (float)m->cfg.rms_norm_eps);
    sv_matmul(&head, s->logits, s->xn, 1, &m->text.lm_head, NULL);
    return s->logits;
}

const float *sv_decoder_prefill(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds) {
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    int64_t next_image_row = 0, rows = 0;
    sv_profile_phase_begin(m->ctx.profile, SV_PHASE_PREFILL);
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
    sv_profile_phase_end(m->ctx.profile);
    return logits;
}

const float *sv_decoder_step(sv_model *m, int32_t id) {
    sv_decoder *s = m->decoder;
    sv_profile_phase_begin(m->ctx.profile, SV_PHASE_DECODE);
    sv_matrix_row(s->x, &m->text.embed, id);
    forward_rows(m, 1, s->n_past);
    s->n_past++;
    const float *logits = project_row(m, 0);
    sv_profile_phase_end(m->ctx.profile);
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
