/* fuzz_tokenizer_load.c - libFuzzer harness for tokenizer.json loading
 * (sv_tokenizer_load_json, which sv_tokenizer_load reads files into): any
 * contents load or are refused; a tokenizer that loads must then encode and
 * decode without crashing. */
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sv_tokenizer *t = NULL;
    if (sv_tokenizer_load_json((const char *)data, size, "fuzz/tokenizer.json", &t) != SV_OK) return 0;
    static const char sample[] = "Hello world! <image> 12345 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \n\n  x";
    int32_t *ids = NULL;
    size_t n = 0;
    if (sv_tokenizer_encode(t, sample, sizeof sample - 1, 1, &ids, &n) == SV_OK) {
        char *text = NULL;
        size_t len = 0;
        if (sv_tokenizer_decode(t, ids, n, 0, &text, &len) == SV_OK) sv_free(text);
        sv_free(ids);
    }
    sv_detokenizer *d = NULL;
    if (sv_detokenizer_create(t, 0, &d) == SV_OK) {
        const char *piece;
        size_t len;
        for (int32_t id = -1; id < 300; id++) sv_detokenizer_push(d, id, &piece, &len);
        sv_detokenizer_flush(d, &piece, &len);
        sv_detokenizer_free(d);
    }
    sv_tokenizer_free(t);
    return 0;
}
