/* transpose_avx512.h - the 16 x 16 in-register transpose of 32-bit elements
 * that the AVX-512 GEMM kernels pack weight panels with (fp32 values in
 * matmul_avx512.c, BF16 pairs in matmul_avx512bf16.c).  Include only from
 * files compiled with AVX-512 target flags. */
#ifndef SV_KERNELS_TRANSPOSE_AVX512_H
#define SV_KERNELS_TRANSPOSE_AVX512_H

#include <immintrin.h>

/* In-register transpose: v[i] element j becomes v[j] element i (16 x 16). */
static inline __attribute__((always_inline)) void transpose16(__m512 v[16]) {
    __m512 t[16];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 16; i += 2) { /* lane-wise [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
    }
    __m512 u[4][4]; /* u[g][j], lane L: element 4L + j of rows 4g..4g+3 */
    _Pragma("GCC unroll 16")
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[g][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[g][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[g][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[g][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    _Pragma("GCC unroll 16")
    for (int j = 0; j < 4; j++) { /* gather lane L of u[0..3][j] into element 4L + j */
        __m512 lo01 = _mm512_shuffle_f32x4(u[0][j], u[1][j], 0x44), hi01 = _mm512_shuffle_f32x4(u[0][j], u[1][j], 0xEE);
        __m512 lo23 = _mm512_shuffle_f32x4(u[2][j], u[3][j], 0x44), hi23 = _mm512_shuffle_f32x4(u[2][j], u[3][j], 0xEE);
        v[j] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
        v[4 + j] = _mm512_shuffle_f32x4(lo01, lo23, 0xDD);
        v[8 + j] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
        v[12 + j] = _mm512_shuffle_f32x4(hi01, hi23, 0xDD);
    }
}

#endif
