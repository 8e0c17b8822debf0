/* tokenizer.h - internals shared by tokenizer.c (tokenizer.json loading, BPE,
 * added tokens, decoding) and pretokenize.c (the pre-tokenizer pipeline).
 * The public API is the "tokenizer" block of smolvision.h. */
#ifndef SV_TOKENIZER_H
#define SV_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "smolvision.h"

/* The split regexes recognised by their exact pattern text; each has a
 * hand-written matcher in pretokenize.c. */
typedef enum {
    SV_RE_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    SV_RE_LLAMA3, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    SV_RE_QWEN2   /* the same with \p{N} instead of \p{N}{1,3} */
} sv_regex;

typedef enum { SV_PRE_DIGITS, SV_PRE_SPLIT, SV_PRE_BYTELEVEL } sv_pretok_kind;

/* One step of the pre-tokenizer pipeline.  ByteLevel, when present, is last:
 * its byte-to-character mapping is applied by the BPE step itself. */
typedef struct {
    sv_pretok_kind kind;
    int individual_digits; /* Digits */
    int add_prefix_space;  /* ByteLevel */
    int use_regex;         /* ByteLevel: split with SV_RE_GPT2 first */
    sv_regex regex;        /* Split (behavior Isolated, not inverted) */
} sv_pretok_step;

#define SV_MAX_PRETOK_STEPS 8

typedef struct {
    sv_pretok_step steps[SV_MAX_PRETOK_STEPS];
    int n_steps;
} sv_pretokenizer;

/* A piece of text being pre-tokenized: bytes [off, off+len) of a scratch buffer. */
typedef struct {
    size_t off, len;
} sv_piece;

/* Growable scratch space for one encode call (nothing is shared between calls). */
typedef struct {
    char *buf;          /* piece text; pieces refer to it by offset */
    size_t buf_len, buf_cap;
    sv_piece *pieces, *next; /* current pieces and the output of the step being applied */
    size_t n_pieces, n_next, pieces_cap, next_cap;
} sv_pretok_scratch;

/* Parses the "pre_tokenizer" member (path is for messages).  Anything this
 * engine does not implement exactly is refused with SV_ERR_UNSUPPORTED. */
sv_status sv_pretok_parse(const json_value *v, const char *path, sv_pretokenizer *out);

/* Splits text[0..len) (valid UTF-8) into pieces in s->pieces. */
sv_status sv_pretok_run(const sv_pretokenizer *p, const char *text, size_t len, sv_pretok_scratch *s);
void sv_pretok_scratch_free(sv_pretok_scratch *s);

/* sv_tokenizer_load on tokenizer.json text already in memory, text[0..len)
 * (the file loader and the fuzz harness share it); path is for messages. */
sv_status sv_tokenizer_load_json(const char *text, size_t len, const char *path, sv_tokenizer **out);

#endif
