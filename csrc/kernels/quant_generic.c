/* quant_generic.c - the portable int8 dot kernel for quantized weights (ST_Q8,
 * ST_Q4; formats in quant.h): plain C for any CPU, and the reference the SIMD
 * kernel is tested against.  Each group of up to 4 blocks of a weight row is
 * unpacked to signed codes once and used for every activation row. */
#include "../quant.h"
#include "isa.h"

enum { GROUP = 4 * SV_QBLOCK, XROWS = 8 };

/* q[32 g] = the signed codes of the group of g blocks at element 128 * group of a row. */
static void unpack_group(int8_t *q, st_dtype t, const uint8_t *codes, int64_t group, int64_t g) {
    if (t == ST_Q8) {
        const uint8_t *src = codes + group * GROUP;
        for (int64_t j = 0; j < 32 * g; j++) q[j] = (int8_t)(src[j] - 128);
        return;
    }
    const uint8_t *src = codes + group * 64;
    for (int64_t j = 0; j < 16 * g; j++) {
        q[j] = (int8_t)((src[j] & 0xF) - 8);
        q[16 * g + j] = (int8_t)((src[j] >> 4) - 8);
    }
}

static void dot(float *y, int64_t ldy, const int8_t *xq, int64_t ldq, const float *xd, int64_t n,
                const sv_matrix *W, const float *b, int64_t r0, int64_t r1) {
    const int64_t nb = sv_q_blocks(W->cols), groups = (nb + 3) / 4;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *codes = sv_q_codes(W, r);
        const uint16_t *scales = sv_q_scales(W, r);
        float dw[4];
        for (int64_t ib = 0; ib < n; ib += XROWS) {
            int64_t ni = n - ib < XROWS ? n - ib : XROWS;
            float acc[XROWS] = {0};
            for (int64_t grp = 0; grp < groups; grp++) {
                int64_t g = nb - 4 * grp < 4 ? nb - 4 * grp : 4;
                int8_t q[GROUP];
                unpack_group(q, W->dtype, codes, grp, g);
                for (int64_t k = 0; k < g; k++) dw[k] = sv_f16_to_float(scales[4 * grp + k]);
                for (int64_t i = 0; i < ni; i++) {
                    const int8_t *x = xq + (ib + i) * ldq + grp * GROUP;
                    const float *d = xd + (ib + i) * nb + 4 * grp;
                    for (int64_t k = 0; k < g; k++) {
                        int32_t isum = 0;
                        for (int j = 0; j < SV_QBLOCK; j++) isum += q[k * SV_QBLOCK + j] * x[k * SV_QBLOCK + j];
                        acc[i] += dw[k] * d[k] * (float)isum;
                    }
                }
            }
            for (int64_t i = 0; i < ni; i++) y[(ib + i) * ldy + r] = acc[i] + (b ? b[r] : 0.0f);
        }
    }
}

const sv_quant_isa sv_quant_isa_portable = {
    .name = "portable",
    .dot = dot,
    .dot_max_n = 8, /* (where the ISA has no GEMM, portable, the driver runs dot for every n) */
};
