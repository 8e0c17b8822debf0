/* sample.h - choosing the next token from a row of logits: repetition
 * penalty, then greedy argmax or temperature / top-k / top-p / min-p
 * sampling, in the order transformers' generate applies them.
 *
 * A sampler owns its scratch (sized once per generation for the vocabulary)
 * and its PRNG state, so two generations never share randomness. */
#ifndef SV_SAMPLE_H
#define SV_SAMPLE_H

#include <stdint.h>

#include "smolvision.h"

typedef struct {
    float logit;
    int32_t id;
} sv_candidate;

typedef struct {
    sv_sampling opt;
    int32_t vocab;
    uint64_t rng;              /* splitmix64 state */
    unsigned char *seen;       /* [vocab]: 1 for ids the repetition penalty applies to */
    sv_candidate *candidates;  /* [vocab]: scratch for top-p */
} sv_sampler;

/* Checks the options (clear SV_ERR_ARG messages) and allocates the scratch. */
sv_status sv_sampler_init(sv_sampler *smp, const sv_sampling *opt, int32_t vocab);
void sv_sampler_free(sv_sampler *smp);

/* Records an id of the prompt or the output for the repetition penalty. */
void sv_sampler_observe(sv_sampler *smp, int32_t id);

/* Picks the next id from logits[vocab], which it overwrites. */
int32_t sv_sampler_pick(sv_sampler *smp, float *logits);

#endif
