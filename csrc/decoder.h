/* decoder.h - the Llama text decoder of SmolVLM over a KV cache.
 *
 * The decoder state (KV cache and every scratch buffer) hangs off
 * sv_model.decoder.  It is sized once per call for the context that call
 * needs and kept for later calls that fit, so nothing is allocated per token.
 * A call brackets its work with sv_decoder_begin()/sv_decoder_end(). */
#ifndef SV_DECODER_H
#define SV_DECODER_H

#include <stdint.h>

#include "model.h"

typedef struct sv_decoder sv_decoder;

/* Checks a prompt: 1 <= n, n + extra <= max_position_embeddings, every id in
 * [0, vocab), exactly n_image_rows image tokens and image_embeds non-NULL
 * when rows are given.  extra is the number of ids to be generated. */
sv_status sv_decoder_check_prompt(const sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds,
                                  int32_t n_image_rows, int32_t extra);

/* Makes the state hold `capacity` positions and marks it busy; refuses a
 * call made while another one on the same model is running. */
sv_status sv_decoder_begin(sv_model *m, int32_t capacity);
void sv_decoder_end(sv_model *m);

/* Empties the cache and runs the prompt ids[n] (checked) in chunks; returns
 * the logits [vocab] after its last position, owned by the state and valid
 * until the next call. */
const float *sv_decoder_prefill(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds);

/* Appends one id at the next position; returns the logits [vocab] after it. */
const float *sv_decoder_step(sv_model *m, int32_t id);

void sv_decoder_free(sv_decoder *d);

#endif
