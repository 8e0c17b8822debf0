/* tokenizer.c - encoding and decoding with the byte-level BPE tokenizer read
 * from a Hugging Face tokenizer.json (tokenizer_load.c), producing the same
 * ids and text as the `tokenizers` library.
 *
 * Encoding: invalid UTF-8 is first replaced by U+FFFD (what Python's
 * bytes.decode("utf-8", "replace") gives), added tokens are cut out of the
 * raw text (leftmost-longest, non-normalized tokens first, then normalized
 * ones in what is left), the rest goes through the pre-tokenizer pipeline
 * (pretokenize.c) and each piece through the BPE merge loop: merge ranks in a
 * hash table, a binary heap of candidate pairs, a linked list of symbols.
 *
 * Decoding: the ByteLevel decoder maps each token's characters back to bytes
 * (a token with a character outside the byte alphabet contributes its UTF-8
 * text as is) and the bytes become text the way Rust's
 * String::from_utf8_lossy does: each maximal invalid subsequence is one
 * U+FFFD.  The incremental decoder holds back an incomplete trailing
 * character, so its pieces concatenate to the full decode.
 *
 * A loaded tokenizer is read-only: encode/decode may run on many threads. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tokenizer_model.h"
#include "unicode_tables.h"
#include "utf8.h"

/* ---- encoding ---- */

typedef struct {
    int32_t *ids;
    size_t n, cap;
    /* BPE scratch, sized to the longest piece so far */
    int32_t *sym_id, *sym_prev, *sym_next;
    struct heap_entry *heap;
    char *word; /* byte-level text of a piece, for ignore_merges */
    size_t sym_cap;
    sv_pretok_scratch pre;
} encoder;

struct heap_entry {
    int32_t rank, pos, new_id;
};

static sv_status emit(encoder *e, int32_t id) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 256;
        int32_t *p = realloc(e->ids, cap * sizeof *p);
        if (!p) return sv_fail(SV_ERR_NOMEM, "out of memory while encoding");
        e->ids = p;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
    return SV_OK;
}

static int heap_less(const struct heap_entry *a, const struct heap_entry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct heap_entry *h, size_t *n, struct heap_entry x) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(&x, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

static struct heap_entry heap_pop(struct heap_entry *h, size_t *n) {
    struct heap_entry top = h[0], x = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = x;
    return top;
}

/* Queues the merge of the symbol at pos with its successor, if there is one. */
static void queue_pair(const sv_tokenizer *t, encoder *e, size_t *nh, int32_t pos) {
    int32_t next = e->sym_next[pos];
    if (next < 0) return;
    uint64_t key = ((uint64_t)(uint32_t)e->sym_id[pos] << 32) | (uint32_t)e->sym_id[next];
    size_t slot = merge_slot(t, key);
    if (t->merge_keys[slot] == key) heap_push(e->heap, nh, (struct heap_entry){t->merge_rank[slot], pos, t->merge_new[slot]});
}

static sv_status grow_symbols(encoder *e, size_t n) {
    if (n <= e->sym_cap) return SV_OK;
    size_t cap = e->sym_cap ? e->sym_cap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(e->sym_id, cap * sizeof *a);
    if (a) e->sym_id = a;
    int32_t *b = realloc(e->sym_prev, cap * sizeof *b);
    if (b) e->sym_prev = b;
    int32_t *c = realloc(e->sym_next, cap * sizeof *c);
    if (c) e->sym_next = c;
    struct heap_entry *h = realloc(e->heap, 2 * cap * sizeof *h);
    if (h) e->heap = h;
    char *w = realloc(e->word, 2 * cap);
    if (w) e->word = w;
    if (!a || !b || !c || !h || !w) return sv_fail(SV_ERR_NOMEM, "out of memory while encoding");
    e->sym_cap = cap;
    return SV_OK;
}

/* BPE over one pre-tokenized piece w[0..n) (raw bytes; each stands for its byte-level character). */
static sv_status bpe_piece(const sv_tokenizer *t, encoder *e, const unsigned char *w, size_t n) {
    if (n > INT32_MAX / 2) return sv_fail(SV_ERR_ARG, "a %zu-byte piece of text is too long to tokenize", n);
    sv_status st = grow_symbols(e, n);
    if (st != SV_OK) return st;
    if (t->ignore_merges) {
        size_t len = 0;
        for (size_t i = 0; i < n; i++) len += sv_utf8_put(t->byte_cp[w[i]], e->word + len);
        int32_t id = vocab_lookup(t, e->word, len);
        if (id >= 0) return emit(e, id);
    }
    /* initial symbols: one per byte; a byte missing from the vocab becomes unk or is dropped */
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[w[i]];
        if (id < 0) {
            if (t->unk_id < 0 || (t->fuse_unk && ns > 0 && e->sym_id[ns - 1] == t->unk_id)) continue;
            id = t->unk_id;
        }
        e->sym_id[ns] = id;
        e->sym_prev[ns] = ns - 1;
        e->sym_next[ns] = ns + 1;
        ns++;
    }
    if (ns == 0) return SV_OK;
    e->sym_next[ns - 1] = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++) queue_pair(t, e, &nh, i);
    while (nh > 0) {
        struct heap_entry top = heap_pop(e->heap, &nh);
        int32_t pos = top.pos, next = e->sym_next[pos];
        if (e->sym_id[pos] < 0 || next < 0) continue; /* merged away meanwhile */
        uint64_t key = ((uint64_t)(uint32_t)e->sym_id[pos] << 32) | (uint32_t)e->sym_id[next];
        size_t slot = merge_slot(t, key);
        if (t->merge_keys[slot] != key || t->merge_new[slot] != top.new_id) continue; /* stale pair */
        e->sym_id[pos] = top.new_id;
        e->sym_id[next] = -1;
        e->sym_next[pos] = e->sym_next[next];
        if (e->sym_next[next] >= 0) e->sym_prev[e->sym_next[next]] = pos;
        if (e->sym_prev[pos] >= 0) queue_pair(t, e, &nh, e->sym_prev[pos]);
        queue_pair(t, e, &nh, pos);
    }
    for (int32_t i = 0; i >= 0; i = e->sym_next[i]) {
        st = emit(e, e->sym_id[i]);
        if (st != SV_OK) return st;
    }
    return SV_OK;
}

static sv_status encode_plain(const sv_tokenizer *t, encoder *e, const char *text, size_t len) {
    if (len == 0) return SV_OK;
    sv_status st = sv_pretok_run(&t->pretok, text, len, &e->pre);
    for (size_t i = 0; i < e->pre.n_pieces && st == SV_OK; i++)
        st = bpe_piece(t, e, (const unsigned char *)e->pre.buf + e->pre.pieces[i].off, e->pre.pieces[i].len);
    return st;
}

/* Longest added token (with the given normalized flag) starting at s[0..n), or -1. */
static int32_t added_at(const sv_tokenizer *t, const char *s, size_t n, int normalized) {
    int32_t best = -1;
    for (int32_t k = t->added_by_byte[(unsigned char)s[0]]; k >= 0; k = t->added[k].next_same_byte) {
        const added_token *a = &t->added[k];
        if (a->normalized != normalized || a->text.len > n || (best >= 0 && a->text.len <= t->added[best].text.len))
            continue;
        if (memcmp(t->pool + a->text.off, s, a->text.len) == 0) best = k;
    }
    return best;
}

/* Start of the whitespace run that ends at s[i] (i itself when there is none). */
static size_t space_run_start(const char *s, size_t i) {
    while (i > 0) {
        size_t k = i - 1;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--; /* back to the character's first byte */
        uint32_t cp;
        sv_utf8_next((const unsigned char *)s + k, i - k, &cp);
        if (!(sv_uc_flags(cp) & SV_UC_SPACE)) break;
        i = k;
    }
    return i;
}

/* End of the whitespace run that starts at s[i]. */
static size_t space_after(const char *s, size_t i, size_t n) {
    while (i < n) {
        uint32_t cp;
        size_t step = sv_utf8_next((const unsigned char *)s + i, n - i, &cp);
        if (!(sv_uc_flags(cp) & SV_UC_SPACE)) break;
        i += step;
    }
    return i;
}

/* Cuts the added tokens of one pass out of s[0..n) and passes the text
 * between them on: pass 0 matches non-normalized tokens, pass 1 normalized
 * ones (the normalizer is the identity), then the text is pre-tokenized. */
static sv_status encode_span(const sv_tokenizer *t, encoder *e, const char *s, size_t n, int pass) {
    if (pass == 2) return encode_plain(t, e, s, n);
    if (t->n_added == 0) return encode_span(t, e, s, n, pass + 1);
    size_t done = 0; /* end of what has been emitted */
    sv_status st = SV_OK;
    for (size_t i = 0; i < n && st == SV_OK;) {
        int32_t k = added_at(t, s + i, n - i, pass == 1);
        if (k < 0) {
            i++;
            continue;
        }
        const added_token *a = &t->added[k];
        size_t start = i, stop = i + a->text.len;
        if (a->lstrip) { /* the token swallows the whitespace before it, unless emitted already */
            start = space_run_start(s, i);
            if (start < done) start = done;
        }
        if (a->rstrip) stop = space_after(s, stop, n);
        /* matching resumes after the token itself, so a match may start inside the
         * rstrip whitespace; tokenizers then emits it without a gap, and so do we */
        if (start > done) st = encode_span(t, e, s + done, start - done, pass + 1);
        if (st == SV_OK) st = emit(e, a->id);
        done = stop;
        i += a->text.len;
    }
    if (st == SV_OK && done < n) st = encode_span(t, e, s + done, n - done, pass + 1);
    return st;
}

sv_status sv_tokenizer_encode(const sv_tokenizer *t, const char *text, size_t len, int32_t add_special,
                              int32_t **ids_out, size_t *n_out) {
    if (!ids_out || !n_out) return sv_fail(SV_ERR_ARG, "sv_tokenizer_encode: NULL output pointer");
    *ids_out = NULL;
    *n_out = 0;
    if (!t) return sv_fail(SV_ERR_ARG, "sv_tokenizer_encode: no tokenizer");
    if (!text && len) return sv_fail(SV_ERR_ARG, "sv_tokenizer_encode: text is NULL");
    char *fixed = NULL;
    if (!sv_utf8_valid((const unsigned char *)text, len)) {
        if (len > SIZE_MAX / 3) return sv_fail(SV_ERR_ARG, "text too long");
        size_t used;
        fixed = malloc(3 * len);
        if (!fixed) return sv_fail(SV_ERR_NOMEM, "out of memory while encoding");
        len = sv_utf8_lossy((const unsigned char *)text, len, 1, fixed, &used);
        text = fixed;
    }
    encoder e = {0};
    sv_status st = SV_OK;
    for (size_t i = 0; add_special && i < t->n_prefix && st == SV_OK; i++) st = emit(&e, t->prefix_ids[i]);
    if (st == SV_OK) st = encode_span(t, &e, text, len, 0);
    for (size_t i = 0; add_special && i < t->n_suffix && st == SV_OK; i++) st = emit(&e, t->suffix_ids[i]);
    if (st == SV_OK && !e.ids && !(e.ids = malloc(sizeof *e.ids))) /* a freeable array even for no tokens */
        st = sv_fail(SV_ERR_NOMEM, "out of memory while encoding");
    free(fixed);
    free(e.sym_id);
    free(e.sym_prev);
    free(e.sym_next);
    free(e.heap);
    free(e.word);
    sv_pretok_scratch_free(&e.pre);
    if (st != SV_OK) {
        free(e.ids);
        return st;
    }
    *ids_out = e.ids;
    *n_out = e.n;
    return SV_OK;
}

/* ---- decoding ---- */

sv_status sv_tokenizer_decode(const sv_tokenizer *t, const int32_t *ids, size_t n, int32_t skip_special, char **text_out,
                              size_t *len_out) {
    if (!text_out || !len_out) return sv_fail(SV_ERR_ARG, "sv_tokenizer_decode: NULL output pointer");
    *text_out = NULL;
    *len_out = 0;
    if (!t) return sv_fail(SV_ERR_ARG, "sv_tokenizer_decode: no tokenizer");
    if (!ids && n) return sv_fail(SV_ERR_ARG, "sv_tokenizer_decode: ids is NULL");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0) return sv_fail(SV_ERR_ARG, "token id %d at position %zu is negative", ids[i], i);
        /* ids naming no token are skipped, as tokenizers does */
        if (ids[i] < t->n_ids && !(skip_special && t->id_special[ids[i]])) total += t->id_bytes[ids[i]].len;
    }
    unsigned char *bytes = malloc(total ? total : 1);
    char *out = malloc(3 * total + 1);
    if (!bytes || !out) {
        free(bytes);
        free(out);
        return sv_fail(SV_ERR_NOMEM, "out of memory while decoding");
    }
    size_t nb = 0, used;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= t->n_ids || (skip_special && t->id_special[ids[i]])) continue;
        span s = t->id_bytes[ids[i]];
        if (s.off == NO_TEXT) continue;
        memcpy(bytes + nb, t->pool + s.off, s.len);
        nb += s.len;
    }
    size_t len = sv_utf8_lossy(bytes, nb, 1, out, &used);
    free(bytes);
    out[len] = '\0';
    *text_out = out;
    *len_out = len;
    return SV_OK;
}

struct sv_detokenizer {
    const sv_tokenizer *t;
    int skip_special;
    unsigned char *in; /* held-back bytes of an incomplete character, then the new token's */
    size_t n_in;
    char *out;
};

sv_status sv_detokenizer_create(const sv_tokenizer *t, int32_t skip_special, sv_detokenizer **out) {
    if (!out) return sv_fail(SV_ERR_ARG, "sv_detokenizer_create: out is NULL");
    *out = NULL;
    if (!t) return sv_fail(SV_ERR_ARG, "sv_detokenizer_create: no tokenizer");
    sv_detokenizer *d = calloc(1, sizeof *d);
    size_t cap = t->max_token_bytes + 4;
    if (d) {
        d->in = malloc(cap);
        d->out = malloc(3 * cap + 1);
    }
    if (!d || !d->in || !d->out) {
        sv_detokenizer_free(d);
        return sv_fail(SV_ERR_NOMEM, "out of memory creating a detokenizer");
    }
    d->t = t;
    d->skip_special = skip_special != 0;
    *out = d;
    return SV_OK;
}

/* Converts the held bytes, keeping an incomplete trailing character unless final. */
static void detok_drain(sv_detokenizer *d, int final, const char **text_out, size_t *len_out) {
    size_t used, len = sv_utf8_lossy(d->in, d->n_in, final, d->out, &used);
    memmove(d->in, d->in + used, d->n_in - used);
    d->n_in -= used;
    d->out[len] = '\0';
    *text_out = d->out;
    *len_out = len;
}

sv_status sv_detokenizer_push(sv_detokenizer *d, int32_t id, const char **text_out, size_t *len_out) {
    if (!d || !text_out || !len_out) return sv_fail(SV_ERR_ARG, "sv_detokenizer_push: NULL argument");
    if (id < 0) return sv_fail(SV_ERR_ARG, "token id %d is negative", id);
    const sv_tokenizer *t = d->t;
    if (id < t->n_ids && !(d->skip_special && t->id_special[id]) && t->id_bytes[id].off != NO_TEXT) {
        span s = t->id_bytes[id];
        memcpy(d->in + d->n_in, t->pool + s.off, s.len);
        d->n_in += s.len;
    }
    detok_drain(d, 0, text_out, len_out);
    return SV_OK;
}

sv_status sv_detokenizer_flush(sv_detokenizer *d, const char **text_out, size_t *len_out) {
    if (!d || !text_out || !len_out) return sv_fail(SV_ERR_ARG, "sv_detokenizer_flush: NULL argument");
    detok_drain(d, 1, text_out, len_out);
    return SV_OK;
}

void sv_detokenizer_free(sv_detokenizer *d) {
    if (!d) return;
    free(d->in);
    free(d->out);
    free(d);
}
