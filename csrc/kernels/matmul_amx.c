/* matmul_amx.c - the AMX BF16 GEMM (matmul_amx_impl.h) on the real tile
 * instructions, for x86-64 CPUs with AMX-TILE and AMX-BF16 (Sapphire Rapids
 * and later).  CMake compiles this one file with -mamx-tile -mamx-bf16 and
 * the AVX-512 flags (SV_AMX_KERNELS: when the compiler has them); dispatch.c
 * hands its table out only after cpuid, Linux's grant of the tile state and
 * a self-check against plain C (amx_check.c) all pass.
 *
 * Panels are packed by the AVX512_BF16 GEMM's pack (every AMX CPU has
 * AVX512_BF16; level amx sits above avx512bf16): its layout is the one the
 * B tiles read. */
#if defined(SV_AMX_KERNELS) && defined(SV_BF16_KERNELS)
#include <immintrin.h>

#include "../quant.h"
#include "isa.h"

static void pack_pairs(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1) {
    sv_bf16_isa_avx512bf16.pack(panel, w, ldw, cols, r0, r1);
}

/* 16 codes (4 each of 4 blocks) times their blocks' scales d, less the codes' offset: v d + (-offset d),
 * exact (8-bit codes times 11-bit scales), so the one rounding is to BF16, as sv_q_dequantize_bf16's. */
static inline __m512 scaled(__m512i codes, __m512 d, __m512 offset_d) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(codes), d, offset_d);
}

/* Stores 64 values as BF16 (nearest even, as sv_float_to_bf16 for these values: never fp32 denormals, which
 * vcvtne2ps2bf16 would flush). */
static inline void store64(uint16_t *dst, const __m512 v[4]) {
    _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
    _mm512_storeu_si512(dst + 32, (__m512i)_mm512_cvtne2ps_pbh(v[3], v[2]));
}

/* sv_q_dequantize_bf16 with AVX-512 for whole groups (a short last group: the portable code).  A 64-byte
 * chunk of codes is 16 lanes of 4, lane u from block u, so each quarter of it (blocks 4p .. 4p + 3) takes
 * those blocks' scales spread over 4 lanes each, the same for all 8 chunks of the group.  2.2B prompt of
 * 512 tokens, 2 threads, Sapphire Rapids: q8 314-320 -> 368-386 tok/s, q4 295-300 -> 372-404 against the
 * portable dequantization to an fp32 row, rounded after (with x's columns put in the group order). */
static void dequantize_row(uint16_t *dst, const sv_matrix *W, int64_t r) {
    const int64_t full = sv_q_blocks(W->cols) / SV_QGROUP;
    const int q8 = W->dtype == ST_Q8;
    const int64_t group_bytes = SV_QGROUP * SV_QBLOCK / (q8 ? 1 : 2);
    const __m512 offset = _mm512_set1_ps(q8 ? -128.0f : -8.0f);
    const __m512i nibble = _mm512_set1_epi32(0x0F), lane_block = _mm512_srli_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 2);
    const uint8_t *codes = sv_q_codes(W, r);
    const uint16_t *scales = sv_q_scales(W, r);
    for (int64_t grp = 0; grp < full; grp++) {
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(scales + grp * SV_QGROUP)));
        __m512 dq[4], od[4];
        for (int p = 0; p < 4; p++) {
            dq[p] = _mm512_permutexvar_ps(_mm512_add_epi32(lane_block, _mm512_set1_epi32(4 * p)), d);
            od[p] = _mm512_mul_ps(dq[p], offset);
        }
        const uint8_t *w = codes + grp * group_bytes;
        uint16_t *out = dst + grp * SV_QGROUP * SV_QBLOCK;
        if (q8) {
            for (int c = 0; c < 8; c++) {
                __m512 v[4];
                for (int p = 0; p < 4; p++)
                    v[p] = scaled(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(w + 64 * c + 16 * p))),
                                  dq[p], od[p]);
                store64(out + 64 * c, v);
            }
        } else {
            for (int L = 0; L < 4; L++) { /* low nibbles: chunk 2 L, high: chunk 2 L + 1 */
                __m512 lo[4], hi[4];
                for (int p = 0; p < 4; p++) {
                    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(w + 64 * L + 16 * p)));
                    lo[p] = scaled(_mm512_and_si512(v, nibble), dq[p], od[p]);
                    hi[p] = scaled(_mm512_srli_epi32(v, 4), dq[p], od[p]);
                }
                store64(out + 128 * L, lo);
                store64(out + 128 * L + 64, hi);
            }
        }
    }
    if (full * SV_QGROUP < sv_q_blocks(W->cols)) sv_q_dequantize_bf16(dst + full * SV_QGROUP * SV_QBLOCK, W, r, full);
}

#define AMX_TABLE sv_amx_isa_tiles
#define AMX_NAME "amx"
/* Products of 2 to 16 rows whose K is whole tiles take gemm_few (the weights read in place; 2.2B decoder,
 * Sapphire Rapids, 2 / 4 / 8 sequences: 13.7 / 24.5 / 44 tok/s against 11.9 / 19.8 / 35 before).  The
 * packed GEMM takes the rest above 4 rows: up to 4 the AVX512_BF16 dot kernel measured faster than it, and
 * one sequence's decode stays a GEMV. */
#define AMX_MIN_N 4
#include "matmul_amx_impl.h"

_Static_assert(PANEL == 32, "pack_pairs is the AVX512_BF16 pack, whose panels are 32 wide");

#endif
