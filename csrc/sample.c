/* sample.c - see sample.h.  The filters mirror transformers' logits
 * processors: a filtered logit becomes -inf, and the draw is a softmax over
 * what is left. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>

#include "error.h"

sv_status sv_sampler_init(sv_sampler *smp, const sv_sampling *o, int32_t vocab) {
    *smp = (sv_sampler){0};
    if (!o) return sv_fail(SV_ERR_ARG, "no sampling options given");
    if (!(o->temperature >= 0.0f) || isinf(o->temperature))
        return sv_fail(SV_ERR_ARG, "temperature must be a finite number >= 0 (0 = greedy), not %g", o->temperature);
    if (o->top_k < 0) return sv_fail(SV_ERR_ARG, "top_k must be >= 0 (0 = off), not %d", o->top_k);
    if (!(o->top_p > 0.0f && o->top_p <= 1.0f))
        return sv_fail(SV_ERR_ARG, "top_p must be in (0, 1] (1 = off), not %g", o->top_p);
    if (!(o->min_p >= 0.0f && o->min_p <= 1.0f))
        return sv_fail(SV_ERR_ARG, "min_p must be in [0, 1] (0 = off), not %g", o->min_p);
    if (!(o->repetition_penalty > 0.0f) || isinf(o->repetition_penalty))
        return sv_fail(SV_ERR_ARG, "repetition_penalty must be a finite number > 0 (1 = off), not %g",
                       o->repetition_penalty);
    if (o->max_tokens < 0) return sv_fail(SV_ERR_ARG, "max_tokens must be >= 0, not %d", o->max_tokens);
    if (o->n_eos_ids < 0 || (o->n_eos_ids > 0 && !o->eos_ids))
        return sv_fail(SV_ERR_ARG, "eos_ids must hold n_eos_ids (%d) ids", o->n_eos_ids);
    smp->opt = *o;
    smp->vocab = vocab;
    smp->rng = o->seed;
    smp->seen = calloc((size_t)vocab, 1);
    smp->candidates = malloc((size_t)vocab * sizeof *smp->candidates);
    if (!smp->seen || !smp->candidates) {
        sv_sampler_free(smp);
        return sv_fail(SV_ERR_NOMEM, "out of memory allocating the sampler");
    }
    return SV_OK;
}

void sv_sampler_free(sv_sampler *smp) {
    free(smp->seen);
    free(smp->candidates);
    smp->seen = NULL;
    smp->candidates = NULL;
}

void sv_sampler_observe(sv_sampler *smp, int32_t id) {
    if (id >= 0 && id < smp->vocab) smp->seen[id] = 1;
}

/* splitmix64: a tiny, well-mixed generator; its state is one integer. */
static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A uniform double in [0, 1) with 53 random bits. */
static double next_uniform(uint64_t *state) { return (double)(next_u64(state) >> 11) * 0x1.0p-53; }

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The k-th largest of a[n] (k in 1..n); reorders a. */
static float kth_largest(sv_candidate *a, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2].logit;
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (a[i].logit > pivot) i++;
            while (a[j].logit < pivot) j--;
            if (i <= j) {
                sv_candidate t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        /* Now a[lo..j] >= pivot >= a[i..hi], and anything between equals pivot. */
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want].logit;
    }
    return a[want].logit;
}

static int by_logit_descending(const void *pa, const void *pb) {
    const sv_candidate *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit > b->logit ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* Keeps the k largest logits (and ties with the k-th), as TopKLogitsWarper. */
static void top_k_filter(sv_sampler *smp, float *logits, int32_t k) {
    for (int32_t i = 0; i < smp->vocab; i++) smp->candidates[i] = (sv_candidate){logits[i], i};
    float threshold = kth_largest(smp->candidates, smp->vocab, k);
    for (int32_t i = 0; i < smp->vocab; i++)
        if (logits[i] < threshold) logits[i] = -INFINITY;
}

/* Keeps the most likely ids whose probabilities, summed from the top, first
 * reach top_p (TopPLogitsWarper: it drops the ascending tail whose
 * cumulative probability is <= 1 - top_p); the top id always stays.
 *
 * Only ids with probability above (1 - top_p) / vocab are sorted: all ids
 * below that weigh at most 1 - top_p together and lead the ascending order,
 * so the reference drops every one of them anyway. */
static void top_p_filter(sv_sampler *smp, float *logits, float top_p) {
    float max = logits[argmax(logits, smp->vocab)];
    double total = 0;
    for (int32_t i = 0; i < smp->vocab; i++) total += exp((double)(logits[i] - max));
    double floor = (1.0 - top_p) * total / smp->vocab; /* in units of exp(logit - max) */
    int32_t n = 0;
    for (int32_t i = 0; i < smp->vocab; i++) {
        if (exp((double)(logits[i] - max)) > floor) smp->candidates[n++] = (sv_candidate){logits[i], i};
        else logits[i] = -INFINITY;
    }
    qsort(smp->candidates, (size_t)n, sizeof *smp->candidates, by_logit_descending);
    double before = 0; /* probability mass of the ids ranked above candidate i */
    int32_t i = 0;
    while (i < n && before < top_p) before += exp((double)(smp->candidates[i++].logit - max)) / total;
    for (; i < n; i++) logits[smp->candidates[i].id] = -INFINITY;
}

/* Drops ids less likely than min_p times the top id (MinPLogitsWarper). */
static void min_p_filter(float *logits, int32_t vocab, float min_p) {
    float max = logits[argmax(logits, vocab)];
    for (int32_t i = 0; i < vocab; i++)
        if (expf(logits[i] - max) < min_p) logits[i] = -INFINITY;
}

/* One draw from softmax(logits). */
static int32_t draw(sv_sampler *smp, const float *logits) {
    int32_t top = argmax(logits, smp->vocab);
    float max = logits[top];
    double total = 0;
    for (int32_t i = 0; i < smp->vocab; i++) total += exp((double)(logits[i] - max));
    double u = next_uniform(&smp->rng) * total, acc = 0;
    for (int32_t i = 0; i < smp->vocab; i++) {
        if (logits[i] == -INFINITY) continue;
        acc += exp((double)(logits[i] - max));
        if (acc > u) return i;
    }
    return top; /* only reached through rounding at the very end */
}

int32_t sv_sampler_pick(sv_sampler *smp, float *logits) {
    const sv_sampling *o = &smp->opt;
    int32_t vocab = smp->vocab;
    if (o->repetition_penalty != 1.0f)
        for (int32_t i = 0; i < vocab; i++)
            if (smp->seen[i]) logits[i] = logits[i] < 0 ? logits[i] * o->repetition_penalty
                                                         : logits[i] / o->repetition_penalty;
    if (o->temperature == 0.0f) return argmax(logits, vocab);
    if (o->temperature != 1.0f)
        for (int32_t i = 0; i < vocab; i++) logits[i] /= o->temperature;
    if (o->top_k > 0 && o->top_k < vocab) top_k_filter(smp, logits, o->top_k);
    if (o->top_p < 1.0f) top_p_filter(smp, logits, o->top_p);
    if (o->min_p > 0.0f) min_p_filter(logits, vocab, o->min_p);
    return draw(smp, logits);
}

/* ---- the public sampler (smolvision.h), for token loops driven from outside (batched decoding) ---- */

struct sv_token_sampler {
    sv_sampler smp;
};

sv_status sv_token_sampler_create(const sv_sampling *s, int32_t vocab, sv_token_sampler **out) {
    sv_clear_error();
    if (!s || !out || vocab < 1) return sv_fail(SV_ERR_ARG, "sv_token_sampler_create: bad arguments");
    sv_token_sampler *t = calloc(1, sizeof *t);
    if (!t) return sv_fail(SV_ERR_NOMEM, "out of memory allocating a sampler");
    sv_status st = sv_sampler_init(&t->smp, s, vocab);
    if (st != SV_OK) {
        free(t);
        return st;
    }
    t->smp.opt.eos_ids = NULL; /* the caller's array need not outlive this call */
    t->smp.opt.n_eos_ids = 0;
    *out = t;
    return SV_OK;
}

void sv_token_sampler_observe(sv_token_sampler *t, const int32_t *ids, int32_t n) {
    for (int32_t i = 0; t && ids && i < n; i++)
        if (ids[i] >= 0 && ids[i] < t->smp.vocab) sv_sampler_observe(&t->smp, ids[i]);
}

int32_t sv_token_sampler_pick(sv_token_sampler *t, float *logits) {
    int32_t id = sv_sampler_pick(&t->smp, logits);
    sv_sampler_observe(&t->smp, id);
    return id;
}

void sv_token_sampler_free(sv_token_sampler *t) {
    if (!t) return;
    sv_sampler_free(&t->smp);
    free(t);
}
