/* smolvision.h - the public C API of the smolvision engine.
 *
 * Opaque handles, status codes, a thread-local last-error message and
 * callbacks.  Every function that can fail returns an sv_status; on failure
 * sv_last_error() says what went wrong (naming the file or tensor).
 *
 * This header doubles as the cffi declaration: build_ext.py feeds everything
 * between the SV_CDEF markers to cffi, so that part must stay plain C
 * declarations (no preprocessor logic). */
#ifndef SMOLVISION_H
#define SMOLVISION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* SV_CDEF_BEGIN */

typedef enum {
    SV_OK = 0,
    SV_ERR_IO = 1,          /* a file cannot be found, opened, read or mapped */
    SV_ERR_FORMAT = 2,      /* a file is malformed: bad JSON, lying header, missing or misshaped tensor */
    SV_ERR_UNSUPPORTED = 3, /* well-formed, but an architecture or option this engine does not run */
    SV_ERR_NOMEM = 4,       /* an allocation failed */
    SV_ERR_ARG = 5,         /* an invalid argument (bad ids, sizes, options) */
    SV_ERR_CANCELLED = 6    /* the caller's callback asked to stop */
} sv_status;

/* The message of the last failure on this thread ("" if none). */
const char *sv_last_error(void);
const char *sv_version(void);
/* How this library was built, e.g. "blas=scipy-openblas32 sanitize=off". */
const char *sv_build_info(void);

/* Frees memory the library handed out (token arrays, decoded text). */
void sv_free(void *p);

/* Which generation of the family a config.json names: SmolVLM (model_type "idefics3",
 * Idefics3ForConditionalGeneration) or SmolVLM2 (model_type "smolvlm",
 * SmolVLMForConditionalGeneration).  Same architecture and tensor names; they
 * differ in configuration, prompts and video. */
typedef enum { SV_FAMILY_SMOLVLM = 0, SV_FAMILY_SMOLVLM2 = 1 } sv_family;

/* The parsed config.json of an Idefics3 / SmolVLM / SmolVLM2 model. */
typedef struct {
    /* vision tower (SigLIP) */
    int32_t vision_hidden;
    int32_t vision_intermediate;
    int32_t vision_layers;
    int32_t vision_heads;
    int32_t patch_size;
    int32_t image_size;
    double vision_norm_eps;
    /* connector */
    int32_t scale_factor;
    int32_t image_seq_len; /* tokens per tile: (image_size/patch_size)^2 / scale_factor^2 */
    int32_t image_token_id;
    /* text decoder (Llama) */
    int32_t text_hidden;
    int32_t text_intermediate;
    int32_t text_layers;
    int32_t text_heads;
    int32_t text_kv_heads;
    int32_t head_dim;
    int32_t vocab_size;
    int32_t max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    int32_t tie_word_embeddings;
    int32_t attention_bias;
    int32_t mlp_bias;
    int32_t family; /* sv_family */
} sv_config;

typedef struct sv_model sv_model;

/* Opens a model directory (config.json + safetensors, single or sharded).
 * Weights are memory-mapped and validated, not converted.  n_threads <= 0
 * means one per online core. */
sv_status sv_model_load(const char *model_dir, int32_t n_threads, sv_model **out);

/* ---- load options and precision ---- */

/* How matmuls compute.  FP32: fp32 activations times weights widened to fp32
 * (the default).  BF16: activations rounded to BF16 once per matmul, BF16 x
 * BF16 products summed in fp32 (AVX512_BF16's vdpbf16ps), for BF16 weights on
 * CPUs with AVX512_BF16; F16 and F32 weights, and CPUs (or SMOLVISION_ISA
 * settings) without AVX512_BF16, run the FP32 path.  Its error against an
 * fp32 reference is of the order of transformers' own BF16 run's. */
typedef enum { SV_PRECISION_FP32 = 0, SV_PRECISION_BF16 = 1 } sv_precision;

/* Load option quant: the text decoder's linear weights (q, k, v, o, gate, up, down and the LM head)
 * quantized per block of 32 columns with an fp16 scale: Q8 to 8-bit codes (8.5 bits a weight), Q4 to
 * 4-bit codes (4.5 bits); decode multiplies them by activations quantized to int8 per block (VNNI's
 * vpdpbusd where the CPU has AVX512_VNNI, else AVX2 or portable C), prompts dequantize them into the
 * GEMM of the model's precision.  The embedding table and the vision tower stay as they are
 * (a tied head gets its own quantized copy).  Computed from the checkpoint at the first load, in
 * parallel, and written to quant_cache_path (see sv_load_options), which later loads map.  Formats:
 * quant.h. */
typedef enum { SV_QUANT_NONE = 0, SV_QUANT_Q8 = 1, SV_QUANT_Q4 = 2 } sv_quant;

/* Told, with a one-line message, when loading does something slow or unusual: building or rebuilding
 * a quantization cache (and why), or falling back to quantizing in memory. */
typedef void (*sv_log_fn)(void *user, const char *message);

typedef struct {
    int32_t n_threads; /* <= 0: one per online core */
    int32_t precision; /* an sv_precision */
    int32_t quant;     /* an sv_quant; SV_QUANT_NONE (0) runs the checkpoint's weights */
    /* With quant: the cache file.  A valid one (same quant, format version and checkpoint files: names,
     * sizes and modification times, checked with its header and tensor table) is mapped; a missing,
     * stale, truncated or corrupt one is rebuilt and replaced atomically (temporary file, fsync,
     * rename), never read past its checks.  If it cannot be written (read-only place, disk full) the
     * weights are quantized in memory for this load and on_log says so.  NULL: always in memory. */
    const char *quant_cache_path;
    sv_log_fn on_log;  /* may be NULL */
    void *log_user;
} sv_load_options;

/* sv_model_load with options; opts NULL means {0, SV_PRECISION_FP32, SV_QUANT_NONE}.  An unknown
 * precision or quant is an SV_ERR_ARG. */
sv_status sv_model_load_ex(const char *model_dir, const sv_load_options *opts, sv_model **out);
/* The quant the model was loaded with (an sv_quant). */
int32_t sv_model_quant(const sv_model *model);
/* The precision the model was loaded with (what it asked for, even where the CPU runs FP32 instead). */
int32_t sv_model_precision(const sv_model *model);
/* 1 if precision BF16 runs the BF16 kernels in this process (the CPU has AVX512_BF16 and SMOLVISION_ISA
 * does not lower the kernels below it), 0 if it falls back to FP32. */
int32_t sv_kernels_bf16(void);
/* What the prompt-sized products (image tiles, prompt chunks) of precision BF16 with BF16 weights run on:
 * "amx" (tiles), "avx512bf16" (its BF16 GEMM), "fp32 (faster than avx512bf16 here)" (the fp32 GEMM won a
 * race against it at the first call: vdpbf16ps is slower than FP32 FMA on some CPUs) or "fp32" (no BF16
 * kernels).  Decode steps of up to 4 sequences stay on the BF16 dot kernel wherever there is one. */
const char *sv_kernels_bf16_gemm(void);

void sv_model_free(sv_model *model);
const sv_config *sv_model_config(const sv_model *model);

/* ---- profiling ---- */

/* Where a model's time goes: seconds per phase and op class, summed over
 * calls since profiling was last enabled.  Off by default (it then costs one
 * branch per op).  A phase's total also covers what no class names
 * (embedding lookups, RoPE, residual adds, pixel shuffle). */
typedef enum { SV_PHASE_VISION = 0, SV_PHASE_PREFILL = 1, SV_PHASE_DECODE = 2, SV_PHASE_COUNT = 3 } sv_profile_phase;
typedef enum {
    SV_OP_MATMUL = 0,     /* weight products (projections, MLP, patch embedding, connector) */
    SV_OP_ATTENTION = 1,  /* scores, softmax and weighted values (decoder: also the KV-cache reads) */
    SV_OP_NORM = 2,       /* LayerNorm / RMSNorm */
    SV_OP_ACTIVATION = 3, /* gelu-tanh / SiLU-gate */
    SV_OP_LM_HEAD = 4,    /* final norm + LM head (prefill: last row only) */
    SV_OP_COUNT = 5
} sv_profile_op;

/* Turns profiling on (1) or off (0); either way the counters restart at zero. */
void sv_profile_enable(sv_model *model, int32_t on);
int32_t sv_profile_enabled(const sv_model *model);
/* seconds[phase * SV_OP_COUNT + op], totals[phase] (wall time inside the phase's calls), calls[phase]. */
void sv_profile_read(const sv_model *model, double *seconds, double *totals, int64_t *calls);

/* ---- decoder and generation ---- */

/* Token-level text generation.  Prompts are token ids; positions whose id is
 * the config's image_token_id take, in order, the rows of image_embeds
 * [n_image_rows, text_hidden] (row-major fp32), whose count must equal the
 * number of image tokens.  Every id must lie in [0, vocab_size).  These
 * one-shot calls run on a sequence the model keeps for them (its KV cache is
 * reused across calls) and the model's shared scratch, so calls on one model
 * must not overlap (a re-entrant call is refused). */

/* Sampling options.  temperature 0 means greedy (argmax); otherwise the
 * logits pass, in transformers' order, repetition penalty, temperature,
 * top-k (0 = off), top-p (1 = off), min-p (0 = off), then one draw from a
 * PRNG seeded with seed.  repetition_penalty 1 is off; it applies to every id
 * in the prompt and generated so far, greedy included.  Generation stops
 * after an id in eos_ids[n_eos_ids] (that id is reported and counted) or
 * after max_tokens ids. */
typedef struct {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    uint64_t seed;
    int32_t max_tokens;
    const int32_t *eos_ids;
    int32_t n_eos_ids;
} sv_sampling;

typedef enum {
    SV_FINISH_STOP = 0,      /* an EOS id was generated */
    SV_FINISH_LENGTH = 1,    /* max_tokens were generated */
    SV_FINISH_CANCELLED = 2  /* the token callback returned non-zero */
} sv_finish_reason;

typedef struct {
    int32_t n_prompt;        /* prompt tokens processed */
    int32_t n_generated;     /* ids generated, the EOS id or the cancelling one included */
    sv_finish_reason finish_reason;
    double prefill_seconds;  /* prompt processing, up to the first id's logits */
    double decode_seconds;   /* everything after */
} sv_generate_result;

/* Called with each generated id as soon as it is chosen; a non-zero return
 * stops generation at once (finish reason cancelled, status SV_OK). */
typedef int32_t (*sv_token_fn)(void *user, int32_t token_id);

/* out_logits[vocab_size] = the logits after the last of ids[n]. */
sv_status sv_logits(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds, int32_t n_image_rows,
                    float *out_logits);

/* Generates up to s->max_tokens ids after ids[n]; on_token (may be NULL)
 * sees each id, out_ids[s->max_tokens] (may be NULL) receives them.
 * n + max_tokens beyond max_position_embeddings is refused (SV_ERR_ARG). */
sv_status sv_generate(sv_model *m, const int32_t *ids, int32_t n, const float *image_embeds, int32_t n_image_rows,
                      const sv_sampling *s, sv_token_fn on_token, void *user, int32_t *out_ids,
                      sv_generate_result *result);

/* Bytes the model's decoder state holds now (the shared scratch, and the KV
 * cache of the one-shot calls' own sequence), 0 before the first call.  It
 * grows linearly with the longest context seen: never a [tokens, tokens]
 * buffer.  Sequences made with sv_seq_create are counted by sv_seq_bytes. */
int64_t sv_decoder_state_bytes(const sv_model *m);

/* ---- sequences ----
 *
 * A sequence keeps what one context computed: its KV cache, its length (the
 * next position) and its token history, so that it can be extended (a
 * follow-up turn prefills only the new tokens), truncated back to a prefix and
 * reused, and decoded together with other sequences.  It is created from a
 * model and runs only with that model (another model's sequence is refused
 * with SV_ERR_ARG).  The model keeps only the scratch the passes share, so
 * calls on one model (sv_seq_prefill, sv_decode_batch, sv_generate, sv_logits,
 * ...) must still not overlap: a call made while another runs is refused.
 * Calls on different models may run at once.
 *
 * Memory: the KV cache takes layers x 2 x kv_heads x head_dim values per
 * position, BF16 (2 bytes) where the model's matmuls run in BF16 (precision
 * BF16 with BF16 or quantized weights on a CPU with AVX512_BF16), else fp32
 * (4 bytes); the 2.2B model: 24 x 2 x 2048 x 2 = 192 KiB per token in BF16,
 * ~400 MB for 2k tokens, twice that in fp32 (sv_seq_bytes_per_token).  A
 * sequence grows its cache 256 positions at a time (up to
 * max_position_embeddings) and never shrinks it; sv_seq_free releases it. */
typedef struct sv_seq sv_seq;

/* The most rows one pass carries: a prompt is computed in equal chunks of at most this many tokens
 * (ceil(n / ceil(n / SV_PREFILL_CHUNK)) each), and a decode batch holds at most this many sequences.
 * A caller that feeds a prompt to sv_seq_prefill in the same chunks gets the same numbers as one call.
 * Every chunk streams (and packs) all the weights once: a 1560-token image prompt of the 2.2B model, 2
 * threads, Sapphire Rapids, reads 380 tok/s in 4 chunks of 390, 427 in 2 of 780, 428 in one.  The cost:
 * the decoder's scratch grows to ~115 KB a row of the longest chunk (118 MB at 1024 rows), and running
 * sequences wait for a chunk between their decode steps. */
#define SV_PREFILL_CHUNK 1024

/* An empty sequence of model m (no cache memory until the first prefill). */
sv_status sv_seq_create(sv_model *m, sv_seq **out);
/* Frees a sequence (NULL is fine).  It may outlive its model only to be freed. */
void sv_seq_free(sv_seq *seq);
/* Appends ids[n] at positions length .. length + n - 1, in chunks; image token positions take, in
 * order, the rows of image_embeds[n_image_rows, text_hidden] (as sv_logits).  out_logits[vocab] (may
 * be NULL) receives the logits after the last id.  length + n beyond max_position_embeddings is
 * refused (SV_ERR_ARG); on any error the sequence's length is unchanged. */
sv_status sv_seq_prefill(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                         int32_t n_image_rows, float *out_logits);
/* Cuts a sequence back to its first n tokens (0 <= n <= length, else SV_ERR_ARG), keeping its memory:
 * what follows is appended after them. */
sv_status sv_seq_truncate(sv_seq *seq, int32_t n);
/* Grows the cache to hold `positions` now (so that later calls do not reallocate). */
sv_status sv_seq_reserve(sv_seq *seq, int32_t positions);
/* Appends ids[r] to seqs[r] for r < n (1 <= n <= 512, distinct sequences of model m) in one pass over
 * the weights: the n rows go through each matmul together, each attending to its own sequence's cache.
 * out_logits[n, vocab] receives the logits after each.  A full sequence is refused (SV_ERR_ARG). */
sv_status sv_decode_batch(sv_model *m, sv_seq **seqs, int32_t n, const int32_t *ids, float *out_logits);
/* sv_generate on a sequence: appends ids[n] to it (a prompt continuing what it holds: the sampler's
 * repetition penalty sees all of it), then generates as sv_generate does; every generated id but the
 * last is appended too, so the sequence ends holding the prompt and the answer but its last id.
 * result->n_prompt counts the whole prompt (the sequence's tokens before the call and ids[n]).
 * length + n + max_tokens beyond max_position_embeddings is refused (SV_ERR_ARG). */
sv_status sv_seq_generate(sv_model *m, sv_seq *seq, const int32_t *ids, int32_t n, const float *image_embeds,
                          int32_t n_image_rows, const sv_sampling *s, sv_token_fn on_token, void *user,
                          int32_t *out_ids, sv_generate_result *result);
/* A sampler for token loops driven by the caller (e.g. around sv_decode_batch): the options of s
 * (eos_ids and max_tokens are the caller's business; s need not outlive the call), its own PRNG seeded
 * with s->seed.  observe records prompt ids for the repetition penalty; pick chooses the next id from
 * logits[vocab] (overwritten) and records it, exactly as sv_generate's loop does. */
typedef struct sv_token_sampler sv_token_sampler;
sv_status sv_token_sampler_create(const sv_sampling *s, int32_t vocab, sv_token_sampler **out);
void sv_token_sampler_observe(sv_token_sampler *t, const int32_t *ids, int32_t n);
int32_t sv_token_sampler_pick(sv_token_sampler *t, float *logits);
void sv_token_sampler_free(sv_token_sampler *t);
/* Tokens computed (the next position). */
int32_t sv_seq_length(const sv_seq *seq);
/* The ids at positions 0 .. length - 1 (image positions hold image_token_id), borrowed until the
 * sequence next changes. */
const int32_t *sv_seq_tokens(const sv_seq *seq);
/* Positions the sequence's cache holds now without growing. */
int32_t sv_seq_capacity(const sv_seq *seq);
/* Bytes the sequence holds (its KV cache and token history at their capacity). */
int64_t sv_seq_bytes(const sv_seq *seq);
/* Bytes one position of a sequence of model m takes (KV cache + token id). */
int64_t sv_seq_bytes_per_token(const sv_model *m);

/* ---- vision ---- */

/* The image features of full, normalized tiles (transformers' get_image_features):
 * pixel_values[n_tiles, 3, image_size, image_size] -> out[n_tiles * image_seq_len, text_hidden].
 * All-zero tiles (batch padding, which transformers drops) are refused with SV_ERR_ARG. */
sv_status sv_encode_images(sv_model *m, const float *pixel_values, int32_t n_tiles, float *out);

/* ---- tokenizer ---- */

/* A byte-level BPE tokenizer read from a Hugging Face tokenizer.json; it
 * gives the same ids as the `tokenizers` library.  Read-only once loaded, so
 * one tokenizer may encode and decode on several threads at once. */
typedef struct sv_tokenizer sv_tokenizer;

/* Loads tokenizer.json at path.  Options the engine does not implement
 * exactly (other models, normalizers, pre-tokenizer regexes, ...) are refused
 * with SV_ERR_UNSUPPORTED rather than tokenizing differently. */
sv_status sv_tokenizer_load(const char *path, sv_tokenizer **out);
void sv_tokenizer_free(sv_tokenizer *t);
/* Distinct token strings, model vocab and added tokens together
 * (len(tokenizers.Tokenizer.get_vocab())). */
int32_t sv_tokenizer_vocab_size(const sv_tokenizer *t);
/* The id of token text[0..len) (added tokens first), -1 if none. */
int32_t sv_tokenizer_token_to_id(const sv_tokenizer *t, const char *token, size_t len);
/* The token text of id (borrowed, *len_out bytes, not NUL-terminated), NULL if no token has this id. */
const char *sv_tokenizer_id_to_token(const sv_tokenizer *t, int32_t id, size_t *len_out);
/* 1 if id is an added token marked special (skipped by skip_special). */
int32_t sv_tokenizer_is_special(const sv_tokenizer *t, int32_t id);
/* text[0..len) -> ids[n]; *ids_out is released with sv_free.  Text may hold
 * NUL bytes; invalid UTF-8 is first replaced by U+FFFD per maximal invalid
 * subsequence (as Python's bytes.decode("utf-8", "replace")).  add_special
 * adds what the post_processor template declares. */
sv_status sv_tokenizer_encode(const sv_tokenizer *t, const char *text, size_t len, int32_t add_special,
                              int32_t **ids_out, size_t *n_out);
/* ids[n] -> UTF-8 text (NUL-terminated, *len_out bytes, released with
 * sv_free).  Ids naming no token are skipped, as tokenizers does; negative
 * ids are an SV_ERR_ARG. */
sv_status sv_tokenizer_decode(const sv_tokenizer *t, const int32_t *ids, size_t n, int32_t skip_special,
                              char **text_out, size_t *len_out);

/* Streaming decode: push ids one at a time and get the text they complete.
 * A character split across tokens is held back until complete, so pieces are
 * always valid UTF-8 and concatenate (with the flush) to sv_tokenizer_decode
 * of all ids.  The text handed out is borrowed until the next call.  The
 * tokenizer must outlive the detokenizer. */
typedef struct sv_detokenizer sv_detokenizer;
sv_status sv_detokenizer_create(const sv_tokenizer *t, int32_t skip_special, sv_detokenizer **out);
sv_status sv_detokenizer_push(sv_detokenizer *d, int32_t id, const char **text_out, size_t *len_out);
/* Emits what is held back (an incomplete character becomes U+FFFD) and resets. */
sv_status sv_detokenizer_flush(sv_detokenizer *d, const char **text_out, size_t *len_out);
void sv_detokenizer_free(sv_detokenizer *d);

/* The model's tokenizer (its tokenizer.json), borrowed: valid while the model
 * is; NULL when the model directory has no tokenizer.json. */
sv_tokenizer *sv_model_tokenizer(sv_model *model);

/* ---- test hooks ---- */
/* Not for applications: entry points that let tests and benchmarks drive the
 * kernels directly. */

/* The matmul kernel family this process uses: "portable", "avx2", "avx512",
 * "avx512bf16" or "amx" (the best the CPU runs, or lower if SMOLVISION_ISA says
 * so; "amx" only once Linux granted the tile state and the self-check passed). */
const char *sv_kernels_isa(void);

/* y = x @ W^T + b with the named ISA's kernels on a fresh pool of `threads`:
 * x[n, cols], W[rows, cols] of dtype 0 (F32), 1 (F16) or 2 (BF16), b[rows] or
 * NULL, y[n, rows].  blas: 0 never uses BLAS, 1 uses it for every shape it
 * takes (n above the direct kernel's limit: 6 portable, 8 NEON, 16 x86 SIMD; if the build
 * has BLAS), 2 as sv_matmul (only where the ISA has no GEMM kernel).  Runs `repeat` times; if seconds is not
 * NULL, after one untimed warm-up run it receives the wall time of the
 * repeats.  SV_ERR_UNSUPPORTED if this CPU or build cannot run that ISA. */
sv_status sv_debug_matmul(const char *isa, int32_t blas, const float *x, int64_t n, const void *w, int32_t dtype,
                          int64_t rows, int64_t cols, const float *b, float *y, int32_t threads, int32_t repeat,
                          double *seconds);

/* sv_debug_matmul for a precision (an sv_precision), choosing kernels as
 * sv_matmul does: BF16 runs the named ISA's BF16 x BF16 kernels where it has
 * them (avx512bf16) and the weights are BF16, the FP32 ones otherwise. */
sv_status sv_debug_matmul_precision(const char *isa, int32_t precision, const float *x, int64_t n, const void *w,
                                    int32_t dtype, int64_t rows, int64_t cols, const float *b, float *y,
                                    int32_t threads, int32_t repeat, double *seconds);

/* sv_debug_matmul_precision for count (1-4) products of one x, as the model's q, k and v (sv_matmul_shared: x
 * prepared once for all): y[p] = x @ W_p^T, W_p = w + p * rows * cols (BF16 [rows, cols]), y[p] = y + p * n *
 * rows ([n, rows]), no bias, run once. */
sv_status sv_debug_matmul_shared(const char *isa, int32_t precision, const float *x, int64_t n, const uint16_t *w,
                                 int64_t rows, int64_t cols, int32_t count, float *y, int32_t threads);

/* What became of AMX (level amx, the tile BF16 GEMM of precision BF16) in this process: "on", "absent"
 * (CPU or build), "off (SMOLVISION_ISA)", "refused: ..." (Linux did not grant the tile state) or "failed
 * self-check: ..." (its results disagreed with plain C, so the AVX512_BF16 kernels run instead).  The
 * first call at level amx asks Linux for the tile state and runs the self-check. */
const char *sv_kernels_amx(void);

/* y = x @ W^T + b, W = w[rows, cols] BF16, with precision BF16 through the AMX GEMM on the plain-C
 * emulation of the tile instructions (every n, however small), on a fresh pool of `threads`; runs on
 * any CPU.  planted 1: a copy of those kernels with a planted bug (pack swaps the halves of each BF16
 * pair), to show the tests can fail. */
sv_status sv_debug_matmul_amx_emulated(int32_t planted, const float *x, int64_t n, const uint16_t *w, int64_t rows,
                                       int64_t cols, const float *b, float *y, int32_t threads);
/* The AMX self-check (the one dispatch runs before using the real tiles) on the emulated kernels, or with
 * planted 1 on their bugged copy: SV_OK if it passes, else SV_ERR_UNSUPPORTED with its reason. */
sv_status sv_debug_amx_self_check(int32_t planted);
/* One emulated TDPBF16PS: LDTILECFG config[64], then tiles 0, 1, 2 loaded from c, a, b (images of 16
 * rows of 64 bytes, as many rows and bytes as the config gives each), TDPBF16PS tmm0, tmm1, tmm2, and
 * tile 0 stored back to c. */
sv_status sv_debug_amx_emulated_dpbf16ps(const uint8_t *config, const uint8_t *a, const uint8_t *b, uint8_t *c);

/* Teacher-forced scoring through the decode path: prefills ids[0, n_prompt) (text only), then feeds
 * ids[n_prompt, n) one at a time as generation does.  out_logits[n - n_prompt + 1, vocab] receives the
 * logits after positions n_prompt - 1, n_prompt, ..., n - 1. */
sv_status sv_debug_logits_steps(sv_model *m, const int32_t *ids, int32_t n_prompt, int32_t n, float *out_logits);

/* The int8 kernels quantized weights run on in this process: "portable" or "avx512vnni". */
const char *sv_kernels_quant(void);

/* w[rows, cols] (fp32) quantized to quant (SV_QUANT_Q8 or _Q4) and dequantized back into out[rows, cols]. */
sv_status sv_debug_quantize(int32_t quant, const float *w, int64_t rows, int64_t cols, float *out);

/* y = x @ W^T + b with W = w[rows, cols] (fp32) quantized to quant, computed as sv_matmul computes it with
 * the named ISA's kernels and a precision (sv_precision): int8 dot kernel up to its n limit, above it
 * dequantized panels through the fp32 GEMM (or, for BF16 where the ISA has the BF16 kernels, rounded to
 * BF16 through the BF16 GEMM, and at level "amx" through the AMX GEMM); on a fresh pool of `threads`; repeat
 * and seconds as sv_debug_matmul.
 * SV_ERR_UNSUPPORTED as there. */
sv_status sv_debug_matmul_quant(const char *isa, int32_t quant, int32_t precision, const float *x, int64_t n,
                                const float *w, int64_t rows, int64_t cols, const float *b, float *y,
                                int32_t threads, int32_t repeat, double *seconds);

/* One small kernel of kernels.h with the named ISA's build of it, in place on
 * x[n, dim]: "layernorm" (w, b [dim]), "rmsnorm" (w [dim]), "gelu_tanh",
 * "silu_mul" (other = up [n, dim]), "softmax" (each row), "add" (other
 * [n, dim]), "dot_rows" (x[i] = eps * (other . row i of x) for i < n, other
 * [dim]: eps is the scale), "dot_rows_bf16" (the same with the rows of x
 * truncated to BF16).  Unused pointers may be NULL.  SV_ERR_UNSUPPORTED as
 * above. */
sv_status sv_debug_op(const char *isa, const char *op, float *x, int64_t n, int64_t dim, const float *w,
                      const float *b, const float *other, float eps);

/* The vision tower's attention in BF16 products on a fresh pool of `threads`, with the BF16 kernels of
 * level `isa` ("avx512bf16": its packed GEMM; "amx": the tiles): q, k, v, out [n, heads * head_dim].
 * SV_ERR_UNSUPPORTED where those kernels do not run in this process. */
sv_status sv_debug_attention_bf16(const char *isa, const float *q, const float *k, const float *v, float *out,
                                  int64_t n, int64_t heads, int64_t head_dim, float scale, int32_t threads);
/* The same kernel as prompt chunks use it against the decoder's KV cache: q, out [queries, heads * head_dim];
 * k, v [keys, kv_heads * head_dim] (rounded to BF16 into the cache's layouts); query i at position
 * keys - queries + i; causal: it sees keys up to its own position. */
sv_status sv_debug_attention_bf16_kv(const char *isa, const float *q, const float *k, const float *v, float *out,
                                     int64_t queries, int64_t keys, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                     int32_t causal, float scale, int32_t threads);

/* SV_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif
