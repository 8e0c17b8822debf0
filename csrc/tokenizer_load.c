/* tokenizer_load.c - reading a Hugging Face tokenizer.json into the tables of
 * tokenizer_model.h: the byte-level BPE model (vocabulary, merge ranks), added
 * tokens, the pre-tokenizer (pretokenize.c), the post-processor template and
 * the per-id decoding tables.  Anything the tokenizers library would do
 * differently from this engine is refused with SV_ERR_UNSUPPORTED. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "json.h"
#include "tokenizer_model.h"
#include "utf8.h"

#define MAX_TOKENIZER_BYTES (512u << 20)

/* ---- the byte-level alphabet (GPT-2): printable bytes stand for themselves,
 * the rest are shifted to U+0100 and up in byte order ---- */

static int byte_is_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174); }

static void byte_alphabet(uint32_t byte_to_cp[256]) {
    int shifted = 0;
    for (int b = 0; b < 256; b++) byte_to_cp[b] = byte_is_printable(b) ? (uint32_t)b : (uint32_t)(256 + shifted++);
}

/* Inverse of byte_alphabet: the byte a code point stands for, or -1. */
static int cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    int shifted = 0;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b) && 256 + shifted++ == (int)cp) return b;
    return -1;
}

/* ---- hash tables ---- */

static size_t table_size(size_t n) {
    size_t size = 64;
    while (size < 2 * n) size *= 2;
    return size;
}

/* ---- building ---- */

typedef struct {
    sv_tokenizer *t;
    const char *path;
} loader;

static sv_status pool_add(sv_tokenizer *t, const char *s, size_t n, span *out) {
    if (t->pool_len + n > UINT32_MAX - 1) return sv_fail(SV_ERR_UNSUPPORTED, "tokenizer strings exceed 4 GiB");
    if (t->pool_len + n > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : (1u << 16);
        while (cap < t->pool_len + n) cap *= 2;
        char *p = realloc(t->pool, cap);
        if (!p) return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
        t->pool = p;
        t->pool_cap = cap;
    }
    if (n) memcpy(t->pool + t->pool_len, s, n);
    out->off = (uint32_t)t->pool_len;
    out->len = (uint32_t)n;
    t->pool_len += n;
    return SV_OK;
}

static sv_status load_vocab(loader *L, const json_value *vocab) {
    sv_tokenizer *t = L->t;
    if (!vocab || vocab->type != JSON_OBJECT)
        return sv_fail(SV_ERR_FORMAT, "%s: model.vocab must be an object of token -> id", L->path);
    size_t n = vocab->len;
    t->vocab_text = malloc((n ? n : 1) * sizeof *t->vocab_text);
    t->vocab_id = malloc((n ? n : 1) * sizeof *t->vocab_id);
    size_t slots = table_size(n);
    t->vocab_slots = malloc(slots * sizeof *t->vocab_slots);
    if (!t->vocab_text || !t->vocab_id || !t->vocab_slots)
        return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
    memset(t->vocab_slots, 0xFF, slots * sizeof *t->vocab_slots);
    t->vocab_mask = slots - 1;
    for (size_t k = 0; k < n; k++) {
        const json_member *m = &vocab->members[k];
        if (m->value.type != JSON_NUMBER || !m->value.is_integer || m->value.integer < 0 || m->value.integer >= INT32_MAX)
            return sv_fail(SV_ERR_FORMAT, "%s: model.vocab[\"%.100s\"] must be a non-negative integer id", L->path, m->key);
        int32_t id = (int32_t)m->value.integer;
        size_t i = hash_bytes(m->key, m->key_len) & t->vocab_mask;
        for (; t->vocab_slots[i] >= 0; i = (i + 1) & t->vocab_mask) {
            const span *sp = &t->vocab_text[t->vocab_slots[i]];
            if (sp->len == m->key_len && memcmp(t->pool + sp->off, m->key, m->key_len) == 0) break;
        }
        if (t->vocab_slots[i] >= 0) { /* a repeated key: the last one wins, as in a JSON map */
            t->vocab_id[t->vocab_slots[i]] = id;
            continue;
        }
        sv_status st = pool_add(t, m->key, m->key_len, &t->vocab_text[t->n_vocab]);
        if (st != SV_OK) return st;
        t->vocab_id[t->n_vocab] = id;
        t->vocab_slots[i] = (int32_t)t->n_vocab++;
    }
    return SV_OK;
}

static sv_status add_merge(loader *L, size_t rank, const char *a, size_t na, const char *b, size_t nb) {
    sv_tokenizer *t = L->t;
    int32_t ia = vocab_lookup(t, a, na), ib = vocab_lookup(t, b, nb);
    if (ia < 0 || ib < 0)
        return sv_fail(SV_ERR_FORMAT, "%s: merge %zu names a token not in the vocab: '%.100s'", L->path, rank,
                       ia < 0 ? a : b);
    char both[1024];
    if (na + nb > sizeof both)
        return sv_fail(SV_ERR_FORMAT, "%s: merge %zu joins tokens longer than %zu bytes", L->path, rank, sizeof both);
    memcpy(both, a, na);
    memcpy(both + na, b, nb);
    int32_t merged = vocab_lookup(t, both, na + nb);
    if (merged < 0)
        return sv_fail(SV_ERR_FORMAT, "%s: merge %zu ('%.100s' + '%.100s') makes a token not in the vocab", L->path, rank,
                       a, b);
    uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
    size_t i = merge_slot(t, key);
    t->merge_keys[i] = key; /* a repeated pair takes its last rank, as tokenizers' map does */
    t->merge_rank[i] = (int32_t)rank;
    t->merge_new[i] = merged;
    return SV_OK;
}

static sv_status load_merges(loader *L, const json_value *merges) {
    sv_tokenizer *t = L->t;
    if (!merges || merges->type != JSON_ARRAY)
        return sv_fail(SV_ERR_FORMAT, "%s: model.merges must be an array", L->path);
    if (merges->len >= INT32_MAX) return sv_fail(SV_ERR_FORMAT, "%s: too many merges", L->path);
    size_t slots = table_size(merges->len);
    t->merge_keys = malloc(slots * sizeof *t->merge_keys);
    t->merge_rank = malloc(slots * sizeof *t->merge_rank);
    t->merge_new = malloc(slots * sizeof *t->merge_new);
    if (!t->merge_keys || !t->merge_rank || !t->merge_new) return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
    memset(t->merge_keys, 0xFF, slots * sizeof *t->merge_keys);
    t->merge_mask = slots - 1;
    for (size_t r = 0; r < merges->len; r++) {
        const json_value *m = &merges->items[r];
        sv_status st;
        if (m->type == JSON_STRING) {
            const char *space = memchr(m->str, ' ', m->len);
            if (!space || memchr(space + 1, ' ', m->len - (size_t)(space + 1 - m->str)))
                return sv_fail(SV_ERR_FORMAT, "%s: merge %zu '%.100s' is not two tokens separated by one space", L->path, r,
                               m->str);
            size_t na = (size_t)(space - m->str);
            st = add_merge(L, r, m->str, na, space + 1, m->len - na - 1);
        } else if (m->type == JSON_ARRAY && m->len == 2 && m->items[0].type == JSON_STRING &&
                   m->items[1].type == JSON_STRING) {
            st = add_merge(L, r, m->items[0].str, m->items[0].len, m->items[1].str, m->items[1].len);
        } else {
            return sv_fail(SV_ERR_FORMAT, "%s: merge %zu must be a string \"a b\" or a pair [\"a\", \"b\"]", L->path, r);
        }
        if (st != SV_OK) return st;
    }
    return SV_OK;
}

static sv_status load_model(loader *L, const json_value *model) {
    sv_tokenizer *t = L->t;
    if (!model || model->type != JSON_OBJECT) return sv_fail(SV_ERR_FORMAT, "%s: \"model\" must be an object", L->path);
    const json_value *type = json_get(model, "type");
    if (type && (type->type != JSON_STRING || strcmp(type->str, "BPE") != 0))
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: model type %s%s%s is not supported (only BPE)", L->path,
                       type->type == JSON_STRING ? "'" : "", type->type == JSON_STRING ? type->str : "(not a string)",
                       type->type == JSON_STRING ? "'" : "");
    const json_value *dropout = json_get(model, "dropout");
    if (dropout && dropout->type != JSON_NULL)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", L->path);
    const char *keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        const json_value *v = json_get(model, keys[k]);
        if (v && v->type != JSON_NULL && !(v->type == JSON_STRING && v->len == 0))
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: BPE %s is not supported", L->path, keys[k]);
    }
    int byte_fallback = 0;
    if (json_get_bool(model, "byte_fallback", &byte_fallback) < 0 || json_get_bool(model, "fuse_unk", &t->fuse_unk) < 0 ||
        json_get_bool(model, "ignore_merges", &t->ignore_merges) < 0)
        return sv_fail(SV_ERR_FORMAT, "%s: model.byte_fallback, fuse_unk and ignore_merges must be true or false", L->path);
    if (byte_fallback) return sv_fail(SV_ERR_UNSUPPORTED, "%s: BPE byte_fallback is not supported", L->path);
    sv_status st = load_vocab(L, json_get(model, "vocab"));
    if (st == SV_OK) st = load_merges(L, json_get(model, "merges"));
    if (st != SV_OK) return st;
    t->unk_id = NO_ID;
    const json_value *unk = json_get(model, "unk_token");
    if (unk && unk->type != JSON_NULL) {
        if (unk->type != JSON_STRING) return sv_fail(SV_ERR_FORMAT, "%s: model.unk_token must be a string", L->path);
        t->unk_id = vocab_lookup(t, unk->str, unk->len);
        if (t->unk_id < 0) return sv_fail(SV_ERR_FORMAT, "%s: unk_token '%.100s' is not in the vocab", L->path, unk->str);
    }
    byte_alphabet(t->byte_cp);
    for (int b = 0; b < 256; b++) {
        char ch[4];
        t->byte_id[b] = vocab_lookup(t, ch, sv_utf8_put(t->byte_cp[b], ch));
    }
    return SV_OK;
}

static sv_status get_token_flag(loader *L, const json_value *v, size_t k, const char *key, int dflt, int *out) {
    *out = dflt;
    if (json_get_bool(v, key, out) < 0)
        return sv_fail(SV_ERR_FORMAT, "%s: added_tokens[%zu].%s must be true or false", L->path, k, key);
    return SV_OK;
}

static sv_status load_added(loader *L, const json_value *list) {
    sv_tokenizer *t = L->t;
    for (int b = 0; b < 256; b++) t->added_by_byte[b] = -1;
    if (!list || list->type == JSON_NULL) return SV_OK;
    if (list->type != JSON_ARRAY) return sv_fail(SV_ERR_FORMAT, "%s: added_tokens must be an array", L->path);
    t->added = calloc(list->len ? list->len : 1, sizeof *t->added);
    if (!t->added) return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
    for (size_t k = 0; k < list->len; k++) {
        const json_value *v = &list->items[k];
        added_token *a = &t->added[t->n_added];
        int64_t id;
        const json_value *content = json_get(v, "content");
        if (v->type != JSON_OBJECT || json_get_int(v, "id", &id) != 1 || id < 0 || id >= INT32_MAX)
            return sv_fail(SV_ERR_FORMAT, "%s: added_tokens[%zu] needs a non-negative integer \"id\"", L->path, k);
        if (!content || content->type != JSON_STRING || content->len == 0)
            return sv_fail(SV_ERR_FORMAT, "%s: added_tokens[%zu] needs a non-empty \"content\" string", L->path, k);
        int single_word;
        sv_status st = get_token_flag(L, v, k, "single_word", 0, &single_word);
        if (st == SV_OK) st = get_token_flag(L, v, k, "lstrip", 0, &a->lstrip);
        if (st == SV_OK) st = get_token_flag(L, v, k, "rstrip", 0, &a->rstrip);
        if (st == SV_OK) st = get_token_flag(L, v, k, "normalized", 1, &a->normalized);
        if (st == SV_OK) st = get_token_flag(L, v, k, "special", 0, &a->special);
        if (st != SV_OK) return st;
        if (single_word)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: added token '%.100s' has single_word, which is not supported", L->path,
                           content->str);
        st = pool_add(t, content->str, content->len, &a->text);
        if (st != SV_OK) return st;
        a->id = (int32_t)id;
        unsigned char first = (unsigned char)content->str[0];
        a->next_same_byte = t->added_by_byte[first];
        t->added_by_byte[first] = (int32_t)t->n_added++;
    }
    return SV_OK;
}

static sv_status check_normalizer(loader *L, const json_value *v) {
    if (!v || v->type == JSON_NULL) return SV_OK;
    const char *type = json_get_string(v, "type");
    const json_value *list = json_get(v, "normalizers");
    if (type && strcmp(type, "Sequence") == 0 && list && list->type == JSON_ARRAY && list->len == 0) return SV_OK;
    return sv_fail(SV_ERR_UNSUPPORTED, "%s: normalizer '%s' is not supported (only null)", L->path,
                   type ? type : "(no type)");
}

static sv_status check_decoder(loader *L, const json_value *v) {
    const char *type = v ? json_get_string(v, "type") : NULL;
    if (type && strcmp(type, "ByteLevel") == 0) return SV_OK;
    return sv_fail(SV_ERR_UNSUPPORTED, "%s: decoder '%s' is not supported (only ByteLevel)", L->path,
                   type ? type : (!v || v->type == JSON_NULL ? "null" : "(no type)"));
}

/* Appends the ids of TemplateProcessing special token `name` to *ids. */
static sv_status template_ids(loader *L, const json_value *specials, const char *name, int32_t **ids, size_t *n) {
    const json_value *sp = json_get(specials, name);
    const json_value *list = sp ? json_get(sp, "ids") : NULL;
    if (!list || list->type != JSON_ARRAY)
        return sv_fail(SV_ERR_FORMAT, "%s: post_processor special token '%.100s' has no \"ids\" list", L->path, name);
    int32_t *p = realloc(*ids, (*n + list->len + 1) * sizeof *p);
    if (!p) return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
    *ids = p;
    for (size_t i = 0; i < list->len; i++) {
        const json_value *v = &list->items[i];
        if (v->type != JSON_NUMBER || !v->is_integer || v->integer < 0 || v->integer >= INT32_MAX)
            return sv_fail(SV_ERR_FORMAT, "%s: post_processor special token '%.100s' has a bad id", L->path, name);
        p[(*n)++] = (int32_t)v->integer;
    }
    return SV_OK;
}

static sv_status load_template(loader *L, const json_value *v) {
    sv_tokenizer *t = L->t;
    const json_value *single = json_get(v, "single"), *specials = json_get(v, "special_tokens");
    if (!single || single->type != JSON_ARRAY)
        return sv_fail(SV_ERR_FORMAT, "%s: TemplateProcessing needs a \"single\" template list", L->path);
    int seen_text = 0;
    for (size_t i = 0; i < single->len; i++) {
        const json_value *item = &single->items[i];
        const json_value *special = json_get(item, "SpecialToken");
        if (json_get(item, "Sequence")) {
            const char *which = json_get_string(json_get(item, "Sequence"), "id");
            if (seen_text || !which || strcmp(which, "A") != 0)
                return sv_fail(SV_ERR_UNSUPPORTED, "%s: TemplateProcessing single template must hold sequence A once",
                               L->path);
            seen_text = 1;
        } else if (special && json_get_string(special, "id")) {
            sv_status st = seen_text ? template_ids(L, specials, json_get_string(special, "id"), &t->suffix_ids, &t->n_suffix)
                                     : template_ids(L, specials, json_get_string(special, "id"), &t->prefix_ids, &t->n_prefix);
            if (st != SV_OK) return st;
        } else {
            return sv_fail(SV_ERR_FORMAT, "%s: TemplateProcessing item %zu is neither Sequence nor SpecialToken", L->path, i);
        }
    }
    if (!seen_text) return sv_fail(SV_ERR_FORMAT, "%s: TemplateProcessing single template lacks sequence A", L->path);
    return SV_OK;
}

static sv_status load_post_processor(loader *L, const json_value *v, int depth) {
    if (!v || v->type == JSON_NULL) return SV_OK;
    const char *type = json_get_string(v, "type");
    if (type && strcmp(type, "ByteLevel") == 0) return SV_OK; /* it only trims offsets */
    if (type && strcmp(type, "TemplateProcessing") == 0) {
        if (L->t->n_prefix || L->t->n_suffix)
            return sv_fail(SV_ERR_UNSUPPORTED, "%s: more than one TemplateProcessing post-processor", L->path);
        return load_template(L, v);
    }
    const json_value *list = json_get(v, "processors");
    if (type && strcmp(type, "Sequence") == 0 && list && list->type == JSON_ARRAY && depth < 4) {
        for (size_t i = 0; i < list->len; i++) {
            sv_status st = load_post_processor(L, &list->items[i], depth + 1);
            if (st != SV_OK) return st;
        }
        return SV_OK;
    }
    return sv_fail(SV_ERR_UNSUPPORTED, "%s: post_processor '%s' is not supported (TemplateProcessing, ByteLevel, Sequence)",
                   L->path, type ? type : "(no type)");
}

/* Fills the per-id tables decoding and id_to_token use. */
static sv_status build_id_tables(sv_tokenizer *t) {
    int32_t max_id = -1;
    for (size_t k = 0; k < t->n_vocab; k++) max_id = t->vocab_id[k] > max_id ? t->vocab_id[k] : max_id;
    for (size_t k = 0; k < t->n_added; k++) max_id = t->added[k].id > max_id ? t->added[k].id : max_id;
    t->n_ids = max_id + 1;
    size_t n = t->n_ids > 0 ? (size_t)t->n_ids : 1;
    t->id_text = malloc(n * sizeof *t->id_text);
    t->id_bytes = malloc(n * sizeof *t->id_bytes);
    t->id_special = calloc(n, 1);
    if (!t->id_text || !t->id_bytes || !t->id_special) return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
    for (size_t i = 0; i < n; i++) t->id_text[i] = t->id_bytes[i] = (span){NO_TEXT, 0};
    for (size_t k = 0; k < t->n_vocab; k++) t->id_text[t->vocab_id[k]] = t->vocab_text[k];
    /* added tokens take precedence for their ids; count the strings the model vocab lacks */
    int32_t distinct = (int32_t)t->n_vocab;
    for (size_t k = 0; k < t->n_added; k++) {
        const added_token *a = &t->added[k];
        t->id_text[a->id] = a->text;
        t->id_special[a->id] = (uint8_t)a->special;
        int repeated = vocab_lookup(t, t->pool + a->text.off, a->text.len) >= 0;
        for (size_t j = 0; j < k && !repeated; j++)
            repeated = t->added[j].text.len == a->text.len &&
                       memcmp(t->pool + t->added[j].text.off, t->pool + a->text.off, a->text.len) == 0;
        distinct += !repeated;
    }
    t->vocab_size = distinct;
    char *bytes = NULL;
    size_t cap = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        span s = t->id_text[id];
        if (s.off == NO_TEXT) continue;
        if (s.len > cap) {
            char *p = realloc(bytes, s.len);
            if (!p) {
                free(bytes);
                return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
            }
            bytes = p;
            cap = s.len;
        }
        /* pool_add may move the pool: read the text into `bytes` first */
        const unsigned char *txt = (const unsigned char *)t->pool + s.off;
        size_t nb = 0;
        int all_bytes = 1;
        for (size_t i = 0; i < s.len && all_bytes;) {
            uint32_t cp;
            i += sv_utf8_next(txt + i, s.len - i, &cp);
            int b = cp_to_byte(cp);
            if (b < 0) all_bytes = 0;
            else bytes[nb++] = (char)b;
        }
        if (!all_bytes) {
            memcpy(bytes, txt, s.len);
            nb = s.len;
        }
        sv_status st = pool_add(t, bytes, nb, &t->id_bytes[id]);
        if (st != SV_OK) {
            free(bytes);
            return st;
        }
        if (nb > t->max_token_bytes) t->max_token_bytes = nb;
    }
    free(bytes);
    return SV_OK;
}

/* Truncation and fixed-length padding would change the ids of one text; batch
 * padding (to the longest in the batch) does not. */
static sv_status check_truncation_padding(loader *L, const json_value *root) {
    const json_value *trunc = json_get(root, "truncation"), *pad = json_get(root, "padding");
    if (trunc && trunc->type != JSON_NULL)
        return sv_fail(SV_ERR_UNSUPPORTED, "%s: \"truncation\" is set; this engine does not truncate, so it must be null",
                       L->path);
    if (!pad || pad->type == JSON_NULL) return SV_OK;
    const json_value *strategy = json_get(pad, "strategy"), *multiple = json_get(pad, "pad_to_multiple_of");
    if (strategy && strategy->type == JSON_STRING && strcmp(strategy->str, "BatchLongest") == 0 &&
        (!multiple || multiple->type == JSON_NULL))
        return SV_OK;
    return sv_fail(SV_ERR_UNSUPPORTED, "%s: \"padding\" pads single texts; this engine does not pad, so it must be null",
                   L->path);
}

sv_status sv_tokenizer_load(const char *path, sv_tokenizer **out) {
    if (!out) return sv_fail(SV_ERR_ARG, "sv_tokenizer_load: out is NULL");
    *out = NULL;
    if (!path || !path[0]) return sv_fail(SV_ERR_ARG, "no tokenizer.json path given");
    char err[512];
    size_t len;
    char *text = json_read_file(path, MAX_TOKENIZER_BYTES, &len, err, sizeof err);
    if (!text) return sv_fail(SV_ERR_IO, "%s", err);
    sv_status st = sv_tokenizer_load_json(text, len, path, out);
    free(text);
    return st;
}

sv_status sv_tokenizer_load_json(const char *text, size_t len, const char *path, sv_tokenizer **out) {
    *out = NULL;
    char err[512];
    json_doc *doc = json_parse(text, len, err, sizeof err);
    if (!doc) return sv_fail(SV_ERR_FORMAT, "%s: %s", path, err);
    sv_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        json_free(doc);
        return sv_fail(SV_ERR_NOMEM, "out of memory loading the tokenizer");
    }
    loader L = {t, path};
    const json_value *root = json_root(doc);
    sv_status st = root->type == JSON_OBJECT ? SV_OK : sv_fail(SV_ERR_FORMAT, "%s: not a JSON object", path);
    if (st == SV_OK) st = check_truncation_padding(&L, root);
    if (st == SV_OK) st = load_model(&L, json_get(root, "model"));
    if (st == SV_OK) st = load_added(&L, json_get(root, "added_tokens"));
    if (st == SV_OK) st = check_normalizer(&L, json_get(root, "normalizer"));
    if (st == SV_OK) st = sv_pretok_parse(json_get(root, "pre_tokenizer"), path, &t->pretok);
    if (st == SV_OK) st = load_post_processor(&L, json_get(root, "post_processor"), 0);
    if (st == SV_OK) st = check_decoder(&L, json_get(root, "decoder"));
    if (st == SV_OK) st = build_id_tables(t);
    json_free(doc);
    if (st != SV_OK) {
        sv_tokenizer_free(t);
        return st;
    }
    *out = t;
    return SV_OK;
}

void sv_tokenizer_free(sv_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->vocab_text);
    free(t->vocab_id);
    free(t->vocab_slots);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_new);
    free(t->added);
    free(t->id_text);
    free(t->id_bytes);
    free(t->id_special);
    free(t->prefix_ids);
    free(t->suffix_ids);
    free(t);
}

int32_t sv_tokenizer_vocab_size(const sv_tokenizer *t) { return t ? t->vocab_size : 0; }

int32_t sv_tokenizer_token_to_id(const sv_tokenizer *t, const char *token, size_t len) {
    if (!t || (!token && len)) return NO_ID;
    for (size_t k = 0; k < t->n_added; k++)
        if (t->added[k].text.len == len && memcmp(t->pool + t->added[k].text.off, token, len) == 0) return t->added[k].id;
    return vocab_lookup(t, token, len);
}

const char *sv_tokenizer_id_to_token(const sv_tokenizer *t, int32_t id, size_t *len_out) {
    if (!t || id < 0 || id >= t->n_ids || t->id_text[id].off == NO_TEXT) return NULL;
    if (len_out) *len_out = t->id_text[id].len;
    return t->pool + t->id_text[id].off;
}

int32_t sv_tokenizer_is_special(const sv_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && t->id_special[id];
}

