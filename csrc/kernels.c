/* kernels.c - portable C implementations of kernels.h. */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000 | (man << 13);
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) {
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void sv_matrix_row(float *dst, const sv_matrix *W, int64_t row) {
    int64_t cols = W->cols;
    const unsigned char *src = (const unsigned char *)W->data;
    if (W->dtype == ST_F32) {
        memcpy(dst, src + (size_t)row * cols * 4, (size_t)cols * 4);
        return;
    }
    src += (size_t)row * cols * 2;
    for (int64_t i = 0; i < cols; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = W->dtype == ST_BF16 ? bf16_to_float(h) : f16_to_float(h);
    }
}

typedef struct {
    float *y;
    const float *x;
    int64_t n;
    const sv_matrix *W;
    const float *b;
} matmul_job;

/* Each task owns a range of output features (rows of W): it widens one row
 * at a time and dots it with every input row. */
static void matmul_task(void *arg, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const matmul_job *j = arg;
    int64_t cols = j->W->cols, rows = j->W->rows;
    float *w = malloc((size_t)cols * sizeof *w);
    if (!w) abort(); /* cols is bounded by the config; a failure here is unrecoverable */
    for (int64_t r = begin; r < end; r++) {
        sv_matrix_row(w, j->W, r);
        float bias = j->b ? j->b[r] : 0.0f;
        for (int64_t i = 0; i < j->n; i++) {
            const float *xi = j->x + i * cols;
            float acc = 0.0f;
            for (int64_t k = 0; k < cols; k++) acc += xi[k] * w[k];
            j->y[i * rows + r] = acc + bias;
        }
    }
    free(w);
}

void sv_matmul(sv_pool *pool, float *y, const float *x, int64_t n, const sv_matrix *W, const float *b) {
    matmul_job job = {y, x, n, W, b};
    sv_pool_run(pool, matmul_task, &job, W->rows);
}

void sv_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, int64_t dim, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        double mean = 0, var = 0;
        for (int64_t k = 0; k < dim; k++) mean += xi[k];
        mean /= (double)dim;
        for (int64_t k = 0; k < dim; k++) var += (xi[k] - mean) * (xi[k] - mean);
        var /= (double)dim;
        float inv = (float)(1.0 / sqrt(var + eps));
        for (int64_t k = 0; k < dim; k++) yi[k] = (float)(xi[k] - mean) * inv * w[k] + b[k];
    }
}

void sv_rmsnorm(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        double ss = 0;
        for (int64_t k = 0; k < dim; k++) ss += (double)xi[k] * xi[k];
        float inv = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t k = 0; k < dim; k++) yi[k] = xi[k] * inv * w[k];
    }
}

void sv_gelu_tanh(float *x, int64_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
}

void sv_silu_mul(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void sv_softmax(float *x, int64_t n) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void sv_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
