/* fuzz_detokenize.c - libFuzzer harness for the incremental detokenizer on
 * arbitrary id sequences (2 input bytes per id, so ids span the vocabulary,
 * the added tokens and unknown ids; the first byte picks skip_special).  The
 * pieces plus the flush must equal sv_tokenizer_decode of the same ids, and
 * each piece must be valid UTF-8. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static sv_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tok = fuzz_load_tokenizer();
    return 0;
}

/* Checks that piece[0..len) continues text at *at. */
static void expect(const char *text, size_t text_len, size_t *at, const char *piece, size_t len) {
    if (*at + len > text_len || memcmp(text + *at, piece, len) != 0 || !valid_utf8((const uint8_t *)piece, len))
        abort();
    *at += len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int skip = data[0] & 1;
    size_t n = (size - 1) / 2;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) abort();
    for (size_t i = 0; i < n; i++) ids[i] = data[1 + 2 * i] | data[2 + 2 * i] << 8;
    char *text = NULL;
    size_t text_len = 0, at = 0;
    if (sv_tokenizer_decode(tok, ids, n, skip, &text, &text_len) != SV_OK) abort();
    sv_detokenizer *d = NULL;
    if (sv_detokenizer_create(tok, skip, &d) != SV_OK) abort();
    const char *piece;
    size_t len;
    for (size_t i = 0; i < n; i++) {
        if (sv_detokenizer_push(d, ids[i], &piece, &len) != SV_OK) abort();
        expect(text, text_len, &at, piece, len);
    }
    if (sv_detokenizer_flush(d, &piece, &len) != SV_OK) abort();
    expect(text, text_len, &at, piece, len);
    if (at != text_len) abort();
    sv_detokenizer_free(d);
    sv_free(text);
    free(ids);
    return 0;
}
