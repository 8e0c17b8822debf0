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

sv_status sv_generate(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds, int32_t n_image_rows,
                      const sv_sampling *s, sv_token_fn on_token, void *user, int32_t *out_ids,
                      sv_generate_result *result) {
    sv_clear_error();
    if (!m || !s || !result) return sv_fail(SV_ERR_ARG, "sv_generate: model, sampling and result must not be NULL");
    memset(result, 0, sizeof *result);
    result->finish_reason = SV_FINISH_LENGTH;
    result->n_prompt = n;
    sv_sampler smp;
    sv_status st = sv_sampler_init(&smp, s, m->cfg.vocab_size);
    if (st != SV_OK) return st;
    st = sv_decoder_check_prompt(m, ids, n, image_embeds, n_image_rows, s->max_tokens);
    if (st == SV_OK && s->max_tokens > 0) st = sv_decoder_begin(m);
    if (st != SV_OK || s->max_tokens == 0) {
        sv_sampler_free(&smp);
        return st;
    }
    /* The last id is never fed back, so the sequence needs n + max_tokens - 1 positions: reserved
     * up front, so the loop never reallocates. */
    sv_seq *seq = NULL;
    st = sv_decoder_oneshot(m, &seq);
    if (st == SV_OK) st = sv_seq_grow(seq, n + s->max_tokens - 1);
    if (st != SV_OK) {
        sv_decoder_end(m);
        sv_sampler_free(&smp);
        return st;
    }
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
    sv_decoder_end(m);
    sv_sampler_free(&smp);
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
