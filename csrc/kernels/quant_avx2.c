/* quant_avx2.c - the int8 dot kernel for quantized weights (ST_Q8, ST_Q4;
 * formats in quant.h) for x86-64 CPUs with AVX2 but without AVX-512 VNNI.
 * CMake compiles this file with AVX2/FMA/F16C; dispatch.c hands its table out
 * only after checking the CPU.
 *
 * Same plan as quant_avx512vnni.c with 256-bit vectors: each 64-byte chunk of a
 * group is two halves (blocks 0-7 and 8-15), and without vpdpbusd the products
 * go through vpmaddubsw (unsigned x signed bytes, pairs summed in int16) and
 * vpmaddwd (pairs of those summed in int32).  vpmaddubsw saturates at 32767, so
 * Q8 codes are made signed (code - 128, within [-127, 127]) and multiplied as
 * |x| times the code carrying x's sign (at most 2 * 127 * 127 a pair); Q4's
 * nibbles (0..15) multiply x directly and 8 * (the block's code sum) is taken
 * off once.  A short last group is copied into zero-padded buffers first. */
#ifdef SV_X86_KERNELS
#include <immintrin.h>
#include <string.h>

#include "../quant.h"
#include "isa.h"
#include "lanes_avx2.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

enum { AHEAD = 4096 }; /* bytes prefetched ahead of the row being read (as quant_avx512vnni.c) */

/* A full group of 16 blocks: w (Q8: 8 chunks of 64 bytes; Q4: 4), x (8 chunks), sc, xd, xs [16]. */
INLINE void group_dot(__m256 acc[2], st_dtype t, const uint8_t *w, const int8_t *x, const uint16_t *sc,
                        const float *xd, const int32_t *xs, const int prefetch) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    if (t == ST_Q8) {
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        UNROLL
        for (int c = 0; c < 8; c++) {
            if (prefetch) _mm_prefetch((const char *)w + AHEAD + 64 * c, _MM_HINT_T0);
            UNROLL
            for (int h = 0; h < 2; h++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(x + 64 * c + 32 * h));
                const __m256i code = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(w + 64 * c + 32 * h)), flip);
                const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(code, xv));
                isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(p, ones));
            }
        }
    } else {
        const __m256i low = _mm256_set1_epi8(0x0F);
        UNROLL
        for (int L = 0; L < 4; L++) {
            if (prefetch) _mm_prefetch((const char *)w + AHEAD + 64 * L, _MM_HINT_T0);
            UNROLL
            for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(w + 64 * L + 32 * h));
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)(x + 128 * L + 32 * h));
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(x + 128 * L + 64 + 32 * h));
                /* two products of at most 15 * 127 * 2 each: their int16 sum cannot saturate */
                const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(v, low), x0),
                                                   _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), x1));
                isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(p, ones));
            }
        }
        UNROLL
        for (int h = 0; h < 2; h++)
            isum[h] = _mm256_sub_epi32(isum[h], _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(xs + 8 * h)), 3));
    }
    UNROLL
    for (int h = 0; h < 2; h++) {
        const __m256 s = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(sc + 8 * h))),
                                       _mm256_loadu_ps(xd + 8 * h));
        acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[h]), s, acc[h]);
    }
}

/* Row r of W against one activation row. */
static float row_dot(const sv_matrix *W, int64_t r, const int8_t *xq, const float *xd, const int32_t *xs) {
    const st_dtype t = W->dtype;
    const int64_t nb = sv_q_blocks(W->cols), full = nb / SV_QGROUP;
    const int64_t group_bytes = t == ST_Q8 ? SV_QGROUP * SV_QBLOCK : SV_QGROUP * SV_QBLOCK / 2;
    const uint8_t *w = sv_q_codes(W, r);
    const uint16_t *sc = sv_q_scales(W, r);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t grp = 0; grp < full; grp++) {
        int64_t b0 = grp * SV_QGROUP;
        if (t == ST_Q8) group_dot(acc, ST_Q8, w + grp * group_bytes, xq + b0 * SV_QBLOCK, sc + b0, xd + b0, xs + b0, 1);
        else group_dot(acc, ST_Q4, w + grp * group_bytes, xq + b0 * SV_QBLOCK, sc + b0, xd + b0, xs + b0, 1);
    }
    int64_t g = nb - full * SV_QGROUP, b0 = full * SV_QGROUP;
    if (g > 0) { /* the short last group, zero-padded to a full one: chunks of 4 g bytes spread to 64 */
        _Alignas(32) uint8_t wp[SV_QGROUP * SV_QBLOCK];
        _Alignas(32) int8_t xp[SV_QGROUP * SV_QBLOCK];
        uint16_t scp[SV_QGROUP] = {0};
        float xdp[SV_QGROUP] = {0};
        int32_t xsp[SV_QGROUP] = {0};
        memset(wp, t == ST_Q8 ? 0x80 : 0, sizeof wp); /* code 128 is a Q8 zero */
        memset(xp, 0, sizeof xp);
        for (int c = 0; c < 8; c++) {
            if (t == ST_Q8 || c < 4) memcpy(wp + 64 * c, w + full * group_bytes + 4 * g * c, (size_t)(4 * g));
            memcpy(xp + 64 * c, xq + b0 * SV_QBLOCK + 4 * g * c, (size_t)(4 * g));
        }
        memcpy(scp, sc + b0, (size_t)g * sizeof *scp);
        memcpy(xdp, xd + b0, (size_t)g * sizeof *xdp);
        memcpy(xsp, xs + b0, (size_t)g * sizeof *xsp);
        group_dot(acc, t, wp, xp, scp, xdp, xsp, 0);
    }
    return hsum(_mm256_add_ps(acc[0], acc[1]));
}

static void dot(float *y, int64_t ldy, const int8_t *xq, int64_t ldq, const float *xd, const int32_t *xs,
                int64_t n, const sv_matrix *W, const float *b, int64_t r0, int64_t r1) {
    const int64_t nb = sv_q_blocks(W->cols);
    /* rows outer: a weight row is read from memory once, the other input rows find it in L1 */
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < n; i++)
            y[i * ldy + r] = row_dot(W, r, xq + i * ldq, xd + i * nb, xs + i * nb) + (b ? b[r] : 0.0f);
}

const sv_quant_isa sv_quant_isa_avx2 = {
    .name = "avx2",
    .quantize = sv_q_quantize_activations,
    .dot = dot,
    .dot_max_n = 8,
};

#endif
