/* ops_avx2.c - the small kernels built for AVX2 + FMA: ops_impl.h compiled with this
 * file's target flags (see CMakeLists.txt); dispatch.c hands the table out
 * only on CPUs that run it.
 *
 * dot_rows and dot_rows_bf16 are written out here, as in ops_avx512.c: decode
 * attention calls them for every cached position of every sequence (scores:
 * one head_dim row per key), and the plain-C version pays an 8-lane horizontal
 * sum per row (attention was a fifth of a batched decode step of 8 sequences
 * at 256 tokens).  Here 8 rows run side by side and one transpose sums all 8. */
#ifdef SV_X86_KERNELS
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "lanes_avx2.h"

#define UNROLL _Pragma("GCC unroll 8")

static inline __m256 load_f32(const float *p) { return _mm256_loadu_ps(p); }

static inline __m256 load_bf16(const uint16_t *p) { /* BF16 -> fp32 is a 16-bit shift */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
}

/* The n < 8 elements at p, zero-padded to 8. */
static inline __m256 load_f32_tail(const float *p, int64_t n) {
    float buf[8] = {0};
    memcpy(buf, p, (size_t)n * sizeof *p);
    return _mm256_loadu_ps(buf);
}

static inline __m256 load_bf16_tail(const uint16_t *p, int64_t n) {
    uint16_t buf[8] = {0};
    memcpy(buf, p, (size_t)n * sizeof *p);
    return load_bf16(buf);
}

/* out[r] = scale * (x . rows[r * stride : r * stride + len]): blocks of 8 rows share each load of x and
 * keep 8 accumulators, summed across lanes together by one transpose; leftover rows one at a time. */
#define DOT_ROWS_AVX2(NAME, ROW_T, LOAD, LOAD_TAIL)                                                            \
    static void NAME(float *out, const float *x, const ROW_T *rows, int64_t n_rows, int64_t len, int64_t stride, \
                     float scale) {                                                                             \
        const int64_t full = len / 8 * 8, rest = len - full;                                                    \
        const __m256 x_tail = rest ? load_f32_tail(x + full, rest) : _mm256_setzero_ps();                       \
        int64_t r = 0;                                                                                          \
        for (; r + 8 <= n_rows; r += 8) {                                                                       \
            const ROW_T *block = rows + r * stride;                                                             \
            __m256 acc[8];                                                                                      \
            UNROLL for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();                                    \
            for (int64_t k = 0; k < full; k += 8) {                                                             \
                const __m256 xv = _mm256_loadu_ps(x + k);                                                       \
                UNROLL for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(xv, LOAD(block + i * stride + k), acc[i]); \
            }                                                                                                   \
            if (rest)                                                                                           \
                UNROLL for (int i = 0; i < 8; i++)                                                              \
                    acc[i] = _mm256_fmadd_ps(x_tail, LOAD_TAIL(block + i * stride + full, rest), acc[i]);       \
            transpose8(acc); /* acc[j] lane i = lane j of row i's sums */                                       \
            UNROLL for (int s = 4; s > 0; s /= 2)                                                               \
                UNROLL for (int i = 0; i < s; i++) acc[i] = _mm256_add_ps(acc[i], acc[i + s]);                  \
            _mm256_storeu_ps(out + r, _mm256_mul_ps(acc[0], _mm256_set1_ps(scale)));                            \
        }                                                                                                       \
        for (; r < n_rows; r++) {                                                                               \
            const ROW_T *row = rows + r * stride;                                                               \
            __m256 acc = _mm256_setzero_ps();                                                                   \
            for (int64_t k = 0; k < full; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), LOAD(row + k), acc); \
            if (rest) acc = _mm256_fmadd_ps(x_tail, LOAD_TAIL(row + full, rest), acc);                          \
            out[r] = hsum(acc) * scale;                                                                         \
        }                                                                                                       \
    }

DOT_ROWS_AVX2(dot_rows, float, load_f32, load_f32_tail)
DOT_ROWS_AVX2(dot_rows_bf16, uint16_t, load_bf16, load_bf16_tail)

#define OPS_TABLE sv_ops_avx2
#define OPS_OWN_DOT_ROWS
#include "ops_impl.h"
#endif
