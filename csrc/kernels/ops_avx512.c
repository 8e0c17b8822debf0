/* ops_avx512.c - the small kernels built for AVX-512: ops_impl.h compiled with this
 * file's target flags (see CMakeLists.txt); dispatch.c hands the table out
 * only on CPUs that run it.
 *
 * dot_rows and dot_rows_bf16 are written out here instead: decode attention
 * calls them for every cached position (scores: one short row of head_dim
 * per key), and the plain-C version pays a 16-lane horizontal sum per row,
 * which made attention a third of a quantized model's decode step at 1.5k
 * context.  Here 16 rows run side by side and one transpose sums all 16.
 * So is softmax (ops_impl.h's exp_poly, the same polynomial and clamps, one
 * vector at a time): GCC's code for the plain-C loops ran at 1.7 G values/s
 * on Sapphire Rapids, and the vision tower's attention takes the softmax of
 * 8.5 million scores per layer. */
#ifdef SV_X86_KERNELS
#include <immintrin.h>
#include <stdint.h>

#include "isa.h"
#include "transpose_avx512.h"

#define UNROLL _Pragma("GCC unroll 16")

static inline __m512 load_f32(const float *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) { /* BF16 -> fp32 is a 16-bit shift */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* out[r] = scale * (x . rows[r * stride : r * stride + len]): blocks of 16 rows share each load of x and
 * keep 16 accumulators, summed across lanes together by one transpose; leftover rows one at a time. */
#define DOT_ROWS_AVX512(NAME, ROW_T, LOAD)                                                                      \
    static void NAME(float *out, const float *x, const ROW_T *rows, int64_t n_rows, int64_t len, int64_t stride, \
                     float scale) {                                                                             \
        const int64_t full = len / 16 * 16;                                                                     \
        const __mmask16 tail = (__mmask16)((1u << (len - full)) - 1);                                           \
        int64_t r = 0;                                                                                          \
        for (; r + 16 <= n_rows; r += 16) {                                                                     \
            const ROW_T *block = rows + r * stride;                                                             \
            __m512 acc[16];                                                                                     \
            UNROLL for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();                                   \
            for (int64_t k = 0; k < full; k += 16) {                                                            \
                const __m512 xv = _mm512_loadu_ps(x + k);                                                       \
                UNROLL for (int i = 0; i < 16; i++)                                                             \
                    acc[i] = _mm512_fmadd_ps(xv, LOAD(block + i * stride + k, 0xFFFF), acc[i]);                 \
            }                                                                                                   \
            if (tail) {                                                                                         \
                const __m512 xv = _mm512_maskz_loadu_ps(tail, x + full);                                        \
                UNROLL for (int i = 0; i < 16; i++)                                                             \
                    acc[i] = _mm512_fmadd_ps(xv, LOAD(block + i * stride + full, tail), acc[i]);                \
            }                                                                                                   \
            transpose16(acc); /* acc[j] lane i = lane j of row i's sums */                                      \
            UNROLL for (int s = 8; s > 0; s /= 2)                                                               \
                UNROLL for (int i = 0; i < s; i++) acc[i] = _mm512_add_ps(acc[i], acc[i + s]);                  \
            _mm512_storeu_ps(out + r, _mm512_mul_ps(acc[0], _mm512_set1_ps(scale)));                            \
        }                                                                                                       \
        for (; r < n_rows; r++) {                                                                               \
            const ROW_T *row = rows + r * stride;                                                               \
            __m512 acc = _mm512_setzero_ps();                                                                   \
            for (int64_t k = 0; k < full; k += 16)                                                              \
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), LOAD(row + k, 0xFFFF), acc);                      \
            if (tail) acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + full), LOAD(row + full, tail), acc); \
            out[r] = _mm512_reduce_add_ps(acc) * scale;                                                         \
        }                                                                                                       \
    }

DOT_ROWS_AVX512(dot_rows, float, load_f32)
DOT_ROWS_AVX512(dot_rows_bf16, uint16_t, load_bf16)

/* ops_impl.h's exp_poly on 16 lanes: e^x for x clamped to [-87, 88], x = m ln2 + r, e^r by its degree-5
 * polynomial, times 2^m (vscalefps, exact as ops_impl.h's product with 2^m built in the exponent field). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    const __m512 round = _mm512_set1_ps(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    __m512 m = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), round), round);
    __m512 r = _mm512_fnmadd_ps(m, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(m, _mm512_set1_ps(1.42860677e-06f), r);
    __m512 p = _mm512_set1_ps(SV_EXP_C5);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SV_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SV_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SV_EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(SV_EXP_C1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, m); /* p 2^m in one instruction: m is an integer in [-126, 127] */
}

/* max(x[0:n]) in every lane. */
static inline __m512 row_max(const float *x, int64_t n) {
    const int64_t full = n / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (n - full)) - 1);
    __m512 top = _mm512_set1_ps(x[0]);
    for (int64_t k = 0; k < full; k += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(x + k));
    top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, x + full));
    return _mm512_set1_ps(_mm512_reduce_max_ps(top));
}

/* 16 positive finite floats rounded to BF16, nearest even: add 0x7FFF and the kept part's lowest bit, keep
 * the high half (isa.h's sv_float_to_bf16). */
static inline __m256i to_bf16(__m512 e) {
    const __m512i u = _mm512_castps_si512(e);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(u, bias), 16));
}

/* e^(x - max x) for x[0:n], stored in fp32 to out (in place is fine) or, out NULL, rounded to BF16 in
 * out16; returns the sum of the fp32 terms.  Inlined into each caller with its store fixed. */
static inline __attribute__((always_inline)) float exp_pass(const float *x, int64_t n, float *out, uint16_t *out16) {
    const int64_t full = n / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (n - full)) - 1);
    const __m512 max = row_max(x, n);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < full; k += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + k), max));
        sum = _mm512_add_ps(sum, e);
        if (out) _mm512_storeu_ps(out + k, e);
        else _mm256_storeu_si256((__m256i *)(void *)(out16 + k), to_bf16(e));
    }
    if (tail) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + full), max));
        sum = _mm512_mask_add_ps(sum, tail, sum, e);
        if (out) _mm512_mask_storeu_ps(out + full, tail, e);
        else _mm256_mask_storeu_epi16(out16 + full, tail, to_bf16(e));
    }
    return _mm512_reduce_add_ps(sum);
}

#ifdef SV_BF16_KERNELS
/* exp_pass's BF16 store at levels avx512bf16 and amx: vcvtne2ps2bf16 rounds 32 terms to BF16 in one instruction
 * (nearest even, as to_bf16: the terms are normal floats, e^-87 at least, so its flushing of denormals never
 * applies) where to_bf16 takes six for 16; the sum adds the terms in exp_pass's order, so both give the same
 * bits (checked: identical outputs).  Sapphire Rapids, the vision tower: the softmax 7.4% -> 6.2% of a tile (perf). */
__attribute__((target("avx512bf16"))) static float exp_pass_bf16(const float *x, int64_t n, uint16_t *out16) {
    const int64_t pairs = n / 32 * 32;
    const __m512 max = row_max(x, n);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < pairs; k += 32) {
        const __m512 e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + k), max));
        const __m512 e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + k + 16), max));
        sum = _mm512_add_ps(_mm512_add_ps(sum, e0), e1);
        _mm512_storeu_si512(out16 + k, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
    for (int64_t k = pairs; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? 0xFFFF : (__mmask16)((1u << (n - k)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + k), max));
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        _mm256_mask_storeu_epi16(out16 + k, m, to_bf16(e));
    }
    return _mm512_reduce_add_ps(sum);
}

/* softmax_bf16 of sv_ops_avx512bf16 (OPS_TABLE_BF16 below). */
__attribute__((target("avx512bf16"))) static float softmax_bf16_cvt(uint16_t *p, int64_t ld, const float *x,
                                                                     int64_t n) {
    const float sum = exp_pass_bf16(x, n, p);
    for (int64_t i = n; i < ld; i++) p[i] = 0;
    return sum;
}
#endif

/* ops_impl.h's softmax_bf16 on 16 lanes: the max, then one pass that makes each term, adds it to the sum
 * and stores it rounded. */
static float softmax_bf16(uint16_t *p, int64_t ld, const float *x, int64_t n) {
    const float sum = exp_pass(x, n, NULL, p);
    for (int64_t i = n; i < ld; i++) p[i] = 0;
    return sum;
}

/* x = e^(x - max) / sum, in place: a pass for the max, one for the exponentials and their sum, one to scale. */
static void softmax(float *x, int64_t n) {
    const int64_t full = n / 16 * 16;
    const __mmask16 tail = (__mmask16)((1u << (n - full)) - 1);
    const __m512 inv = _mm512_set1_ps(1.0f / exp_pass(x, n, x, NULL));
    for (int64_t k = 0; k < full; k += 16) _mm512_storeu_ps(x + k, _mm512_mul_ps(_mm512_loadu_ps(x + k), inv));
    if (tail) _mm512_mask_storeu_ps(x + full, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + full), inv));
}

#define OPS_TABLE sv_ops_avx512
#ifdef SV_BF16_KERNELS /* levels avx512bf16 and amx: the same with softmax_bf16's terms rounded by vcvtne2ps2bf16 */
#define OPS_TABLE_BF16 sv_ops_avx512bf16
#define OPS_SOFTMAX_BF16 softmax_bf16_cvt
#endif
#define OPS_OWN_DOT_ROWS
#define OPS_OWN_SOFTMAX
#include "ops_impl.h"
#endif
