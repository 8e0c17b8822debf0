/* fuzz_json.c - libFuzzer harness for json_parse: any bytes must parse or be
 * refused with a message, never crash, and a parsed tree must be walkable. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "json.h"

/* Reads every node so ASan sees any pointer the parser got wrong. */
static size_t walk(const json_value *v) {
    size_t n = 1;
    if (v->type == JSON_STRING) n += strlen(v->str) <= v->len;
    if (v->type == JSON_ARRAY)
        for (size_t i = 0; i < v->len; i++) n += walk(&v->items[i]);
    if (v->type == JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++) {
            n += strlen(v->members[i].key) <= v->members[i].key_len;
            n += walk(&v->members[i].value);
        }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    json_doc *doc = json_parse((const char *)data, size, err, sizeof err);
    if (doc) {
        const json_value *root = json_root(doc);
        walk(root);
        int64_t i;
        double d;
        int b;
        json_get_int(root, "a", &i);
        json_get_double(root, "a", &d);
        json_get_bool(root, "a", &b);
        json_get_string(root, "a");
        json_free(doc);
    }
    return 0;
}
