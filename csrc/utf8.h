/* utf8.h - UTF-8 encoding, decoding and lossy validation, shared by the
 * JSON parser and the tokenizer. */
#ifndef SV_UTF8_H
#define SV_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Writes code point cp (<= U+10FFFF) as UTF-8 to out (room for 4 bytes); returns the bytes written. */
size_t sv_utf8_put(uint32_t cp, char *out);

/* Decodes one UTF-8 character of valid text at s[0..n), n >= 1; *cp gets it. */
static inline size_t sv_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80 || n < 2) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (c < 0xF0 || n < 4) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (n > 2 ? (s[2] & 0x3F) : 0);
        return n < 3 ? n : 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* Writes s[0..n) to out with invalid sequences replaced by U+FFFD; out needs
 * room for 3n bytes.  When final is 0 an incomplete trailing character is
 * left unconsumed.  Returns the bytes written; *used gets the bytes consumed. */
size_t sv_utf8_lossy(const unsigned char *s, size_t n, int final, char *out, size_t *used);

/* 1 if s[0..n) is valid UTF-8. */
int sv_utf8_valid(const unsigned char *s, size_t n);

#endif
