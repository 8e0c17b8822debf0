/* decoder.h - the Llama text decoder of SmolVLM over sequences (sv_seq).
 *
 * A sequence (sequence.c) owns what one context computed: its KV cache, its
 * length and its token history.  The model owns only the shared scratch
 * (sv_model.decoder: the rows of one pass and the attention workspace), sized
 * for the widest pass and the largest cache seen and kept, so nothing is
 * allocated per token.  A call brackets its work with sv_decoder_begin() /
 * sv_decoder_end(), which refuse overlapping calls on one model (the scratch
 * is shared). */
#ifndef SV_DECODER_H
#define SV_DECODER_H

#include <stdint.h>

#include "model.h"

typedef struct sv_decoder sv_decoder;

struct sv_seq {
    const sv_model *model; /* the model that made it: the only one it may run with */
    sv_kv_cache cache;     /* cache.capacity positions (0 and no buffers until first grown) */
    int32_t n;             /* positions computed: 0 .. n - 1 are in the cache */
    int32_t *tokens;       /* [cache.capacity]: the id at each position (image positions: image_token_id) */
};

/* Positions a sequence is grown by at a time (up to max_position_embeddings), so that a chat whose
 * context grows by a few tokens per turn, or a decode loop, does not reallocate every call. */
#define SV_CAPACITY_STEP 256

/* Checks a prompt: 1 <= n, n + extra <= max_position_embeddings, every id in
 * [0, vocab), exactly n_image_rows image tokens and image_embeds non-NULL
 * when rows are given.  extra is the number of ids to be generated. */
sv_status sv_decoder_check_prompt(const sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds,
                                  int32_t n_image_rows, int32_t extra);

/* Marks the model busy; refuses a call made while another one on the same model is running. */
sv_status sv_decoder_begin(sv_model *m);
void sv_decoder_end(sv_model *m);

/* Appends the checked ids[n] (image positions taking the rows of image_embeds in order) to seq in
 * chunks, growing its cache and the scratch as needed; *logits receives the logits [vocab] after the
 * last id, owned by the scratch and valid until the next call. */
sv_status sv_decoder_prefill(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                             const float **logits);

/* Appends ids[r] to seqs[r] (checked, distinct, of this model) for r < n in one pass; the logits after
 * them go to out[n, vocab], or with out NULL (n == 1 only) to the scratch, *logits pointing at them. */
sv_status sv_decoder_decode(sv_model *m, sv_seq *const *seqs, int32_t n, const int32_t *ids, float *out,
                            const float **logits);

/* The model's own sequence for the one-shot calls (sv_generate, sv_logits), made on first use. */
sv_status sv_decoder_oneshot(sv_model *m, sv_seq **out);

/* Grows seq to hold `positions` (rounded up to SV_CAPACITY_STEP, at most max_position_embeddings). */
sv_status sv_seq_grow(sv_seq *seq, int32_t positions);

void sv_decoder_free(sv_decoder *d);

#endif
