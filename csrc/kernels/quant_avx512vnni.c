/* quant_avx512vnni.c - the int8 dot kernel for quantized weights (ST_Q8,
 * ST_Q4; formats in quant.h) on x86-64 CPUs with AVX-512 VNNI.  CMake
 * compiles this one file with those target flags (SV_VNNI_KERNELS: when the
 * compiler has them); dispatch.c hands its table out only after checking the CPU.
 *
 * The group layout puts block u of a group of 16 in lane u of every 64-byte
 * chunk, so for each weight row vpdpbusd (unsigned codes x signed activation
 * codes, 4 products a lane) accumulates a block's whole int32 sum in its own
 * lane over the group's 8 chunks (Q4: 4 loads, each split into low and high
 * nibbles), starting from -offset * (the block's activation code sum) so the
 * codes' offset cancels exactly.  Then one conversion and one multiply-add by
 * the 16 blocks' weight x activation scales.  A short last group (fewer than
 * 16 blocks) runs the same code with masked loads that read zeros past it.
 * Rows are read one after the other, each once per activation row (n is
 * small here: dot_max_n). */
#ifdef SV_VNNI_KERNELS
#include <immintrin.h>
#include <string.h>

#include "../quant.h"
#include "isa.h"

#define INLINE static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 8")

/* One row at a time, with the next rows following in memory, makes the whole matrix one sequential
 * stream; tiles of several rows (sharing the activation loads) read several short streams at once and
 * measured 30-40% slower (32768 x 2048, one thread).  Software prefetch ahead of the codes' stream
 * (sv_stream_prefetch bytes) measured slower on Zen 4 (131072 x 2048, A/B in one process: q8 46 vs 56 GB/s,
 * q4 37 vs 43 GB/s on 2 threads), and faster on Sapphire Rapids (2.2B decode: q8 13.5 -> 15.4 tok/s, q4
 * 23.4 -> 24.4, at 2 KB; 1.5 KB, the BF16 kernel's best, measured the same for q8 and q4), so it is on
 * there only. */

/* -offset * the blocks' activation code sums (offset 128 for q8 codes, 8 for q4): a shift and a subtraction,
 * where vpmulld takes two uops on the port vpdpbusd needs (8 q8 sequences' decode: compute bound there). */
INLINE __m512i offset_sums(st_dtype t, __m512i sums) {
    return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, t == ST_Q8 ? 7 : 3));
}

/* The group grp of g blocks of one weight row (codes w, scales sc) against one activation row:
 * returns acc + sum over its blocks of scale products x int32 block sums. */
INLINE __m512 group_dot(__m512 acc, st_dtype t, const uint8_t *w, const uint16_t *sc, const int8_t *xq,
                        const float *xd, const int32_t *xs, int64_t grp, int64_t g) {
    const __mmask64 m = g == SV_QGROUP ? ~(__mmask64)0 : (((__mmask64)1 << (4 * g)) - 1);
    const __mmask16 m16 = (__mmask16)((1u << g) - 1);
    const int8_t *x = xq + grp * SV_QGROUP * SV_QBLOCK;
    /* -offset * (each block's activation code sum) starts the sums, cancelling the codes' offset */
    __m512i even = offset_sums(t, _mm512_maskz_loadu_epi32(m16, xs + grp * SV_QGROUP));
    __m512i odd = _mm512_setzero_si512(); /* two chains of vpdpbusd, half as long */
    if (t == ST_Q8) {
        UNROLL
        for (int c = 0; c < 8; c += 2) {
            even = _mm512_dpbusd_epi32(even, _mm512_maskz_loadu_epi8(m, w + 4 * g * c),
                                       _mm512_maskz_loadu_epi8(m, x + 4 * g * c));
            odd = _mm512_dpbusd_epi32(odd, _mm512_maskz_loadu_epi8(m, w + 4 * g * (c + 1)),
                                      _mm512_maskz_loadu_epi8(m, x + 4 * g * (c + 1)));
        }
    } else {
        const __m512i low = _mm512_set1_epi8(0x0F);
        UNROLL
        for (int L = 0; L < 4; L++) {
            const __m512i v = _mm512_maskz_loadu_epi8(m, w + 4 * g * L);
            even = _mm512_dpbusd_epi32(even, _mm512_and_si512(v, low), _mm512_maskz_loadu_epi8(m, x + 4 * g * 2 * L));
            odd = _mm512_dpbusd_epi32(odd, _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                                      _mm512_maskz_loadu_epi8(m, x + 4 * g * (2 * L + 1)));
        }
    }
    const __m512 dx = _mm512_maskz_loadu_ps(m16, xd + grp * SV_QGROUP);
    const __m512 s = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, sc + grp * SV_QGROUP)), dx);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)), s, acc);
}

/* The cache lines of one group's codes, `ahead` bytes on. */
INLINE void prefetch_group(const uint8_t *codes, int64_t group_bytes, int64_t ahead) {
    for (int64_t line = 0; line < group_bytes; line += 64) __builtin_prefetch(codes + ahead + line, 0, 3);
}

/* Row r of W against one activation row; its codes prefetched `ahead` bytes in front of the loads. */
INLINE float row_dot(const sv_matrix *W, int64_t r, const int8_t *xq, const float *xd, const int32_t *xs,
                     int64_t ahead) {
    const st_dtype t = W->dtype;
    const int64_t nb = sv_q_blocks(W->cols), full = nb / SV_QGROUP;
    const int64_t group_bytes = t == ST_Q8 ? SV_QGROUP * SV_QBLOCK : SV_QGROUP * SV_QBLOCK / 2;
    const uint8_t *w = sv_q_codes(W, r);
    const uint16_t *sc = sv_q_scales(W, r);
    __m512 acc = _mm512_setzero_ps();
    if (t == ST_Q8)
        for (int64_t grp = 0; grp < full; grp++) {
            prefetch_group(w + grp * group_bytes, group_bytes, ahead);
            acc = group_dot(acc, ST_Q8, w + grp * group_bytes, sc, xq, xd, xs, grp, SV_QGROUP);
        }
    else
        for (int64_t grp = 0; grp < full; grp++) {
            prefetch_group(w + grp * group_bytes, group_bytes, ahead);
            acc = group_dot(acc, ST_Q4, w + grp * group_bytes, sc, xq, xd, xs, grp, SV_QGROUP);
        }
    if (full * SV_QGROUP < nb) acc = group_dot(acc, t, w + full * group_bytes, sc, xq, xd, xs, full, nb - full * SV_QGROUP);
    return _mm512_reduce_add_ps(acc);
}

/* group_dot for NI activation rows at once (batched decode): the group's codes are loaded (and for q4
 * unpacked) once for all of them rather than once per row, one vpdpbusd chain per row. */
INLINE void group_dot_rows(__m512 *acc, st_dtype t, const uint8_t *w, const uint16_t *sc, const int8_t *xq,
                           int64_t ldq, const float *xd, const int32_t *xs, int64_t nb, int64_t grp, int64_t g,
                           const int NI) {
    const __mmask64 m = g == SV_QGROUP ? ~(__mmask64)0 : (((__mmask64)1 << (4 * g)) - 1);
    const __mmask16 m16 = (__mmask16)((1u << g) - 1);
    __m512i codes[8]; /* chunk c multiplies the activations at 4 g c: q8 as stored, q4 low and high nibbles */
    if (t == ST_Q8) {
        UNROLL
        for (int c = 0; c < 8; c++) codes[c] = _mm512_maskz_loadu_epi8(m, w + 4 * g * c);
    } else {
        const __m512i low = _mm512_set1_epi8(0x0F);
        UNROLL
        for (int L = 0; L < 4; L++) {
            const __m512i v = _mm512_maskz_loadu_epi8(m, w + 4 * g * L);
            codes[2 * L] = _mm512_and_si512(v, low);
            codes[2 * L + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
    }
    const __m512 wscale = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, sc + grp * SV_QGROUP));
    UNROLL
    for (int i = 0; i < NI; i++) {
        const int8_t *x = xq + i * ldq + grp * SV_QGROUP * SV_QBLOCK;
        __m512i sum = offset_sums(t, _mm512_maskz_loadu_epi32(m16, xs + i * nb + grp * SV_QGROUP));
        UNROLL
        for (int c = 0; c < 8; c++) sum = _mm512_dpbusd_epi32(sum, codes[c], _mm512_maskz_loadu_epi8(m, x + 4 * g * c));
        const __m512 dx = _mm512_maskz_loadu_ps(m16, xd + i * nb + grp * SV_QGROUP);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(wscale, dx), acc[i]);
    }
}

/* y[i * ldy] = row r of W . activation row i + bias, for NI activation rows (their codes ldq apart). */
INLINE void row_dot_rows(float *y, int64_t ldy, const sv_matrix *W, int64_t r, const int8_t *xq, int64_t ldq,
                         const float *xd, const int32_t *xs, float bias, int64_t ahead, const int NI) {
    const st_dtype t = W->dtype;
    const int64_t nb = sv_q_blocks(W->cols), full = nb / SV_QGROUP;
    const int64_t group_bytes = t == ST_Q8 ? SV_QGROUP * SV_QBLOCK : SV_QGROUP * SV_QBLOCK / 2;
    const uint8_t *w = sv_q_codes(W, r);
    const uint16_t *sc = sv_q_scales(W, r);
    __m512 acc[8];
    UNROLL
    for (int i = 0; i < NI; i++) acc[i] = _mm512_setzero_ps();
    if (t == ST_Q8)
        for (int64_t grp = 0; grp < full; grp++) {
            prefetch_group(w + grp * group_bytes, group_bytes, ahead);
            group_dot_rows(acc, ST_Q8, w + grp * group_bytes, sc, xq, ldq, xd, xs, nb, grp, SV_QGROUP, NI);
        }
    else
        for (int64_t grp = 0; grp < full; grp++) {
            prefetch_group(w + grp * group_bytes, group_bytes, ahead);
            group_dot_rows(acc, ST_Q4, w + grp * group_bytes, sc, xq, ldq, xd, xs, nb, grp, SV_QGROUP, NI);
        }
    if (full * SV_QGROUP < nb)
        group_dot_rows(acc, t, w + full * group_bytes, sc, xq, ldq, xd, xs, nb, full, nb - full * SV_QGROUP, NI);
    UNROLL
    for (int i = 0; i < NI; i++) y[i * ldy] = _mm512_reduce_add_ps(acc[i]) + bias;
}

/* sv_q_quantize_activations (quant.h) with AVX-512: the same operations (max |x|, x * (127 / max),
 * rounded to nearest even by the conversion) give the same codes. */
static void quantize(int8_t *xq, float *xd, int32_t *xs, const float *x, int64_t k) {
    const int64_t nb = sv_q_blocks(k);
    for (int64_t b = 0; b < nb; b++) {
        int64_t c0 = b * SV_QBLOCK, len = k - c0 < SV_QBLOCK ? k - c0 : SV_QBLOCK;
        int64_t grp = b / SV_QGROUP, u = b % SV_QGROUP;
        int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
        __mmask16 m0 = len >= 16 ? 0xFFFF : (__mmask16)((1u << len) - 1);
        __mmask16 m1 = len >= 32 ? 0xFFFF : len > 16 ? (__mmask16)((1u << (len - 16)) - 1) : 0;
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + c0), v1 = _mm512_maskz_loadu_ps(m1, x + c0 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
        xs[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        xd[b] = amax / 127.0f;
        uint32_t chunks[8];
        _mm_storeu_si128((__m128i *)(void *)chunks, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(void *)(chunks + 4), _mm512_cvtepi32_epi8(q1));
        int8_t *dst = xq + grp * SV_QGROUP * SV_QBLOCK + 4 * u;
        for (int c = 0; c < 8; c++) memcpy(dst + 4 * g * c, &chunks[c], 4);
    }
}

static void dot(float *y, int64_t ldy, const int8_t *xq, int64_t ldq, const float *xd, const int32_t *xs,
                int64_t n, const sv_matrix *W, const float *b, int64_t r0, int64_t r1) {
    const int64_t nb = sv_q_blocks(W->cols), ahead = sv_stream_prefetch();
    /* rows outer: a weight row is read from memory once; one activation row streams it (prefetched), more
     * share each load of it, 8 or 4 at a time */
    for (int64_t r = r0; r < r1; r++) {
        const float bias = b ? b[r] : 0.0f;
        if (n == 1) {
            y[r] = row_dot(W, r, xq, xd, xs, ahead) + bias;
            continue;
        }
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            row_dot_rows(y + i * ldy + r, ldy, W, r, xq + i * ldq, ldq, xd + i * nb, xs + i * nb, bias,
                         i == 0 ? ahead : 0, 8);
        for (; i + 4 <= n; i += 4)
            row_dot_rows(y + i * ldy + r, ldy, W, r, xq + i * ldq, ldq, xd + i * nb, xs + i * nb, bias,
                         i == 0 ? ahead : 0, 4);
        for (; i < n; i++)
            row_dot_rows(y + i * ldy + r, ldy, W, r, xq + i * ldq, ldq, xd + i * nb, xs + i * nb, bias,
                         i == 0 ? ahead : 0, 1);
    }
}

const sv_quant_isa sv_quant_isa_avx512vnni = {
    .name = "avx512vnni",
    .quantize = quantize,
    .dot = dot,
    .dot_max_n = 8,
};

#endif
