/* json.h - a small, strict JSON reader (RFC 8259) used for config.json,
 * tokenizer.json, safetensors headers and index files.
 *
 * json_parse() builds a read-only tree in one arena; json_free() releases it
 * all at once.  Strings are unescaped to UTF-8 and NUL-terminated (len is kept
 * because "\u0000" is legal).  Nesting is limited so hostile input cannot
 * exhaust the stack, and so is the number of values: each costs ~64 bytes of
 * tree for as little as 2 bytes of text ("0,"), so without a cap a 100 MB
 * safetensors header would take 6 GB. */
#ifndef SV_JSON_H
#define SV_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value json_value;
typedef struct json_member json_member;

struct json_value {
    json_type type;
    int boolean;          /* JSON_BOOL */
    double number;        /* JSON_NUMBER */
    int is_integer;       /* JSON_NUMBER written without '.'/'e' and fitting int64 */
    int64_t integer;      /* JSON_NUMBER with is_integer */
    const char *str;      /* JSON_STRING: UTF-8, NUL-terminated */
    size_t len;           /* JSON_STRING: bytes; JSON_ARRAY/OBJECT: element count */
    json_value *items;    /* JSON_ARRAY: len items */
    json_member *members; /* JSON_OBJECT: len members, in file order */
};

struct json_member {
    const char *key;      /* UTF-8, NUL-terminated */
    size_t key_len;
    json_value value;
};

typedef struct json_doc json_doc;

#define JSON_MAX_DEPTH 256
/* 20x the values of SmolLM2's tokenizer.json (196k); at most ~400 MB of tree. */
#define JSON_MAX_VALUES (1 << 22)

/* Parses text[0..len).  Returns NULL and writes a message (with the byte
 * offset) into err on failure.  The tree stays valid until json_free(). */
json_doc *json_parse(const char *text, size_t len, char *err, size_t err_size);
const json_value *json_root(const json_doc *doc);
void json_free(json_doc *doc);

/* Member lookup by key; NULL when obj is not an object or has no such key. */
const json_value *json_get(const json_value *obj, const char *key);

/* Typed getters for optional config fields: return 1 and store the value
 * when present with the right type, 0 when absent or null, -1 when present
 * with a wrong type (or out of range for int). */
int json_get_int(const json_value *obj, const char *key, int64_t *out);
int json_get_double(const json_value *obj, const char *key, double *out);
int json_get_bool(const json_value *obj, const char *key, int *out);
const char *json_get_string(const json_value *obj, const char *key); /* NULL if absent/not string */

/* Reads a whole file into a malloc'ed NUL-terminated buffer (max_bytes caps
 * the size so a huge or endless file is refused).  Returns NULL with errno-ish
 * text in err on failure. */
char *json_read_file(const char *path, size_t max_bytes, size_t *len_out, char *err, size_t err_size);

#endif
