/* ops.c - the small kernels of kernels.h: norms, activations, softmax, add.
 * They touch each activation once or twice, so they are cheap next to the
 * matmuls; plain C. */
#include <math.h>

#include "../kernels.h"

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
