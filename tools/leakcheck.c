/* leakcheck.c - a LeakSanitizer driver for the C engine (no Python, so no
 * interpreter noise): for each model directory given, it loads the model,
 * encodes a tile of pixels, generates with the image rows (greedy and
 * sampled, with a cancelling callback), tokenizes, decodes and streams text,
 * then frees everything; a directory that fails to load exercises the
 * error-path cleanup instead.  Built and run by tools/leakcheck.sh with
 * -fsanitize=address (LeakSanitizer reports anything left at exit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smolvision.h"

static int32_t stop_after_two(void *user, int32_t id) {
    int *seen = user;
    return ++*seen >= 2;
}

static int check(sv_status s, const char *what) {
    if (s != SV_OK) fprintf(stderr, "%s: %s\n", what, sv_last_error());
    return s == SV_OK;
}

/* One full cycle on a loadable model; returns 0 on success. */
static int exercise(sv_model *m) {
    const sv_config *c = sv_model_config(m);
    size_t n_pixels = (size_t)3 * c->image_size * c->image_size;
    size_t n_rows = (size_t)c->image_seq_len;
    float *pixels = malloc(n_pixels * sizeof *pixels);
    float *rows = malloc(n_rows * c->text_hidden * sizeof *rows);
    int32_t *ids = malloc((n_rows + 3) * sizeof *ids);
    int32_t out[8];
    if (!pixels || !rows || !ids) return 1;
    for (size_t i = 0; i < n_pixels; i++) pixels[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    int ok = check(sv_encode_images(m, pixels, 1, rows), "encode");
    ids[0] = 1;
    for (size_t i = 0; i < n_rows; i++) ids[1 + i] = c->image_token_id;
    ids[n_rows + 1] = 2;
    ids[n_rows + 2] = 3;
    int32_t eos = 0;
    sv_sampling greedy = {0.0f, 0, 1.0f, 0.0f, 1.0f, 1, 8, &eos, 1};
    sv_sampling sampled = {0.8f, 20, 0.9f, 0.05f, 1.1f, 7, 8, &eos, 1};
    sv_generate_result r;
    int seen = 0;
    ok = ok && check(sv_generate(m, ids, (int32_t)n_rows + 3, rows, (int32_t)n_rows, &greedy, NULL, NULL, out, &r),
                     "generate greedy");
    ok = ok && check(sv_generate(m, ids, (int32_t)n_rows + 3, rows, (int32_t)n_rows, &sampled, stop_after_two, &seen,
                                 out, &r), "generate sampled");
    /* A refused call (ids outside the vocabulary) must free what it made. */
    int32_t bad = c->vocab_size;
    ok = ok && sv_generate(m, &bad, 1, NULL, 0, &greedy, NULL, NULL, out, &r) == SV_ERR_ARG;
    sv_tokenizer *t = sv_model_tokenizer(m);
    if (t && ok) {
        static const char text[] = "User:<image>What is this? caf\xc3\xa9 \xff<end_of_utterance>\nAssistant:";
        int32_t *tok = NULL;
        size_t n = 0;
        char *decoded = NULL;
        size_t len = 0;
        ok = check(sv_tokenizer_encode(t, text, sizeof text - 1, 1, &tok, &n), "encode text") &&
             check(sv_tokenizer_decode(t, tok, n, 1, &decoded, &len), "decode");
        sv_detokenizer *d = NULL;
        if (ok && check(sv_detokenizer_create(t, 0, &d), "detokenizer")) {
            const char *piece;
            for (size_t i = 0; i < n; i++) sv_detokenizer_push(d, tok[i], &piece, &len);
            sv_detokenizer_flush(d, &piece, &len);
            sv_detokenizer_free(d);
        }
        sv_free(tok);
        sv_free(decoded);
    }
    free(pixels);
    free(rows);
    free(ids);
    return !ok;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [MORE_DIRS...]\n", argv[0]);
        return 2;
    }
    int failed = 0;
    char cache[256];
    snprintf(cache, sizeof cache, "%s/sv-leakcheck-%ld.svq", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (long)getpid());
    for (int i = 1; i < argc; i++) {
        int loaded = 0;
        /* rounds: checkpoint weights; q8 in memory; q4 through a cache file built, then mapped */
        sv_load_options rounds[4] = {{2, SV_PRECISION_FP32, SV_QUANT_NONE, NULL, NULL, NULL},
                                     {2, SV_PRECISION_FP32, SV_QUANT_Q8, NULL, NULL, NULL},
                                     {2, SV_PRECISION_FP32, SV_QUANT_Q4, cache, NULL, NULL},
                                     {2, SV_PRECISION_FP32, SV_QUANT_Q4, cache, NULL, NULL}};
        for (int round = 0; round < 4; round++) {
            sv_model *m = NULL;
            if (sv_model_load_ex(argv[i], &rounds[round], &m) != SV_OK) {
                if (round == 0) printf("%s: refused 4 times (%s)\n", argv[i], sv_last_error());
                continue;
            }
            loaded++;
            failed |= exercise(m);
            sv_model_free(m);
        }
        if (loaded) printf("%s: %d load/encode/generate/tokenize/free cycles (plain, q8, q4 cached)%s\n", argv[i],
                           loaded, failed ? " FAILED" : "");
        unlink(cache);
    }
    return failed;
}
