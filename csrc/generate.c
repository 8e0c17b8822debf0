/* generate.c - the token loop: prefill the prompt, then pick an id, report
 * it, stop on EOS / max_tokens / the callback, and feed it back. */
#include <string.h>

#include "decoder.h"
#include "error.h"
#include "profile.h"
#include "sample.h"

static int is_eos(const sv_sampling *s, int32_t id) {
    for (int32_t i = 0; i < s->n_eos_ids; i++)
        if (s->eos_ids[i] == id) return 1;
    return 0;
}

/* The token loop on seq (the model marked busy, the prompt checked): appends ids[n] to it, then
 * generates; every generated id but the last is appended too. */
static sv_status generate_on(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                             const sv_sampling *s, sv_token_fn on_token, void *user, int32_t *out_ids,
                             sv_generate_result *result) {
    sv_sampler smp;
    sv_status st = sv_sampler_init(&smp, s, m->cfg.vocab_size);
    if (st != SV_OK) return st;
    /* The last id is never fed back, so the sequence needs n + max_tokens - 1 more positions: reserved
     * up front, so the loop never reallocates. */
    st = sv_seq_grow(seq, seq->n + n + s->max_tokens - 1);
    if (st != SV_OK) {
        sv_sampler_free(&smp);
        return st;
    }
    /* The repetition penalty sees the whole prompt: what the sequence holds, then the new ids. */
    for (int32_t i = 0; i < seq->n; i++) sv_sampler_observe(&smp, seq->tokens[i]);
    for (int32_t i = 0; i < n; i++) sv_sampler_observe(&smp, ids[i]);

    double t0 = sv_seconds();
    /* The sampler rewrites the logits in place; they are the scratch's buffer,
     * which the next step overwrites anyway. */
    const float *logits = NULL;
    st = sv_decoder_prefill(m, seq, ids, n, image_embeds, &logits);
    double t1 = sv_seconds();
    result->prefill_seconds = t1 - t0;
    for (int32_t g = 0; st == SV_OK; g++) {
        int32_t id = sv_sampler_pick(&smp, (float *)logits);
        sv_sampler_observe(&smp, id);
        if (out_ids) out_ids[g] = id;
        result->n_generated = g + 1;
        if (on_token && on_token(user, id) != 0) {
            result->finish_reason = SV_FINISH_CANCELLED;
            break;
        }
        if (is_eos(s, id)) {
            result->finish_reason = SV_FINISH_STOP;
            break;
        }
        if (g + 1 == s->max_tokens) break;
        st = sv_decoder_decode(m, &seq, 1, &id, NULL, &logits);
    }
    result->decode_seconds = sv_seconds() - t1;
    sv_sampler_free(&smp);
    return st;
}

/* The checks both entry points make; result is reset. */
static sv_status check_generate(sv_model *m, int32_t already, const int32_t *ids, int32_t n,
                                const float *image_embeds, int32_t n_image_rows, const sv_sampling *s,
                                sv_generate_result *result, const char *call) {
    if (!m || !s || !result) return sv_fail(SV_ERR_ARG, "%s: model, sampling and result must not be NULL", call);
    memset(result, 0, sizeof *result);
    result->finish_reason = SV_FINISH_LENGTH;
    result->n_prompt = already + n;
    sv_sampler smp; /* the sampling options are checked first, as they always were */
    sv_status st = sv_sampler_init(&smp, s, m->cfg.vocab_size);
    if (st != SV_OK) return st;
    sv_sampler_free(&smp);
    st = sv_decoder_check_prompt(m, ids, n, image_embeds, n_image_rows, s->max_tokens);
    if (st == SV_OK && (int64_t)already + n + s->max_tokens > m->cfg.max_position_embeddings)
        st = sv_fail(SV_ERR_ARG, "the sequence's %d tokens plus %d more plus max_tokens %d exceed the model's "
                                 "context of %d positions (max_position_embeddings)",
                     already, n, s->max_tokens, m->cfg.max_position_embeddings);
    return st;
}

sv_status sv_generate(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds, int32_t n_image_rows,
                      const sv_sampling *s, sv_token_fn on_token, void *user, int32_t *out_ids,
                      sv_generate_result *result) {
    sv_clear_error();
    sv_status st = check_generate(m, 0, ids, n, image_embeds, n_image_rows, s, result, "sv_generate");
    if (st != SV_OK || s->max_tokens == 0) return st;
    st = sv_decoder_begin(m);
    if (st != SV_OK) return st;
    sv_seq *seq = NULL;
    st = sv_decoder_oneshot(m, &seq);
    if (st == SV_OK) st = generate_on(m, seq, ids, n, image_embeds, s, on_token, user, out_ids, result);
    sv_decoder_end(m);
    return st;
}

sv_status sv_seq_generate(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                          int32_t n_image_rows, const sv_sampling *s, sv_token_fn on_token, void *user,
                          int32_t *out_ids, sv_generate_result *result) {
    sv_clear_error();
    if (!seq) return sv_fail(SV_ERR_ARG, "sv_seq_generate: the sequence must not be NULL");
    if (m && seq->model != m)
        return sv_fail(SV_ERR_ARG, "sv_seq_generate: this sequence belongs to another model (a sequence runs only "
                                   "with the model that created it)");
    sv_status st = check_generate(m, seq->n, ids, n, image_embeds, n_image_rows, s, result, "sv_seq_generate");
    if (st != SV_OK || s->max_tokens == 0) return st;
    st = sv_decoder_begin(m);
    if (st != SV_OK) return st;
    st = generate_on(m, seq, ids, n, image_embeds, s, on_token, user, out_ids, result);
    sv_decoder_end(m);
    return st;
}

sv_status sv_debug_logits_steps(sv_model *m, const int32_t *ids, int32_t n_prompt, int32_t n, float *out_logits) {
    sv_clear_error();
    if (!m || !ids || !out_logits || n_prompt < 1 || n < n_prompt)
        return sv_fail(SV_ERR_ARG, "sv_debug_logits_steps: bad arguments (n_prompt %d, n %d)", n_prompt, n);
    sv_status st = sv_decoder_check_prompt(m, ids, n, NULL, 0, 0);
    if (st == SV_OK) st = sv_decoder_begin(m);
    if (st != SV_OK) return st;
    size_t vocab = (size_t)m->cfg.vocab_size;
    sv_seq *seq = NULL;
    const float *logits = NULL;
    st = sv_decoder_oneshot(m, &seq);
    if (st == SV_OK) st = sv_seq_grow(seq, n);
    if (st == SV_OK) st = sv_decoder_prefill(m, seq, ids, n_prompt, NULL, &logits);
    if (st == SV_OK) memcpy(out_logits, logits, vocab * sizeof(float));
    for (int32_t i = n_prompt; st == SV_OK && i < n; i++) {
        st = sv_decoder_decode(m, &seq, 1, ids + i, NULL, &logits);
        if (st == SV_OK) memcpy(out_logits + (size_t)(i - n_prompt + 1) * vocab, logits, vocab * sizeof(float));
    }
    sv_decoder_end(m);
    return st;
}
