/* fuzz_tokenize.c - libFuzzer harness for sv_tokenizer_encode on arbitrary
 * bytes with a real tokenizer: every id must be a token and decoding them must
 * give valid UTF-8.  (decode(encode(text)) == text does not hold: like
 * tokenizers, bytes with no token in the vocabulary are dropped.) */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"

static sv_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    tok = fuzz_load_tokenizer();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (sv_tokenizer_encode(tok, (const char *)data, size, 0, &ids, &n) != SV_OK) return 0; /* NOMEM only */
    for (size_t i = 0; i < n; i++)
        if (!sv_tokenizer_id_to_token(tok, ids[i], &(size_t){0})) abort();
    char *text = NULL;
    size_t len = 0;
    if (sv_tokenizer_decode(tok, ids, n, 0, &text, &len) == SV_OK) {
        if (!valid_utf8((const uint8_t *)text, len)) abort();
        sv_free(text);
    }
    sv_free(ids);
    if (sv_tokenizer_encode(tok, (const char *)data, size, 1, &ids, &n) == SV_OK) sv_free(ids);
    return 0;
}
