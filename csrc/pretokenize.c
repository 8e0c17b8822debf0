/* pretokenize.c - the pre-tokenizer pipeline of tokenizer.json: Digits,
 * Split with the GPT-2 / Llama-3 / Qwen2 regexes, ByteLevel, and Sequences of
 * these.  Each step turns the current list of pieces into a finer one; empty
 * pieces are dropped, as tokenizers does.
 *
 * The regexes are not interpreted: each known pattern has a hand-written
 * matcher below that returns the same match as Oniguruma's leftmost-first
 * search would.  Every character is matched by some alternative of these
 * patterns, so a match always starts where the previous one ended. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tokenizer.h"
#include "unicode_tables.h"
#include "utf8.h"

static const char PATTERN_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char PATTERN_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char PATTERN_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- character classes ---- */

#define OTHER 16 /* [^\s\p{L}\p{N}] */

/* Class flags of the character at s[i] (i < n); *next gets the index after it. */
static unsigned class_at(const unsigned char *s, size_t n, size_t i, size_t *next) {
    uint32_t cp;
    *next = i + sv_utf8_next(s + i, n - i, &cp);
    unsigned f = sv_uc_flags(cp);
    if (!(f & (SV_UC_LETTER | SV_UC_NUMBER | SV_UC_SPACE))) f |= OTHER;
    return f;
}

/* End of the run of characters having any of the flags in want, from i. */
static size_t run_of(const unsigned char *s, size_t n, size_t i, unsigned want) {
    size_t next;
    while (i < n && (class_at(s, n, i, &next) & want)) i = next;
    return i;
}

/* \s+(?!\S)|\s+ at i (s[i] is whitespace): the whole run if it ends the text,
 * else all but its last character (which then prefixes the next word), or the
 * single character when the run is one long. */
static size_t match_spaces(const unsigned char *s, size_t n, size_t i) {
    size_t next, last = i, j = i;
    while (j < n && (class_at(s, n, j, &next) & SV_UC_SPACE)) {
        last = j;
        j = next;
    }
    if (j == n || last == i) return j;
    return last;
}

/* 's|'t|'re|'ve|'m|'ll|'d at i, ASCII case folded when fold; 0 if none.  With
 * fold, Oniguruma also lets U+017F LATIN SMALL LETTER LONG S match 's'. */
static size_t match_contraction(const unsigned char *s, size_t n, size_t i, int fold) {
    if (s[i] != '\'' || i + 1 >= n) return 0;
    unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (fold) {
        if (a == 0xC5 && b == 0xBF) return i + 3; /* 'ſ */
        a = (unsigned char)(a | (a >= 'A' && a <= 'Z' ? 0x20 : 0));
        b = (unsigned char)(b | (b >= 'A' && b <= 'Z' ? 0x20 : 0));
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

/* ---- the regex matchers: end of the match starting at i ---- */

static size_t match_gpt2(const unsigned char *s, size_t n, size_t i) {
    size_t end = match_contraction(s, n, i, 0), next;
    if (end) return end;
    size_t j = i + (s[i] == ' ');
    if (j < n) {
        unsigned f = class_at(s, n, j, &next);
        if (f & SV_UC_LETTER) return run_of(s, n, next, SV_UC_LETTER);
        if (f & SV_UC_NUMBER) return run_of(s, n, next, SV_UC_NUMBER);
        if (f & OTHER) return run_of(s, n, next, OTHER);
    }
    return match_spaces(s, n, i);
}

/* Llama-3 (max_digits 3) and Qwen2 (max_digits 1). */
static size_t match_llama3(const unsigned char *s, size_t n, size_t i, int max_digits) {
    size_t end = match_contraction(s, n, i, 1), next, next2;
    if (end) return end;
    unsigned f = class_at(s, n, i, &next);
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (f & SV_UC_LETTER) return run_of(s, n, next, SV_UC_LETTER);
    if (!(f & SV_UC_NUMBER) && s[i] != '\r' && s[i] != '\n' && next < n &&
        (class_at(s, n, next, &next2) & SV_UC_LETTER))
        return run_of(s, n, next2, SV_UC_LETTER);
    /* \p{N}{1,max_digits} */
    if (f & SV_UC_NUMBER) {
        end = next;
        for (int k = 1; k < max_digits && end < n && (class_at(s, n, end, &next2) & SV_UC_NUMBER); k++) end = next2;
        return end;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t j = i + (s[i] == ' ');
    if (j < n && (class_at(s, n, j, &next2) & OTHER)) {
        end = run_of(s, n, next2, OTHER);
        while (end < n && (s[end] == '\r' || s[end] == '\n')) end++;
        return end;
    }
    /* \s*[\r\n]+ : up to and including the run's last line break */
    size_t last_break = n;
    for (j = i; j < n && (class_at(s, n, j, &next2) & SV_UC_SPACE); j = next2)
        if (s[j] == '\r' || s[j] == '\n') last_break = j;
    if (last_break < n) return last_break + 1;
    return match_spaces(s, n, i);
}

static size_t match_regex(sv_regex re, const unsigned char *s, size_t n, size_t i) {
    switch (re) {
    case SV_RE_GPT2: return match_gpt2(s, n, i);
    case SV_RE_LLAMA3: return match_llama3(s, n, i, 3);
    case SV_RE_QWEN2: return match_llama3(s, n, i, 1);
    }
    return n;
}

/* ---- running the pipeline ---- */

static sv_status push_next(sv_pretok_scratch *s, size_t off, size_t len) {
    if (len == 0) return SV_OK;
    if (s->n_next == s->next_cap) {
        size_t cap = s->next_cap ? 2 * s->next_cap : 64;
        sv_piece *p = realloc(s->next, cap * sizeof *p);
        if (!p) return sv_fail(SV_ERR_NOMEM, "out of memory while pre-tokenizing");
        s->next = p;
        s->next_cap = cap;
    }
    s->next[s->n_next++] = (sv_piece){off, len};
    return SV_OK;
}

/* Makes room for extra more bytes in the scratch buffer. */
static sv_status reserve_buf(sv_pretok_scratch *s, size_t extra) {
    size_t need = s->buf_len + extra;
    if (need <= s->buf_cap) return SV_OK;
    size_t cap = s->buf_cap ? s->buf_cap : 256;
    while (cap < need) cap *= 2;
    char *p = realloc(s->buf, cap);
    if (!p) return sv_fail(SV_ERR_NOMEM, "out of memory while pre-tokenizing");
    s->buf = p;
    s->buf_cap = cap;
    return SV_OK;
}

static sv_status split_regex(sv_pretok_scratch *s, sv_regex re, size_t off, size_t len) {
    sv_status st = SV_OK;
    for (size_t i = 0; i < len && st == SV_OK;) {
        size_t end = match_regex(re, (const unsigned char *)s->buf + off, len, i);
        st = push_next(s, off + i, end - i);
        i = end;
    }
    return st;
}

static sv_status split_digits(sv_pretok_scratch *s, int individual, size_t off, size_t len) {
    const unsigned char *t = (const unsigned char *)s->buf + off;
    size_t start = 0, i = 0;
    int in_digits = 0;
    sv_status st = SV_OK;
    while (i < len && st == SV_OK) {
        uint32_t cp;
        size_t next = i + sv_utf8_next(t + i, len - i, &cp);
        int digit = (sv_uc_flags(cp) & SV_UC_NUMERIC) != 0;
        if (digit != in_digits || (digit && individual)) {
            st = push_next(s, off + start, i - start);
            start = i;
            in_digits = digit;
        }
        i = next;
    }
    if (st == SV_OK) st = push_next(s, off + start, len - start);
    return st;
}

static sv_status apply_step(const sv_pretok_step *step, sv_pretok_scratch *s, size_t k) {
    size_t off = s->pieces[k].off, len = s->pieces[k].len;
    switch (step->kind) {
    case SV_PRE_DIGITS: return split_digits(s, step->individual_digits, off, len);
    case SV_PRE_SPLIT: return split_regex(s, step->regex, off, len);
    case SV_PRE_BYTELEVEL:
        if (step->add_prefix_space && s->buf[off] != ' ') {
            /* the piece becomes " " + piece, written after everything else */
            sv_status st = reserve_buf(s, len + 1);
            if (st != SV_OK) return st;
            s->buf[s->buf_len] = ' ';
            memcpy(s->buf + s->buf_len + 1, s->buf + off, len);
            off = s->buf_len;
            len++;
            s->buf_len += len;
        }
        return step->use_regex ? split_regex(s, SV_RE_GPT2, off, len) : push_next(s, off, len);
    }
    return SV_OK;
}

/* The output of the step just applied becomes the input of the next. */
static void swap_lists(sv_pretok_scratch *s) {
    sv_piece *p = s->pieces;
    size_t cap = s->pieces_cap;
    s->pieces = s->next;
    s->pieces_cap = s->next_cap;
    s->n_pieces = s->n_next;
    s->next = p;
    s->next_cap = cap;
    s->n_next = 0;
}

sv_status sv_pretok_run(const sv_pretokenizer *p, const char *text, size_t len, sv_pretok_scratch *s) {
    s->buf_len = 0;
    s->n_pieces = s->n_next = 0;
    sv_status st = reserve_buf(s, len);
    if (st != SV_OK) return st;
    if (len) memcpy(s->buf, text, len);
    s->buf_len = len;
    st = push_next(s, 0, len);
    for (int k = 0; k < p->n_steps && st == SV_OK; k++) {
        swap_lists(s);
        for (size_t i = 0; i < s->n_pieces && st == SV_OK; i++) st = apply_step(&p->steps[k], s, i);
    }
    swap_lists(s);
    return st;
}

void sv_pretok_scratch_free(sv_pretok_scratch *s) {
    free(s->buf);
    free(s->pieces);
    free(s->next);
    memset(s, 0, sizeof *s);
}

/* ---- parsing ---- */

static sv_status get_flag(const json_value *v, const char *key, int dflt, const char *path, int *out) {
    *out = dflt;
    if (json_get_bool(v, key, out) < 0)
        return sv_fail(SV_ERR_FORMAT, "%s: pre_tokenizer field '%s' must be true or false", path, key);
    return SV_OK;
}

static sv_status parse_step(const json_value *v, const char *path, sv_pretokenizer *out, int depth) {
    if (v->type != JSON_OBJECT) return sv_fail(SV_ERR_FORMAT, "%s: a pre_tokenizer must be an object", path);
    const char *type = json_get_string(v, "type");
    if (!type) return sv_fail(SV_ERR_FORMAT, "%s: a pre_tokenizer has no \"type\" string", path);
    if (strcmp(type, "Sequence") == 0) {
        const json_value *list = json_get(v, "pretokenizers");
        if (!list || list->type != JSON_ARRAY)
            return sv_fail(SV_ERR_FORMAT, "%s: pre_tokenizer Sequence needs a \"pretokenizers\" array", path);
        if (depth > 4) return sv_fail(SV_ERR_UNSUPPORTED, "%s: pre_tokenizer Sequences nested too deeply", path);
        for (size_t i = 0; i < list->len; i++) {
            sv_status st = parse_step(&list->items[i], path, out, depth + 1);
            if (st != SV_OK) return st;
        }
        return SV_OK;
    }
    if (out->n_steps == SV_MAX_PRETOK_STEPS)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: more than %d pre-tokenizer steps", path, SV_MAX_PRETOK_STEPS);
    sv_pretok_step *step = &out->steps[out->n_steps];
    memset(step, 0, sizeof *step);
    sv_status st = SV_OK;
    if (strcmp(type, "ByteLevel") == 0) {
        step->kind = SV_PRE_BYTELEVEL;
        st = get_flag(v, "add_prefix_space", 1, path, &step->add_prefix_space);
        if (st == SV_OK) st = get_flag(v, "use_regex", 1, path, &step->use_regex);
    } else if (strcmp(type, "Digits") == 0) {
        step->kind = SV_PRE_DIGITS;
        st = get_flag(v, "individual_digits", 0, path, &step->individual_digits);
    } else if (strcmp(type, "Split") == 0) {
        step->kind = SV_PRE_SPLIT;
        const json_value *pat = json_get(v, "pattern");
        const char *re = pat ? json_get_string(pat, "Regex") : NULL;
        const char *behavior = json_get_string(v, "behavior");
        int invert = 0;
        if (!re)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: Split pre-tokenizer without a {\"Regex\": ...} pattern is not supported",
                           path);
        if (strcmp(re, PATTERN_GPT2) == 0) step->regex = SV_RE_GPT2;
        else if (strcmp(re, PATTERN_LLAMA3) == 0) step->regex = SV_RE_LLAMA3;
        else if (strcmp(re, PATTERN_QWEN2) == 0) step->regex = SV_RE_QWEN2;
        else
            return sv_fail(SV_ERR_UNSUPPORTED,
                           "%s: Split pre-tokenizer regex '%.200s' is not one this engine implements (GPT-2, Llama-3, Qwen2)",
                           path, re);
        if (!behavior || strcmp(behavior, "Isolated") != 0)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: Split pre-tokenizer behavior '%s' is not supported (only Isolated)", path,
                           behavior ? behavior : "(missing)");
        if (json_get_bool(v, "invert", &invert) < 0 || invert)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: inverted Split pre-tokenizers are not supported", path);
    } else {
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: pre_tokenizer type '%s' is not supported (ByteLevel, Digits, Split, Sequence)",
                       path, type);
    }
    if (st == SV_OK) out->n_steps++;
    return st;
}

sv_status sv_pretok_parse(const json_value *v, const char *path, sv_pretokenizer *out) {
    memset(out, 0, sizeof *out);
    if (!v || v->type == JSON_NULL)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: no pre_tokenizer; this engine runs byte-level BPE (ByteLevel pre-tokenizer)",
                       path);
    sv_status st = parse_step(v, path, out, 0);
    if (st != SV_OK) return st;
    for (int k = 0; k < out->n_steps; k++)
        if (out->steps[k].kind == SV_PRE_BYTELEVEL && k != out->n_steps - 1)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: the ByteLevel pre-tokenizer must be the last step", path);
    if (out->n_steps == 0 || out->steps[out->n_steps - 1].kind != SV_PRE_BYTELEVEL)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: the pre_tokenizer has no ByteLevel step; this engine runs byte-level BPE only",
                       path);
    return SV_OK;
}
