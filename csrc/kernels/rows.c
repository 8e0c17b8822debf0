/* rows.c - the row-wise ops of kernels.h over the pool: each splits its rows
 * into one contiguous share per thread and runs the single-thread kernel on
 * it, timed under its op class. */
#include "../kernels.h"

typedef struct {
    float *y;
    const float *x, *w, *b;
    int64_t dim;
    float eps;
    const float *cos, *sin; /* sv_rope_rows: [rows, dim / 2] */
    int64_t heads;          /* sv_rope_rows: dim is head_dim */
    float *residual;        /* add_norm_task: += x, then normalised into y (rms: RMSNorm, else LayerNorm) */
    int rms;
} rows_job;

enum { ADD_NORM_ROWS = 8 }; /* rows added and normalised together, while they are in cache */

static void layernorm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_layernorm(j->y + begin * j->dim, j->x + begin * j->dim, j->w, j->b, end - begin, j->dim, j->eps);
}

static void rmsnorm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_rmsnorm(j->y + begin * j->dim, j->x + begin * j->dim, j->w, end - begin, j->dim, j->eps);
}

static void gelu_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_gelu_tanh(j->y + begin * j->dim, (end - begin) * j->dim);
}

static void silu_mul_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_silu_mul(j->y + begin * j->dim, j->x + begin * j->dim, (end - begin) * j->dim);
}

static void add_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    sv_add(j->y + begin * j->dim, j->x + begin * j->dim, (end - begin) * j->dim);
}

static void add_norm_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    for (int64_t i = begin; i < end; i += ADD_NORM_ROWS) {
        const int64_t rows = end - i < ADD_NORM_ROWS ? end - i : ADD_NORM_ROWS, at = i * j->dim;
        sv_add(j->residual + at, j->x + at, rows * j->dim);
        if (j->rms)
            sv_rmsnorm(j->y + at, j->residual + at, j->w, rows, j->dim, j->eps);
        else
            sv_layernorm(j->y + at, j->residual + at, j->w, j->b, rows, j->dim, j->eps);
    }
}

static void rope_task(void *arg, int64_t begin, int64_t end, int thread) {
    const rows_job *j = arg;
    int64_t hd = j->dim, half = hd / 2;
    for (int64_t i = begin; i < end; i++) {
        const float *ci = j->cos + i * half, *si = j->sin + i * half;
        for (int64_t h = 0; h < j->heads; h++) {
            float *x = j->y + (i * j->heads + h) * hd;
            for (int64_t k = 0; k < half; k++) {
                float a = x[k], b = x[k + half];
                x[k] = a * ci[k] - b * si[k];
                x[k + half] = b * ci[k] + a * si[k];
            }
        }
    }
}

void sv_layernorm_rows(const sv_ctx *ctx, float *y, const float *x, const float *w, const float *b, int64_t n,
                       int64_t dim, float eps) {
    double t = sv_op_begin(ctx);
    rows_job j = {.y = y, .x = x, .w = w, .b = b, .dim = dim, .eps = eps};
    sv_pool_run(ctx->pool, layernorm_task, &j, n);
    sv_op_end(ctx, SV_OP_NORM, t);
}

void sv_rmsnorm_rows(const sv_ctx *ctx, float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps) {
    double t = sv_op_begin(ctx);
    rows_job j = {.y = y, .x = x, .w = w, .dim = dim, .eps = eps};
    sv_pool_run(ctx->pool, rmsnorm_task, &j, n);
    sv_op_end(ctx, SV_OP_NORM, t);
}

void sv_gelu_rows(const sv_ctx *ctx, float *x, int64_t n, int64_t dim) {
    double t = sv_op_begin(ctx);
    rows_job j = {.y = x, .dim = dim};
    sv_pool_run(ctx->pool, gelu_task, &j, n);
    sv_op_end(ctx, SV_OP_ACTIVATION, t);
}

void sv_silu_mul_rows(const sv_ctx *ctx, float *gate, const float *up, int64_t n, int64_t dim) {
    double t = sv_op_begin(ctx);
    rows_job j = {.y = gate, .x = up, .dim = dim};
    sv_pool_run(ctx->pool, silu_mul_task, &j, n);
    sv_op_end(ctx, SV_OP_ACTIVATION, t);
}

void sv_add_rows(const sv_ctx *ctx, float *y, const float *x, int64_t n, int64_t dim) {
    rows_job j = {.y = y, .x = x, .dim = dim};
    sv_pool_run(ctx->pool, add_task, &j, n);
}

void sv_add_layernorm_rows(const sv_ctx *ctx, float *residual, const float *x, float *y, const float *w,
                           const float *b, int64_t n, int64_t dim, float eps) {
    double t = sv_op_begin(ctx);
    rows_job j = {.y = y, .x = x, .w = w, .b = b, .dim = dim, .eps = eps, .residual = residual, .rms = 0};
    sv_pool_run(ctx->pool, add_norm_task, &j, n);
    sv_op_end(ctx, SV_OP_NORM, t);
}

void sv_add_rmsnorm_rows(const sv_ctx *ctx, float *residual, const float *x, float *y, const float *w, int64_t n,
                         int64_t dim, float eps) {
    double t = sv_op_begin(ctx);
    rows_job j = {.y = y, .x = x, .w = w, .dim = dim, .eps = eps, .residual = residual, .rms = 1};
    sv_pool_run(ctx->pool, add_norm_task, &j, n);
    sv_op_end(ctx, SV_OP_NORM, t);
}

void sv_rope_rows(const sv_ctx *ctx, float *x, int64_t n, int64_t heads, int64_t head_dim, const float *cos,
                  const float *sin) {
    rows_job j = {.y = x, .dim = head_dim, .cos = cos, .sin = sin, .heads = heads};
    sv_pool_run(ctx->pool, rope_task, &j, n);
}
