/* json.c - see json.h.  A recursive-descent parser writing into an arena. */
#include "json.h"
#include "utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- arena: big blocks, freed together ---- */

typedef struct arena_block {
    struct arena_block *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
} arena_block;

struct json_doc {
    arena_block *blocks;
    json_value root;
};

static void *arena_alloc(json_doc *doc, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = doc->blocks;
    if (!b || b->size - b->used < n) {
        size_t size = n > (1u << 20) ? n : (1u << 20);
        b = malloc(sizeof(arena_block) + size);
        if (!b) return NULL;
        b->size = size;
        b->used = 0;
        b->next = doc->blocks;
        doc->blocks = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

/* ---- parser ---- */

typedef struct {
    const char *s;
    size_t len, pos;
    json_doc *doc;
    char *err;
    size_t err_size;
    int failed;
    size_t n_values; /* parsed so far, against JSON_MAX_VALUES */
} parser;

static int fail(parser *p, const char *fmt, ...) {
    if (!p->failed && p->err && p->err_size) {
        char msg[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(p->err, p->err_size, "%s at byte %zu", msg, p->pos);
    }
    p->failed = 1;
    return -1;
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int parse_value(parser *p, json_value *out, int depth);

static int hex4(parser *p, unsigned *out) {
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return fail(p, "bad hex digit in \\u escape");
    }
    *out = v;
    return 0;
}

/* Parses a string starting at the opening quote.  Escapes only shrink or keep
 * the byte count (\uXXXX is 6 bytes -> at most 3; a surrogate pair is 12 -> 4),
 * so the raw span length bounds the output size. */
static int parse_string(parser *p, const char **out, size_t *out_len) {
    p->pos++; /* opening quote */
    size_t start = p->pos, end = start;
    while (end < p->len && p->s[end] != '"') {
        if (p->s[end] == '\\') end++;
        end++;
    }
    if (end >= p->len) return fail(p, "unterminated string");
    unsigned char *o = arena_alloc(p->doc, end - start + 1);
    if (!o) return fail(p, "out of memory");
    size_t n = 0;
    while (p->pos < end) {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20) return fail(p, "control character in string");
        if (c != '\\') { o[n++] = c; p->pos++; continue; }
        p->pos++;
        char e = p->s[p->pos++];
        switch (e) {
        case '"': o[n++] = '"'; break;
        case '\\': o[n++] = '\\'; break;
        case '/': o[n++] = '/'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'n': o[n++] = '\n'; break;
        case 'r': o[n++] = '\r'; break;
        case 't': o[n++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(p, &cp)) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF && p->pos + 6 <= end && p->s[p->pos] == '\\' &&
                p->s[p->pos + 1] == 'u') {
                size_t save = p->pos;
                unsigned lo;
                p->pos += 2;
                if (hex4(p, &lo)) return -1;
                if (lo >= 0xDC00 && lo <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                else p->pos = save;
            }
            /* A lone surrogate cannot be UTF-8; use U+FFFD as Python's json
             * would produce an unencodable str anyway. */
            if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
            n += sv_utf8_put(cp, (char *)o + n);
            break;
        }
        default: return fail(p, "bad escape '\\%c'", e);
        }
    }
    o[n] = 0;
    p->pos = end + 1;
    *out = (const char *)o;
    *out_len = n;
    return 0;
}

static int parse_number(parser *p, json_value *out) {
    size_t start = p->pos;
    int integral = 1;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') return fail(p, "bad number");
    if (p->s[p->pos] == '0') p->pos++;
    else while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') return fail(p, "bad fraction");
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9') return fail(p, "bad exponent");
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    }
    char buf[64];
    size_t n = p->pos - start;
    if (n >= sizeof buf) {
        if (integral) return fail(p, "integer too long");
        n = sizeof buf - 1; /* a long fraction: the leading digits decide the double */
    }
    memcpy(buf, p->s + start, n);
    buf[n] = 0;
    out->type = JSON_NUMBER;
    out->number = strtod(buf, NULL);
    if (integral) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == 0) {
            out->is_integer = 1;
            out->integer = v;
        }
    }
    return 0;
}

static int match_word(parser *p, const char *w) {
    size_t n = strlen(w);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, w, n) != 0) return fail(p, "unexpected token");
    p->pos += n;
    return 0;
}

/* Elements are collected in a growable scratch vector, then copied into the
 * arena once their count is known. */
static int parse_array(parser *p, json_value *out, int depth) {
    p->pos++;
    json_value *tmp = NULL;
    size_t n = 0, cap = 0;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
    } else {
        for (;;) {
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                json_value *t = realloc(tmp, ncap * sizeof *t);
                if (!t) { free(tmp); return fail(p, "out of memory"); }
                tmp = t;
                cap = ncap;
            }
            memset(&tmp[n], 0, sizeof tmp[n]);
            if (parse_value(p, &tmp[n], depth + 1)) { free(tmp); return -1; }
            n++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
            if (p->pos < p->len && p->s[p->pos] == ']') { p->pos++; break; }
            free(tmp);
            return fail(p, "expected ',' or ']'");
        }
    }
    out->type = JSON_ARRAY;
    out->len = n;
    if (n) {
        out->items = arena_alloc(p->doc, n * sizeof *tmp);
        if (!out->items) { free(tmp); return fail(p, "out of memory"); }
        memcpy(out->items, tmp, n * sizeof *tmp);
    }
    free(tmp);
    return 0;
}

static int parse_object(parser *p, json_value *out, int depth) {
    p->pos++;
    json_member *tmp = NULL;
    size_t n = 0, cap = 0;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
    } else {
        for (;;) {
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"') { free(tmp); return fail(p, "expected a string key"); }
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                json_member *t = realloc(tmp, ncap * sizeof *t);
                if (!t) { free(tmp); return fail(p, "out of memory"); }
                tmp = t;
                cap = ncap;
            }
            memset(&tmp[n], 0, sizeof tmp[n]);
            if (parse_string(p, &tmp[n].key, &tmp[n].key_len)) { free(tmp); return -1; }
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') { free(tmp); return fail(p, "expected ':'"); }
            p->pos++;
            if (parse_value(p, &tmp[n].value, depth + 1)) { free(tmp); return -1; }
            n++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
            if (p->pos < p->len && p->s[p->pos] == '}') { p->pos++; break; }
            free(tmp);
            return fail(p, "expected ',' or '}'");
        }
    }
    out->type = JSON_OBJECT;
    out->len = n;
    if (n) {
        out->members = arena_alloc(p->doc, n * sizeof *tmp);
        if (!out->members) { free(tmp); return fail(p, "out of memory"); }
        memcpy(out->members, tmp, n * sizeof *tmp);
    }
    free(tmp);
    return 0;
}

static int parse_value(parser *p, json_value *out, int depth) {
    if (depth > JSON_MAX_DEPTH) return fail(p, "nesting deeper than %d", JSON_MAX_DEPTH);
    if (++p->n_values > JSON_MAX_VALUES) return fail(p, "more than %d values", JSON_MAX_VALUES);
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, "unexpected end of input");
    switch (p->s[p->pos]) {
    case '{': return parse_object(p, out, depth);
    case '[': return parse_array(p, out, depth);
    case '"': out->type = JSON_STRING; return parse_string(p, &out->str, &out->len);
    case 't': out->type = JSON_BOOL; out->boolean = 1; return match_word(p, "true");
    case 'f': out->type = JSON_BOOL; out->boolean = 0; return match_word(p, "false");
    case 'n': out->type = JSON_NULL; return match_word(p, "null");
    default: return parse_number(p, out);
    }
}

json_doc *json_parse(const char *text, size_t len, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    json_doc *doc = calloc(1, sizeof *doc);
    if (!doc) {
        if (err && err_size) snprintf(err, err_size, "out of memory");
        return NULL;
    }
    parser p = {text, len, 0, doc, err, err_size, 0, 0};
    if (parse_value(&p, &doc->root, 0) == 0) {
        skip_ws(&p);
        if (p.pos != p.len) fail(&p, "trailing characters after the JSON value");
    }
    if (p.failed) {
        json_free(doc);
        return NULL;
    }
    return doc;
}

const json_value *json_root(const json_doc *doc) { return &doc->root; }

void json_free(json_doc *doc) {
    if (!doc) return;
    arena_block *b = doc->blocks;
    while (b) {
        arena_block *next = b->next;
        free(b);
        b = next;
    }
    free(doc);
}

const json_value *json_get(const json_value *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i < obj->len; i++)
        if (obj->members[i].key_len == klen && memcmp(obj->members[i].key, key, klen) == 0)
            return &obj->members[i].value;
    return NULL;
}

int json_get_int(const json_value *obj, const char *key, int64_t *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_NUMBER) return -1;
    if (v->is_integer) { *out = v->integer; return 1; }
    /* 3.0 is an integer too; 3.5 is not. */
    if (v->number != v->number || v->number < -9.0e18 || v->number > 9.0e18 ||
        (double)(int64_t)v->number != v->number)
        return -1;
    *out = (int64_t)v->number;
    return 1;
}

int json_get_double(const json_value *obj, const char *key, double *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_NUMBER) return -1;
    *out = v->number;
    return 1;
}

int json_get_bool(const json_value *obj, const char *key, int *out) {
    const json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 0;
    if (v->type != JSON_BOOL) return -1;
    *out = v->boolean;
    return 1;
}

const char *json_get_string(const json_value *obj, const char *key) {
    const json_value *v = json_get(obj, key);
    return v && v->type == JSON_STRING ? v->str : NULL;
}

char *json_read_file(const char *path, size_t max_bytes, size_t *len_out, char *err, size_t err_size) {
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever;
     * it changes nothing for the regular files that pass the check below. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_size, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_size, "%s is not a regular file", path);
        close(fd);
        return NULL;
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        snprintf(err, err_size, "%s is %lld bytes, more than the %zu allowed", path, (long long)st.st_size,
                 max_bytes);
        close(fd);
        return NULL;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        snprintf(err, err_size, "out of memory reading %s", path);
        close(fd);
        return NULL;
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        snprintf(err, err_size, "cannot read %s (got %zu of %zu bytes)", path, got, n);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len_out = n;
    return buf;
}
