/* quant_generic.c - the portable int8 dot kernel for quantized weights (ST_Q8,
 * ST_Q4; formats in quant.h): plain C for any CPU, and the reference the SIMD
 * kernel is tested against.  It walks each group of blocks in its stored
 * (interleaved) order, summing unsigned codes times activation codes per block
 * in int32, then removes the codes' offset with the activations' block sums. */
#include "../quant.h"
#include "isa.h"

enum { GROUP_BYTES = SV_QGROUP * SV_QBLOCK };

/* isum[u] = sum of unsigned codes x activation codes of block u of the group of g blocks at w, x. */
static void group_sums(int32_t *isum, st_dtype t, const uint8_t *w, const int8_t *x, int64_t g) {
    for (int64_t u = 0; u < g; u++) isum[u] = 0;
    if (t == ST_Q8) {
        for (int64_t c = 0; c < 8; c++)
            for (int64_t u = 0; u < g; u++)
                for (int64_t j = 0; j < 4; j++) isum[u] += w[4 * g * c + 4 * u + j] * x[4 * g * c + 4 * u + j];
        return;
    }
    for (int64_t L = 0; L < 4; L++)
        for (int64_t u = 0; u < g; u++)
            for (int64_t j = 0; j < 4; j++) {
                int byte = w[4 * g * L + 4 * u + j];
                isum[u] += (byte & 0xF) * x[4 * g * (2 * L) + 4 * u + j] + (byte >> 4) * x[4 * g * (2 * L + 1) + 4 * u + j];
            }
}

static void dot(float *y, int64_t ldy, const int8_t *xq, int64_t ldq, const float *xd, const int32_t *xs,
                int64_t n, const sv_matrix *W, const float *b, int64_t r0, int64_t r1) {
    const int64_t nb = sv_q_blocks(W->cols), groups = (nb + SV_QGROUP - 1) / SV_QGROUP;
    const int64_t group_bytes = W->dtype == ST_Q8 ? GROUP_BYTES : GROUP_BYTES / 2;
    const int32_t offset = W->dtype == ST_Q8 ? 128 : 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *codes = sv_q_codes(W, r);
        const uint16_t *scales = sv_q_scales(W, r);
        for (int64_t i = 0; i < n; i++) {
            float acc = 0.0f;
            for (int64_t grp = 0; grp < groups; grp++) {
                int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP, b0 = grp * SV_QGROUP;
                int32_t isum[SV_QGROUP];
                group_sums(isum, W->dtype, codes + grp * group_bytes, xq + i * ldq + grp * GROUP_BYTES, g);
                for (int64_t u = 0; u < g; u++)
                    acc += sv_f16_to_float(scales[b0 + u]) * xd[i * nb + b0 + u] *
                           (float)(isum[u] - offset * xs[i * nb + b0 + u]);
            }
            y[i * ldy + r] = acc + (b ? b[r] : 0.0f);
        }
    }
}

const sv_quant_isa sv_quant_isa_portable = {
    .name = "portable",
    .quantize = sv_q_quantize_activations,
    .dot = dot,
    .dot_max_n = 8, /* (where the ISA has no GEMM, portable, the driver runs dot for every n) */
};
