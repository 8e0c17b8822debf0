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

/* The parsed config.json of an Idefics3 / SmolVLM model. */
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
} sv_config;

typedef struct sv_model sv_model;

/* Opens a model directory (config.json + safetensors, single or sharded).
 * Weights are memory-mapped and validated, not converted.  n_threads <= 0
 * means one per online core. */
sv_status sv_model_load(const char *model_dir, int32_t n_threads, sv_model **out);
void sv_model_free(sv_model *model);
const sv_config *sv_model_config(const sv_model *model);

/* ---- vision ---- */

/* The image features of full, normalized tiles (transformers' get_image_features):
 * pixel_values[n_tiles, 3, image_size, image_size] -> out[n_tiles * image_seq_len, text_hidden].
 * All-zero tiles (batch padding, which transformers drops) are refused with SV_ERR_ARG. */
sv_status sv_encode_images(sv_model *m, const float *pixel_values, int32_t n_tiles, float *out);

/* ---- test hooks ---- */
/* Not for applications: entry points that let tests and benchmarks drive the
 * kernels directly. */

/* The matmul kernel family this process uses: "portable", "avx2", "avx512" or
 * "avx512bf16" (the best the CPU runs, or lower if SMOLVISION_ISA says so). */
const char *sv_kernels_isa(void);

/* y = x @ W^T + b with the named ISA's kernels on a fresh pool of `threads`:
 * x[n, cols], W[rows, cols] of dtype 0 (F32), 1 (F16) or 2 (BF16), b[rows] or
 * NULL, y[n, rows].  blas: 0 never uses BLAS, 1 uses it for every shape it
 * takes (n above the direct kernel's limit: 6 portable, 16 SIMD; if the build
 * has BLAS), 2 as sv_matmul (only where the ISA has no GEMM kernel).  Runs `repeat` times; if seconds is not
 * NULL, after one untimed warm-up run it receives the wall time of the
 * repeats.  SV_ERR_UNSUPPORTED if this CPU or build cannot run that ISA. */
sv_status sv_debug_matmul(const char *isa, int32_t blas, const float *x, int64_t n, const void *w, int32_t dtype,
                          int64_t rows, int64_t cols, const float *b, float *y, int32_t threads, int32_t repeat,
                          double *seconds);

/* One small kernel of kernels.h with the named ISA's build of it, in place on
 * x[n, dim]: "layernorm" (w, b [dim]), "rmsnorm" (w [dim]), "gelu_tanh",
 * "silu_mul" (other = up [n, dim]), "softmax" (each row), "add" (other
 * [n, dim]).  Unused pointers may be NULL.  SV_ERR_UNSUPPORTED as above. */
sv_status sv_debug_op(const char *isa, const char *op, float *x, int64_t n, int64_t dim, const float *w,
                      const float *b, const float *other, float eps);

/* SV_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif
