/* lanes_avx2.h - the lane-crossing helpers the AVX2 kernels share: the 8 x 8
 * in-register transpose of 32-bit elements (matmul_avx2.c packs weight panels
 * with it, ops_avx2.c sums eight dot products across lanes at once) and the
 * horizontal sum of one vector.  Include only from files compiled with AVX2
 * target flags. */
#ifndef SV_KERNELS_LANES_AVX2_H
#define SV_KERNELS_LANES_AVX2_H

#include <immintrin.h>

/* In-register transpose: v[i] element j becomes v[j] element i (8 x 8). */
static inline __attribute__((always_inline)) void transpose8(__m256 v[8]) {
    __m256 t[8], u[8];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 8; i += 2) { /* lane-wise [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    _Pragma("GCC unroll 16")
    for (int g = 0; g < 8; g += 4) { /* lane-wise element j of rows g..g+3 */
        u[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    _Pragma("GCC unroll 16")
    for (int j = 0; j < 4; j++) { /* low lanes hold elements 0..3, high lanes 4..7 */
        v[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        v[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

/* The sum of v's 8 lanes. */
static inline __attribute__((always_inline)) float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#endif
