/* tokenizer_model.h - the loaded tokenizer's tables, shared by the loader
 * (tokenizer_load.c) and the encoder and decoder (tokenizer.c).  Internal:
 * callers see only the opaque sv_tokenizer of tokenizer.h. */
#ifndef SV_TOKENIZER_MODEL_H
#define SV_TOKENIZER_MODEL_H

#include <stdint.h>
#include <string.h>

#include "tokenizer.h"

#define NO_ID (-1)

typedef struct {
    uint32_t off, len; /* bytes in the string pool */
} span;

typedef struct {
    span text;
    int32_t id;
    int special, lstrip, rstrip, normalized;
    int32_t next_same_byte; /* next added token with the same first byte, -1 at the end */
} added_token;

struct sv_tokenizer {
    char *pool; /* every string: vocab entries, added tokens, decoded bytes */
    size_t pool_len, pool_cap;

    /* model vocabulary: token text -> id, open addressing over entry indices */
    span *vocab_text;
    int32_t *vocab_id;
    size_t n_vocab;
    int32_t *vocab_slots;
    size_t vocab_mask;

    /* merges: (left id, right id) -> rank and merged id */
    uint64_t *merge_keys;
    int32_t *merge_rank, *merge_new;
    size_t merge_mask;

    uint32_t byte_cp[256]; /* the byte-level character standing for each byte */
    int32_t byte_id[256];  /* its vocab id, NO_ID if absent */
    int ignore_merges, fuse_unk;
    int32_t unk_id;

    added_token *added;
    size_t n_added;
    int32_t added_by_byte[256]; /* first added token starting with this byte, -1 if none */

    /* per id, for decoding */
    int32_t n_ids;
    span *id_text;  /* len 0 and off UINT32_MAX: no token has this id */
    span *id_bytes; /* what the ByteLevel decoder turns the token into */
    uint8_t *id_special;
    size_t max_token_bytes;

    sv_pretokenizer pretok;
    int32_t *prefix_ids, *suffix_ids; /* post-processor template around the text, with add_special */
    size_t n_prefix, n_suffix;
    int32_t vocab_size; /* distinct token strings, model vocab and added tokens together */
};

#define NO_TEXT UINT32_MAX

/* ---- hashing ---- */

static inline uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static inline uint64_t hash_pair(uint64_t key) {
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 31);
}

/* The model vocabulary's id for the token text s[0..n), or NO_ID. */
static inline int32_t vocab_lookup(const sv_tokenizer *t, const char *s, size_t n) {
    if (!t->vocab_slots) return NO_ID;
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int32_t e = t->vocab_slots[i];
        if (e < 0) return NO_ID;
        const span *sp = &t->vocab_text[e];
        if (sp->len == n && memcmp(t->pool + sp->off, s, n) == 0) return t->vocab_id[e];
    }
}

/* Index of key's slot in the merge table: the key itself or the empty slot where it goes. */
static inline size_t merge_slot(const sv_tokenizer *t, uint64_t key) {
    size_t i = hash_pair(key) & t->merge_mask;
    while (t->merge_keys[i] != UINT64_MAX && t->merge_keys[i] != key) i = (i + 1) & t->merge_mask;
    return i;
}

#endif
