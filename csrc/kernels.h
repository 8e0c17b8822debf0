/* kernels.h - the numeric building blocks the vision encoder and decoder are
 * written in.  Model code says what to compute; how (SIMD, BLAS, threads) is
 * decided here.  Activations are fp32; weights stay in their checkpoint
 * dtype (F32, F16 or BF16) and are widened on the fly. */
#ifndef SV_KERNELS_H
#define SV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "threadpool.h"

/* y = x @ W^T + b: x[n, W.cols], W[W.rows, W.cols], b[W.rows] or NULL, y[n, W.rows]. */
void sv_matmul(sv_pool *pool, float *y, const float *x, int64_t n, const sv_matrix *W, const float *b);

/* 1 if sv_matmul on this pool multiplies BF16 weights in BF16 (precision "bf16" on a CPU with
 * AVX512_BF16): callers holding fp32 operands of their own (attention) can then store them as BF16. */
int sv_matmul_bf16(const sv_pool *pool);

/* Multi-head attention in BF16 products (kernels/attention.c), only where sv_matmul_bf16(pool): per query
 * head h (KV head g = h / (heads / kv_heads)), out[:, h] = softmax(q[:, h] K_g^T * scale) V_g, where [:, h]
 * are columns [h * head_dim, (h + 1) * head_dim).  Query i sits at position keys - queries + i; causal: it
 * sees keys up to its own position, else all of them. */
typedef struct {
    int64_t queries, keys, heads, kv_heads, head_dim;
    int causal;
    float scale;
} sv_attention_shape;

typedef struct {
    const float *q;                                /* [queries, ldq] */
    int64_t ldq;
    float *out;                                    /* [queries, ldo] */
    int64_t ldo;
    const uint16_t *k;                             /* K_g: BF16 [keys, head_dim] at k + g * k_head_stride */
    int64_t k_head_stride, ldk;                    /* ... with rows ldk apart */
    const uint16_t *vt;                            /* V_g^T: BF16 [head_dim, keys] at vt + g * vt_head_stride */
    int64_t vt_head_stride, ldvt;                  /* ... with rows ldvt apart */
} sv_attention_operands;

/* Workspace bytes (64-byte aligned) sv_attention_bf16 needs for a shape; 0 when this pool does not multiply
 * in BF16 or the shape is beyond what the kernel handles: then use the fp32 path. */
size_t sv_attention_bf16_bytes(const sv_pool *pool, const sv_attention_shape *shape);
void sv_attention_bf16(sv_pool *pool, void *workspace, const sv_attention_shape *shape,
                       const sv_attention_operands *operands);

/* The vision tower's form: fp32 q, k, v, out [n, ld], every token seeing every token, heads = kv_heads;
 * workspace of sv_self_attention_bf16_bytes() (0: use the fp32 path). */
size_t sv_self_attention_bf16_bytes(const sv_pool *pool, int64_t n, int64_t heads, int64_t head_dim);
void sv_self_attention_bf16(sv_pool *pool, void *workspace, float *out, const float *q, const float *k,
                            const float *v, int64_t ld, int64_t n, int64_t heads, int64_t head_dim, float scale);

/* dst[n] = x[n] rounded to BF16, nearest even. */
void sv_to_bf16(uint16_t *dst, const float *x, int64_t n);

/* dst[W.cols] = W[row, :] as fp32 (embedding lookup). */
void sv_matrix_row(float *dst, const sv_matrix *W, int64_t row);

/* y = (x - mean) / sqrt(var + eps) * w + b per row: x, y [n, dim]; y may alias x. */
void sv_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, int64_t dim, float eps);

/* y = x / sqrt(mean(x^2) + eps) * w per row: x, y [n, dim]; y may alias x. */
void sv_rmsnorm(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps);

/* x = gelu_tanh(x) elementwise: x[n]. */
void sv_gelu_tanh(float *x, int64_t n);

/* gate = silu(gate) * up elementwise: gate, up [n]. */
void sv_silu_mul(float *gate, const float *up, int64_t n);

/* x = softmax(x) in place: x[n]. */
void sv_softmax(float *x, int64_t n);

/* y += x: x, y [n]. */
void sv_add(float *y, const float *x, int64_t n);

/* out[r] = scale * (x . rows[r * stride : r * stride + len]) for r < n_rows: x[len]. */
void sv_dot_rows(float *out, const float *x, const float *rows, int64_t n_rows, int64_t len, int64_t stride,
                 float scale);
/* The same with BF16 rows, widened to fp32 (x stays fp32). */
void sv_dot_rows_bf16(float *out, const float *x, const uint16_t *rows, int64_t n_rows, int64_t len, int64_t stride,
                      float scale);

#endif
