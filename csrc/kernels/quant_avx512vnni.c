/* quant_avx512vnni.c - the int8 dot kernel for quantized weights (ST_Q8,
 * ST_Q4; formats in quant.h) on x86-64 CPUs with AVX-512 VNNI.  CMake
 * compiles this one file with those target flags (SV_VNNI_KERNELS: when the
 * compiler has them); dispatch.c hands its table out only after checking the CPU.
 *
 * One step covers a group of 4 blocks (128 columns) of NR weight rows: the
 * codes (Q8: two 64-byte loads; Q4: one load, split into low and high
 * nibbles, which the group layout puts in element order) are unsigned bytes,
 * the activations signed, and vpdpbusd sums each lane's 4 products in int32,
 * starting from -offset * (the lane's 4 activations) so the codes' offset
 * (128 or 8) cancels exactly.  Lanes 0-7 of each half then hold one block,
 * 8-15 the next: their int sums are converted to fp32 and multiplied by the
 * block's two scales, broadcast per half-vector by a permute.  A row's last
 * nb % 4 blocks take the portable sv_q_dot_blocks. */
#ifdef SV_VNNI_KERNELS
#include <immintrin.h>

#include "../quant.h"
#include "isa.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

enum { NR = 4 }; /* weight rows per tile: each activation vector is loaded once for all of them */

/* y[r] (r < nr) = row r of the tile against one activation row, whole groups of 4 blocks only. */
INLINE void tile(float *out, const sv_matrix *W, int64_t r0, const int nr, const int8_t *xq, const float *xd,
                 int64_t groups) {
    const st_dtype t = W->dtype;
    const int64_t row_bytes = sv_q_row_bytes(t, W->cols), nb = sv_q_blocks(W->cols);
    const uint8_t *codes = sv_q_codes(W, r0);
    const uint16_t *scales = sv_q_scales(W, r0);
    const __m512i offset = _mm512_set1_epi8(t == ST_Q8 ? (char)128 : 8), low = _mm512_set1_epi8(0x0F);
    const __m512i half0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i half1 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    __m512 acc[NR];
    UNROLL
    for (int r = 0; r < nr; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t grp = 0; grp < groups; grp++) {
        const __m512i x0 = _mm512_loadu_si512(xq + grp * 128), x1 = _mm512_loadu_si512(xq + grp * 128 + 64);
        const __m512i c0 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, x0));
        const __m512i c1 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, x1));
        const __m128 dx = _mm_loadu_ps(xd + grp * 4);
        UNROLL
        for (int r = 0; r < nr; r++) {
            __m512i w0, w1;
            if (t == ST_Q8) {
                w0 = _mm512_loadu_si512(codes + r * row_bytes + grp * 128);
                w1 = _mm512_loadu_si512(codes + r * row_bytes + grp * 128 + 64);
            } else {
                const __m512i v = _mm512_loadu_si512(codes + r * row_bytes + grp * 64);
                w0 = _mm512_and_si512(v, low);
                w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            }
            const __m512i i0 = _mm512_dpbusd_epi32(c0, w0, x0), i1 = _mm512_dpbusd_epi32(c1, w1, x1);
            const __m128i dw16 = _mm_loadl_epi64((const __m128i *)(const void *)(scales + r * nb + grp * 4));
            const __m512 s = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(dw16), dx));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_permutexvar_ps(half0, s), acc[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_permutexvar_ps(half1, s), acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < nr; r++) out[r] = _mm512_reduce_add_ps(acc[r]);
}

static void dot(float *y, int64_t ldy, const int8_t *xq, int64_t ldq, const float *xd, int64_t n,
                const sv_matrix *W, const float *b, int64_t r0, int64_t r1) {
    const int64_t nb = sv_q_blocks(W->cols), groups = nb / 4;
    for (int64_t i = 0; i < n; i++) {
        const int8_t *x = xq + i * ldq;
        const float *d = xd + i * nb;
        float *yi = y + i * ldy;
        int64_t r = r0;
        float out[NR];
        for (; r + NR <= r1; r += NR) {
            tile(out, W, r, NR, x, d, groups);
            for (int k = 0; k < NR; k++) yi[r + k] = out[k];
        }
        for (; r < r1; r++) {
            tile(out, W, r, 1, x, d, groups);
            yi[r] = out[0];
        }
        for (r = r0; r < r1; r++) {
            if (groups * 4 < nb) yi[r] += sv_q_dot_blocks(W, r, x, d, groups * 4, nb);
            if (b) yi[r] += b[r];
        }
    }
}

const sv_quant_isa sv_quant_isa_avx512vnni = {
    .name = "avx512vnni",
    .dot = dot,
    .dot_max_n = 8,
};

#endif
