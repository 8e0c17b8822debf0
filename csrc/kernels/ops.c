/* ops.c - the small kernels of kernels.h (norms, activations, softmax,
 * add, dot products): the portable build of ops_impl.h, and the entry points that forward
 * to the table for the selected ISA. */
#include <stdlib.h>
#include <string.h>

#include "../error.h"
#include "../kernels.h"
#include "isa.h"

#define OPS_TABLE sv_ops_portable
#include "ops_impl.h"

static const sv_ops *ops(void) { return sv_ops_for(sv_isa_selected()); }

void sv_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, int64_t dim, float eps) {
    ops()->layernorm(y, x, w, b, n, dim, eps);
}

void sv_rmsnorm(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps) {
    ops()->rmsnorm(y, x, w, n, dim, eps);
}

void sv_gelu_tanh(float *x, int64_t n) { ops()->gelu_tanh(x, n); }

void sv_silu_mul(float *gate, const float *up, int64_t n) { ops()->silu_mul(gate, up, n); }

void sv_softmax(float *x, int64_t n) { ops()->softmax(x, n); }

float sv_softmax_bf16(uint16_t *p, int64_t ld, const float *x, int64_t n) { return ops()->softmax_bf16(p, ld, x, n); }

void sv_add(float *y, const float *x, int64_t n) { ops()->add(y, x, n); }

void sv_dot_rows(float *out, const float *x, const float *rows, int64_t n_rows, int64_t len, int64_t stride,
                 float scale) {
    ops()->dot_rows(out, x, rows, n_rows, len, stride, scale);
}

void sv_dot_rows_bf16(float *out, const float *x, const uint16_t *rows, int64_t n_rows, int64_t len, int64_t stride,
                      float scale) {
    ops()->dot_rows_bf16(out, x, rows, n_rows, len, stride, scale);
}

/* ---- test hooks (declared in smolvision.h) ---- */

sv_status sv_debug_op(const char *isa, const char *op, float *x, int64_t n, int64_t dim, const float *w,
                      const float *b, const float *other, float eps) {
    int level = isa ? sv_isa_parse(isa) : -1;
    if (level < 0) return sv_fail(SV_ERR_ARG, "unknown ISA '%s' (portable, avx2, avx512, avx512bf16, neon)", isa ? isa : "(null)");
    const sv_ops *k = sv_ops_for((sv_isa_level)level);
    if (!k) return sv_fail(SV_ERR_UNSUPPORTED, "this CPU or build cannot run the %s kernels", isa);
    if (!op || n < 1 || dim < 1) return sv_fail(SV_ERR_ARG, "bad op arguments n=%lld dim=%lld", (long long)n, (long long)dim);
    if (strcmp(op, "layernorm") == 0) k->layernorm(x, x, w, b, n, dim, eps);
    else if (strcmp(op, "rmsnorm") == 0) k->rmsnorm(x, x, w, n, dim, eps);
    else if (strcmp(op, "gelu_tanh") == 0) k->gelu_tanh(x, n * dim);
    else if (strcmp(op, "silu_mul") == 0) k->silu_mul(x, other, n * dim);
    else if (strcmp(op, "add") == 0) k->add(x, other, n * dim);
    else if (strcmp(op, "softmax") == 0)
        for (int64_t i = 0; i < n; i++) k->softmax(x + i * dim, dim);
    else if (strcmp(op, "softmax_bf16") == 0) { /* x = its BF16 terms over their sum: a softmax again */
        uint16_t *p = malloc((size_t)(dim + 3) * sizeof *p);
        if (!p) return sv_fail(SV_ERR_NOMEM, "out of memory");
        for (int64_t i = 0; i < n; i++) {
            p[dim] = p[dim + 1] = p[dim + 2] = 0xFFFF; /* the zero padding must overwrite these */
            float sum = k->softmax_bf16(p, dim + 3, x + i * dim, dim);
            int padded = p[dim] == 0 && p[dim + 1] == 0 && p[dim + 2] == 0;
            for (int64_t c = 0; c < dim; c++) x[i * dim + c] = padded ? sv_bf16_to_float(p[c]) / sum : NAN;
        }
        free(p);
    }
    else if (strcmp(op, "dot_rows") == 0 || strcmp(op, "dot_rows_bf16") == 0) {
        if (!other) return sv_fail(SV_ERR_ARG, "%s needs other", op);
        float *out = malloc((size_t)n * sizeof *out);
        uint16_t *rows = malloc((size_t)(n * dim) * sizeof *rows);
        if (!out || !rows) {
            free(out);
            free(rows);
            return sv_fail(SV_ERR_NOMEM, "out of memory");
        }
        if (op[8] == '_') { /* dot_rows_bf16: the rows are x's values truncated to BF16 */
            for (int64_t i = 0; i < n * dim; i++) {
                union { float f; uint32_t u; } v = {x[i]};
                rows[i] = (uint16_t)(v.u >> 16);
            }
            k->dot_rows_bf16(out, other, rows, n, dim, dim, eps);
        } else {
            k->dot_rows(out, other, x, n, dim, dim, eps);
        }
        for (int64_t i = 0; i < n; i++) x[i] = out[i];
        free(out);
        free(rows);
    } else return sv_fail(SV_ERR_ARG, "unknown op '%s'", op);
    return SV_OK;
}
