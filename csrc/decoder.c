/* decoder.c - the Llama text decoder: token (and image) embeddings, N layers
 * of RMSNorm -> attention with RoPE over a KV cache -> RMSNorm -> SwiGLU MLP,
 * the final norm and the LM head, run on sequences (decoder.h: sv_seq).
 *
 * Prompts run in equal chunks of at most SV_PREFILL_CHUNK rows: each chunk
 * goes through all layers with batched matmuls, its keys and values are
 * appended to its sequence's cache, and its queries attend causally to
 * everything cached (kernels/attention.c: GEMMs over each KV head's group of
 * query heads).  A decode pass carries one row per sequence: the rows go
 * through each matmul together, so the weights are read once for all of them,
 * and each row attends to its own sequence's cache (single rows take dot
 * products).  So the scratch is O(rows * (width + context)) and no [n, n]
 * score matrix ever exists.
 *
 * When the matmuls run in BF16 (precision "bf16" with BF16 or quantized
 * weights on a CPU with AVX512_BF16) the caches hold BF16, as transformers'
 * BF16 run does: half the memory, and half the bytes each decoded token reads
 * from a long context. */
#include "decoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kernels.h"

/* The model's shared scratch: what one pass needs beyond its sequences' caches. */
struct sv_decoder {
    int32_t rows;         /* rows one pass may carry */
    int32_t capacity;     /* the largest cache the attention workspace serves */
    sv_cached_attention *attention; /* its workspace */
    int64_t *pos;         /* [rows]: each row's position */
    sv_kv_cache **caches; /* [rows]: each row's cache (decode passes) */
    /* scratch, one block starting at x: */
    float *x;             /* [rows, hidden]: the residual stream */
    float *xn;            /* [rows, hidden]: normed input / projection output */
    float *q;             /* [rows, heads * head_dim] */
    float *k, *v;         /* [rows, kv_heads * head_dim] */
    float *att;           /* [rows, heads * head_dim]: attention output */
    float *gate, *up;     /* [rows, intermediate] */
    float *cos, *sin;     /* [rows, head_dim / 2] */
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
    sv_cached_attention_free(d->attention);
    free(d->pos);
    free(d->caches);
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

static sv_status scratch_alloc(sv_model *m, int32_t rows, int32_t capacity, sv_decoder **out) {
    const sv_config *c = &m->cfg;
    int64_t hd = c->head_dim, half = hd / 2, qd = (int64_t)c->text_heads * hd;
    int64_t kvd = (int64_t)c->text_kv_heads * hd, d = c->text_hidden, f = c->text_intermediate;
    sv_decoder *s = calloc(1, sizeof *s);
    if (!s) return sv_fail(SV_ERR_NOMEM, "out of memory allocating the decoder state");
    s->rows = rows;
    s->capacity = capacity;
    int64_t ch = rows;
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
    s->pos = malloc((size_t)rows * sizeof *s->pos);
    s->caches = malloc((size_t)rows * sizeof *s->caches);
    /* The attention workspace serves every cache of this model's layout up to `capacity` positions. */
    sv_kv_cache layout;
    int ok = block && s->pos && s->caches;
    if (ok) {
        layout = (sv_kv_cache){c->text_layers, c->text_kv_heads, hd, capacity,
                               sv_kv_in_bf16(&m->ctx, m->text.layers[0].q.dtype), NULL, NULL};
        s->attention = sv_cached_attention_new(&m->ctx, &layout, c->text_heads, ch);
    }
    if (!ok || !s->attention) {
        sv_decoder_free(s);
        return sv_fail(SV_ERR_NOMEM, "out of memory allocating %.1f MiB of decoder scratch for %d rows and %d positions",
                       (double)(scratch_floats * (int64_t)sizeof(float)) / (1 << 20), rows, capacity);
    }
    for (int i = 0; i < SLOTS; i++) {
        *scratch[i].slot = block;
        block += scratch[i].floats;
    }
    s->bytes = scratch_floats * (int64_t)sizeof(float) + sv_cached_attention_bytes(s->attention) +
               rows * (int64_t)(sizeof *s->pos + sizeof *s->caches);
    rope_inv_freq(s->inv_freq, c);
    *out = s;
    return SV_OK;
}

/* Makes the scratch carry `rows` rows against caches of up to `capacity` positions.  Rows are rounded
 * up like capacities (a prompt of a few more tokens, or a wider batch, does not reallocate), and both
 * only grow. */
static sv_status scratch_reserve(sv_model *m, int32_t rows, int32_t capacity) {
    sv_decoder *s = m->decoder;
    if (s && s->rows >= rows && s->capacity >= capacity) return SV_OK;
    int64_t want = ((int64_t)rows + SV_CAPACITY_STEP - 1) / SV_CAPACITY_STEP * SV_CAPACITY_STEP;
    if (want > SV_PREFILL_CHUNK) want = SV_PREFILL_CHUNK;
    if (want > m->cfg.max_position_embeddings) want = m->cfg.max_position_embeddings;
    if (want < rows) want = rows;
    if (s && s->rows > want) want = s->rows;
    if (s && s->capacity > capacity) capacity = s->capacity;
    /* The old scratch goes first so the two never coexist at the peak. */
    sv_decoder_free(s);
    m->decoder = NULL;
    return scratch_alloc(m, (int32_t)want, capacity, &m->decoder);
}

sv_status sv_decoder_begin(sv_model *m) {
    if (m->decoder_busy)
        return sv_fail(SV_ERR_ARG, "this model is already running a decoder call (calls must not overlap, "
                                   "e.g. from inside a token callback)");
    m->decoder_busy = 1;
    return SV_OK;
}

void sv_decoder_end(sv_model *m) { m->decoder_busy = 0; }

int64_t sv_decoder_state_bytes(const sv_model *m) {
    if (!m) return 0;
    return (m->decoder ? m->decoder->bytes : 0) + (m->oneshot ? sv_seq_bytes(m->oneshot) : 0);
}

/* ---- the layers ---- */

/* cos, sin [n, head_dim / 2] of the RoPE angles of the rows' positions s->pos[0 .. n). */
static void rope_angles(sv_decoder *s, int64_t half, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float position = (float)s->pos[i];
        for (int64_t k = 0; k < half; k++) {
            float angle = position * s->inv_freq[k]; /* a float32 product, as in the reference */
            s->cos[i * half + k] = cosf(angle);
            s->sin[i * half + k] = sinf(angle);
        }
    }
}

/* Runs the embedded rows s->x[n, hidden] at positions s->pos through every layer, appending their keys
 * and values to the caches; s->x ends up holding the last layer's output.  chunk: the rows are
 * consecutive positions of one cache (a prompt chunk); else row r belongs to s->caches[r] (decode). */
static void forward_rows(sv_model *m, int64_t n, sv_kv_cache *chunk) {
    const sv_config *c = &m->cfg;
    const sv_ctx *ctx = &m->ctx;
    sv_decoder *s = m->decoder;
    int64_t d = c->text_hidden, f = c->text_intermediate, hd = c->head_dim;
    float eps = (float)c->rms_norm_eps;
    rope_angles(s, hd / 2, n);
    if (c->text_layers > 0) sv_rmsnorm_rows(ctx, s->xn, s->x, m->text.layers[0].attn_norm, n, d, eps);
    for (int64_t l = 0; l < c->text_layers; l++) {
        const text_layer *w = &m->text.layers[l]; /* xn holds attn_norm(x) */
        const sv_product qkv[] = {{s->q, &w->q, w->q_b}, {s->k, &w->k, w->k_b}, {s->v, &w->v, w->v_b}};
        sv_matmul_shared(ctx, s->xn, n, qkv, 3);
        sv_rope_rows(ctx, s->q, n, c->text_heads, hd, s->cos, s->sin);
        sv_rope_rows(ctx, s->k, n, c->text_kv_heads, hd, s->cos, s->sin);
        if (chunk) {
            sv_kv_cache_store(ctx, chunk, l, s->pos[0], s->k, s->v, n);
            sv_attend_cache(ctx, s->attention, chunk, l, s->att, s->q, n, s->pos[0]);
        } else {
            sv_kv_cache_store_rows(ctx, s->caches, l, s->pos, s->k, s->v, n);
            sv_attend_cache_rows(ctx, s->attention, (const sv_kv_cache *const *)s->caches, l, s->att, s->q, n, s->pos);
        }
        sv_matmul(ctx, s->xn, s->att, n, &w->o, w->o_b);
        sv_add_rmsnorm_rows(ctx, s->x, s->xn, s->xn, w->mlp_norm, n, d, eps); /* x += attention, xn = norm(x) */
        const sv_product gate_up[] = {{s->gate, &w->gate, w->gate_b}, {s->up, &w->up, w->up_b}};
        sv_matmul_shared(ctx, s->xn, n, gate_up, 2);
        sv_silu_mul_rows(ctx, s->gate, s->up, n, f);
        sv_matmul(ctx, s->xn, s->gate, n, &w->down, w->down_b);
        if (l + 1 < c->text_layers) /* x += mlp, xn = the next layer's attn_norm(x) */
            sv_add_rmsnorm_rows(ctx, s->x, s->xn, s->xn, m->text.layers[l + 1].attn_norm, n, d, eps);
        else
            sv_add_rows(ctx, s->x, s->xn, n, d);
    }
}

/* out[n, vocab] = lm_head(norm(rows)) for the residual rows s->x[first .. first + n). */
static void project_rows(sv_model *m, int64_t first, int64_t n, float *out) {
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    sv_ctx head = m->ctx;
    head.timed_as = SV_OP_LM_HEAD; /* the final norm and the head count as one class */
    sv_rmsnorm_rows(&head, s->xn, s->x + first * d, m->text.norm, n, d, (float)m->cfg.rms_norm_eps);
    sv_matmul(&head, out, s->xn, n, &m->text.lm_head, NULL);
}

sv_status sv_decoder_prefill(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                             const float **logits) {
    /* Equal chunks: every chunk streams (and packs) all the weights once, so a short remnant chunk
     * would cost nearly as much as a full one. */
    int64_t chunks = (n + SV_PREFILL_CHUNK - 1) / SV_PREFILL_CHUNK, per_chunk = (n + chunks - 1) / chunks;
    sv_status st = sv_seq_grow(seq, seq->n + n);
    if (st == SV_OK) st = scratch_reserve(m, (int32_t)per_chunk, (int32_t)seq->cache.capacity);
    if (st != SV_OK) return st;
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    int64_t next_image_row = 0, rows = 0;
    sv_profile_phase_begin(m->ctx.profile, SV_PHASE_PREFILL);
    for (int64_t start = 0; start < n; start += rows) {
        rows = n - start < per_chunk ? n - start : per_chunk;
        for (int64_t i = 0; i < rows; i++) {
            int32_t id = ids[start + i];
            if (id == m->cfg.image_token_id)
                memcpy(s->x + i * d, image_embeds + next_image_row++ * d, (size_t)d * sizeof(float));
            else
                sv_matrix_row(s->x + i * d, &m->text.embed, id);
            s->pos[i] = seq->n + i;
        }
        forward_rows(m, rows, &seq->cache);
        memcpy(seq->tokens + seq->n, ids + start, (size_t)rows * sizeof *ids);
        seq->n += (int32_t)rows;
    }
    project_rows(m, rows - 1, 1, s->logits);
    sv_profile_phase_end(m->ctx.profile);
    *logits = s->logits;
    return SV_OK;
}

sv_status sv_decoder_decode(sv_model *m, sv_seq *const *seqs, int32_t n, const int32_t *ids, float *out,
                            const float **logits) {
    int32_t capacity = 0;
    for (int32_t r = 0; r < n; r++) {
        sv_status st = sv_seq_grow(seqs[r], seqs[r]->n + 1);
        if (st != SV_OK) return st;
        if (seqs[r]->cache.capacity > capacity) capacity = (int32_t)seqs[r]->cache.capacity;
    }
    sv_status st = scratch_reserve(m, n, capacity);
    if (st != SV_OK) return st;
    sv_decoder *s = m->decoder;
    int64_t d = m->cfg.text_hidden;
    sv_profile_phase_begin(m->ctx.profile, SV_PHASE_DECODE);
    for (int32_t r = 0; r < n; r++) {
        sv_matrix_row(s->x + r * d, &m->text.embed, ids[r]);
        s->pos[r] = seqs[r]->n;
        s->caches[r] = &seqs[r]->cache;
    }
    forward_rows(m, n, NULL);
    for (int32_t r = 0; r < n; r++) seqs[r]->tokens[seqs[r]->n++] = ids[r];
    project_rows(m, 0, n, out ? out : s->logits);
    sv_profile_phase_end(m->ctx.profile);
    if (logits) *logits = out ? out : s->logits;
    return SV_OK;
}

/* ---- the public calls ---- */

/* The checks every call running a sequence makes: it exists and belongs to m. */
static sv_status check_seq(const sv_model *m, const sv_seq *seq, const char *call) {
    if (!seq) return sv_fail(SV_ERR_ARG, "%s: the sequence must not be NULL", call);
    if (seq->model != m)
        return sv_fail(SV_ERR_ARG, "%s: this sequence belongs to another model (a sequence runs only with the "
                                   "model that created it)", call);
    return SV_OK;
}

sv_status sv_seq_prefill(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                         int32_t n_image_rows, float *out_logits) {
    sv_clear_error();
    if (!m) return sv_fail(SV_ERR_ARG, "sv_seq_prefill: the model must not be NULL");
    sv_status st = check_seq(m, seq, "sv_seq_prefill");
    if (st == SV_OK) st = sv_decoder_check_prompt(m, ids, n, image_embeds, n_image_rows, 0);
    if (st == SV_OK && (int64_t)seq->n + n > m->cfg.max_position_embeddings)
        st = sv_fail(SV_ERR_ARG, "the sequence's %d tokens plus %d more exceed the model's context of %d positions "
                                 "(max_position_embeddings)", seq->n, n, m->cfg.max_position_embeddings);
    if (st == SV_OK) st = sv_decoder_begin(m);
    if (st != SV_OK) return st;
    const float *logits = NULL;
    st = sv_decoder_prefill(m, seq, ids, n, image_embeds, &logits);
    if (st == SV_OK && out_logits) memcpy(out_logits, logits, (size_t)m->cfg.vocab_size * sizeof(float));
    sv_decoder_end(m);
    return st;
}

sv_status sv_decode_batch(sv_model *m, sv_seq **seqs, int32_t n, const int32_t *ids, float *out_logits) {
    sv_clear_error();
    if (!m || !seqs || !ids || !out_logits)
        return sv_fail(SV_ERR_ARG, "sv_decode_batch: model, seqs, ids and out_logits must not be NULL");
    if (n < 1 || n > SV_PREFILL_CHUNK)
        return sv_fail(SV_ERR_ARG, "sv_decode_batch: n must be in [1, %d], not %d", SV_PREFILL_CHUNK, n);
    for (int32_t r = 0; r < n; r++) {
        sv_status st = check_seq(m, seqs[r], "sv_decode_batch");
        if (st != SV_OK) return st;
        if (ids[r] < 0 || ids[r] >= m->cfg.vocab_size)
            return sv_fail(SV_ERR_ARG, "sv_decode_batch: token id %d of row %d is outside the vocabulary [0, %d)",
                           ids[r], r, m->cfg.vocab_size);
        if (seqs[r]->n + 1 > m->cfg.max_position_embeddings)
            return sv_fail(SV_ERR_ARG, "sv_decode_batch: the sequence of row %d is full (%d positions, "
                                       "max_position_embeddings)", r, seqs[r]->n);
        for (int32_t o = 0; o < r; o++)
            if (seqs[o] == seqs[r])
                return sv_fail(SV_ERR_ARG, "sv_decode_batch: rows %d and %d are the same sequence", o, r);
    }
    sv_status st = sv_decoder_begin(m);
    if (st != SV_OK) return st;
    st = sv_decoder_decode(m, seqs, n, ids, out_logits, NULL);
    sv_decoder_end(m);
    return st;
}

sv_status sv_decoder_oneshot(sv_model *m, sv_seq **out) {
    if (!m->oneshot) {
        sv_status st = sv_seq_create(m, &m->oneshot);
        if (st != SV_OK) return st;
    }
    sv_seq_truncate(m->oneshot, 0);
    *out = m->oneshot;
    return SV_OK;
}

sv_status sv_logits(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds, int32_t n_image_rows,
                    float *out_logits) {
    sv_clear_error();
    if (!m || !out_logits) return sv_fail(SV_ERR_ARG, "sv_logits: model and out_logits must not be NULL");
    sv_status st = sv_decoder_check_prompt(m, ids, n, image_embeds, n_image_rows, 0);
    if (st == SV_OK) st = sv_decoder_begin(m);
    if (st != SV_OK) return st;
    sv_seq *seq = NULL;
    const float *logits = NULL;
    st = sv_decoder_oneshot(m, &seq);
    if (st == SV_OK) st = sv_decoder_prefill(m, seq, ids, n, image_embeds, &logits);
    if (st == SV_OK) memcpy(out_logits, logits, (size_t)m->cfg.vocab_size * sizeof(float));
    sv_decoder_end(m);
    return st;
}
