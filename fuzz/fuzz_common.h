/* fuzz_common.h - a UTF-8 validity check, and the real tokenizer the tokenizer harnesses load once: from
 * $SV_FUZZ_TOKENIZER, else the test fixture cache
 * (~/.cache/smolvision-tests/smollm2-tokenizer/tokenizer.json). */
#ifndef SV_FUZZ_COMMON_H
#define SV_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "smolvision.h"

static sv_tokenizer *fuzz_load_tokenizer(void) {
    char path[4096];
    const char *env = getenv("SV_FUZZ_TOKENIZER");
    if (env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/.cache/smolvision-tests/smollm2-tokenizer/tokenizer.json",
                  getenv("HOME") ? getenv("HOME") : ".");
    sv_tokenizer *t = NULL;
    if (sv_tokenizer_load(path, &t) != SV_OK) {
        fprintf(stderr, "cannot load the tokenizer (%s); set SV_FUZZ_TOKENIZER\n", sv_last_error());
        exit(1);
    }
    return t;
}

/* 1 if s[0..n) is valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF). */
static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || i + k > n) return 0;
        uint32_t cp = k == 1 ? c : c & (0x7F >> k);
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k;
    }
    return 1;
}

#endif
