/* utf8.c - see utf8.h.  Validation follows Rust's String::from_utf8_lossy
 * (what the tokenizers library sees): each maximal invalid subpart of a
 * sequence becomes one U+FFFD. */
#include "utf8.h"

#include <string.h>

size_t sv_utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The character at s[0..n), n >= 1: its length if valid; 0 if s is a valid
 * but incomplete start of one; -k if invalid, the first k bytes being the
 * maximal invalid subpart that becomes one U+FFFD. */
static int utf8_check(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) { need = 2; hi = 0x9F; }
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) { need = 3; hi = 0x8F; }
    else return -1;
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) return 0;
        if (s[k] < lo || s[k] > hi) return -k;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

size_t sv_utf8_lossy(const unsigned char *s, size_t n, int final, char *out, size_t *used) {
    size_t i = 0, o = 0;
    while (i < n) {
        int r = utf8_check(s + i, n - i);
        if (r > 0) {
            memcpy(out + o, s + i, (size_t)r);
            o += (size_t)r;
            i += (size_t)r;
            continue;
        }
        if (r == 0 && !final) break;
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += r == 0 ? n - i : (size_t)-r;
    }
    *used = i;
    return o;
}

int sv_utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) { i++; continue; }
        int r = utf8_check(s + i, n - i);
        if (r <= 0) return 0;
        i += (size_t)r;
    }
    return 1;
}
