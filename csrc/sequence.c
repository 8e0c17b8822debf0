/* sequence.c - sv_seq: what one context computed (decoder.h), kept so that it
 * can be extended, truncated back to a prefix and resumed.  The forward
 * passes that fill it are in decoder.c. */
#include <stdlib.h>
#include <string.h>

#include "decoder.h"
#include "error.h"

sv_status sv_seq_create(sv_model *m, sv_seq **out) {
    sv_clear_error();
    if (!m || !out) return sv_fail(SV_ERR_ARG, "sv_seq_create: model and out must not be NULL");
    sv_seq *seq = calloc(1, sizeof *seq);
    if (!seq) return sv_fail(SV_ERR_NOMEM, "out of memory allocating a sequence");
    const sv_config *c = &m->cfg;
    seq->model = m;
    /* The cache's dtype: BF16 in precision "bf16" with BF16 or quantized weights (sv_kv_in_bf16).  No
     * positions until the first prefill grows it. */
    seq->cache = (sv_kv_cache){c->text_layers, c->text_kv_heads, c->head_dim, 0,
                               sv_kv_in_bf16(&m->ctx, m->text.layers[0].q.dtype), NULL, NULL};
    *out = seq;
    return SV_OK;
}

void sv_seq_free(sv_seq *seq) {
    if (!seq) return;
    sv_kv_cache_free(&seq->cache);
    free(seq->tokens);
    free(seq);
}

sv_status sv_seq_grow(sv_seq *seq, int32_t positions) {
    if (positions <= seq->cache.capacity) return SV_OK;
    int32_t limit = seq->model->cfg.max_position_embeddings;
    int64_t rounded = ((int64_t)positions + SV_CAPACITY_STEP - 1) / SV_CAPACITY_STEP * SV_CAPACITY_STEP;
    if (rounded > limit) rounded = limit;
    if (rounded < positions) rounded = positions;
    int64_t per_position = seq->cache.layers * 2 * seq->cache.kv_heads * seq->cache.head_dim *
                           (int64_t)(seq->cache.bf16 ? 2 : 4);
    /* The token history first: a larger one than the cache is harmless if the cache cannot grow. */
    int32_t *tokens = realloc(seq->tokens, (size_t)rounded * sizeof *tokens);
    if (!tokens)
        return sv_fail(SV_ERR_NOMEM, "out of memory growing a sequence's token history to %lld positions",
                       (long long)rounded);
    seq->tokens = tokens;
    int ok;
    if (seq->n == 0) { /* nothing to keep: the old cache goes first so the two never coexist at the peak */
        sv_kv_cache_free(&seq->cache);
        seq->cache.capacity = 0;
        sv_kv_cache empty = seq->cache;
        empty.capacity = rounded;
        ok = 0;
        size_t bytes = (size_t)(sv_kv_cache_bytes(&empty) / 2);
        empty.k = malloc(bytes);
        empty.vt = malloc(bytes);
        if (empty.k && empty.vt) {
            seq->cache = empty;
            ok = 1;
        } else {
            free(empty.k);
            free(empty.vt);
        }
    } else {
        ok = sv_kv_cache_grow(&seq->cache, rounded, seq->n);
    }
    if (!ok)
        return sv_fail(SV_ERR_NOMEM, "out of memory growing a sequence's KV cache to %lld positions (%.1f MiB)",
                       (long long)rounded, (double)(rounded * per_position) / (1 << 20));
    return SV_OK;
}

sv_status sv_seq_reserve(sv_seq *seq, int32_t positions) {
    sv_clear_error();
    if (!seq) return sv_fail(SV_ERR_ARG, "sv_seq_reserve: the sequence must not be NULL");
    if (positions < 0 || positions > seq->model->cfg.max_position_embeddings)
        return sv_fail(SV_ERR_ARG, "sv_seq_reserve: %d positions is outside [0, %d] (max_position_embeddings)",
                       positions, seq->model->cfg.max_position_embeddings);
    return sv_seq_grow(seq, positions);
}

sv_status sv_seq_truncate(sv_seq *seq, int32_t n) {
    sv_clear_error();
    if (!seq) return sv_fail(SV_ERR_ARG, "sv_seq_truncate: the sequence must not be NULL");
    if (n < 0 || n > seq->n)
        return sv_fail(SV_ERR_ARG, "sv_seq_truncate: cannot truncate a sequence of %d tokens to %d (must be in "
                                   "[0, %d])", seq->n, n, seq->n);
    seq->n = n; /* positions beyond n are overwritten by whatever is appended next */
    return SV_OK;
}

int32_t sv_seq_length(const sv_seq *seq) { return seq ? seq->n : 0; }

const int32_t *sv_seq_tokens(const sv_seq *seq) { return seq ? seq->tokens : NULL; }

int32_t sv_seq_capacity(const sv_seq *seq) { return seq ? (int32_t)seq->cache.capacity : 0; }

int64_t sv_seq_bytes(const sv_seq *seq) {
    if (!seq) return 0;
    return sv_kv_cache_bytes(&seq->cache) + (int64_t)seq->cache.capacity * (int64_t)sizeof *seq->tokens;
}

int64_t sv_seq_bytes_per_token(const sv_model *m) {
    if (!m) return 0;
    const sv_config *c = &m->cfg;
    int bf16 = sv_kv_in_bf16(&m->ctx, m->text.layers[0].q.dtype);
    return (int64_t)c->text_layers * 2 * c->text_kv_heads * c->head_dim * (bf16 ? 2 : 4) + (int64_t)sizeof(int32_t);
}
