/* matmul_avx512bf16.c - the BF16 x BF16 matmul kernels of precision "bf16"
 * for x86-64 CPUs with AVX512_BF16.  CMake compiles this one file with those
 * target flags (SV_BF16_KERNELS: when the compiler has them); dispatch.c hands
 * its table out only after checking the CPU.
 *
 * vdpbf16ps multiplies 32 BF16 pairs and adds each pair's two products into
 * one of 16 fp32 lanes: a BF16 product is exact in fp32, so the only errors
 * are rounding the activations to BF16 (round_rows, once per matmul) and the
 * fp32 accumulation.  The weights are BF16 already and are read straight from
 * the mapping (dot) or from a packed panel (gemm).  The instruction treats
 * denormal inputs and results as zero (magnitudes below about 1e-38, which
 * activations and weights do not reach). */
#ifdef SV_BF16_KERNELS
#include <immintrin.h>
#include <string.h>

#include "isa.h"
#include "transpose_avx512.h"

#define INLINE static inline __attribute__((always_inline))
/* Tiles keep their accumulators in registers only if their small loops are fully unrolled. */
#define UNROLL _Pragma("GCC unroll 16")

enum {
    ROWS = 4,       /* weight rows per dot tile (n >= 2) */
    XROWS = 4,      /* input rows per dot tile */
    PANEL = 32,     /* packed panel width for gemm: two zmm of BF16 pairs per panel row */
    GEMM_XROWS = 8  /* input rows per gemm tile: 16 accumulators (GCC 12 spilled the weights at 12) */
};

#define BH(v) ((__m512bh)(v))

/* xb[i, :] = x[i, :k] rounded to BF16 (nearest even), zero-padded to ldx: x's rows ldsrc apart, xb[n, ldx]. */
static void round_rows(uint16_t *xb, int64_t ldx, const float *x, int64_t ldsrc, int64_t n, int64_t k) {
    for (int64_t i = 0; i < n; i++) {
        const float *src = x + i * ldsrc;
        uint16_t *dst = xb + i * ldx;
        int64_t c = 0;
        for (; c + 16 <= k; c += 16)
            _mm256_storeu_si256((__m256i *)(dst + c), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + c)));
        if (c < k) {
            __mmask16 m = (__mmask16)((1u << (k - c)) - 1);
            __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + c));
            _mm256_mask_storeu_epi16(dst + c, m, h);
        }
        for (c = k; c < ldx; c++) dst[c] = 0;
    }
}

/* y[i, r] = xb[i, :] . W[r, :] + b[r] for i < NI, r < NR: w points at weight row 0 of the tile, stride bytes apart. */
INLINE void dot_tile(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t K, const char *w, size_t stride,
                     const float *b, const int NI, const int NR) {
    __m512 acc[XROWS][ROWS];
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) acc[i][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512i wv[ROWS];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = _mm512_loadu_si512(w + r * stride + k * 2);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m512i xv = _mm512_loadu_si512(xb + i * ldx + k);
            UNROLL
            for (int r = 0; r < NR; r++) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], BH(xv), BH(wv[r]));
        }
    }
    if (k < K) {
        __mmask32 m = (__mmask32)((1u << (K - k)) - 1);
        __m512i wv[ROWS];
        UNROLL
        for (int r = 0; r < NR; r++) wv[r] = _mm512_maskz_loadu_epi16(m, w + r * stride + k * 2);
        UNROLL
        for (int i = 0; i < NI; i++) {
            __m512i xv = _mm512_maskz_loadu_epi16(m, xb + i * ldx + k);
            UNROLL
            for (int r = 0; r < NR; r++) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], BH(xv), BH(wv[r]));
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++)
        UNROLL
        for (int r = 0; r < NR; r++) y[i * ldy + r] = _mm512_reduce_add_ps(acc[i][r]) + (b ? b[r] : 0.0f);
}

/* y[r] = xb . W[r, :] + b[r] for one input row, r0 <= r < r1: each weight row read start to end, so
 * the whole range is one sequential stream (what the hardware prefetchers follow best; n = 1 is memory
 * bound), with four accumulators to hide the vdpbf16ps latency, and the stream prefetched `ahead` bytes
 * in front of the loads (sv_stream_prefetch: 0 on Zen 4, where software prefetching only lowered the
 * 27 GB/s one thread reads; 1.5 KB on Sapphire Rapids, where it raised decode from 73% to 88% of the
 * read bandwidth; 2.2B decode there, 2 threads, one process per distance, twice: none 7.7-7.8 tok/s,
 * 1 KB 8.1-8.2, 1.5-1.9 KB 8.3-8.4, exactly 2 KB 7.7-7.8, 4 KB 7.0-7.2). */
static void gemv_rows(float *y, const uint16_t *xb, int64_t K, const char *w, size_t stride, const float *b,
                      int64_t r0, int64_t r1, int64_t ahead) {
    for (int64_t r = r0; r < r1; r++) {
        const char *row = w + r * stride;
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int64_t k = 0;
        for (; k + 128 <= K; k += 128)
            UNROLL
            for (int u = 0; u < 4; u++) {
                __builtin_prefetch(row + (k + 32 * u) * 2 + ahead, 0, 3);
                acc[u] = _mm512_dpbf16_ps(acc[u], BH(_mm512_loadu_si512(xb + k + 32 * u)),
                                          BH(_mm512_loadu_si512(row + (k + 32 * u) * 2)));
            }
        for (; k < K; k += 32) {
            __mmask32 m = K - k >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (K - k)) - 1);
            acc[0] = _mm512_dpbf16_ps(acc[0], BH(_mm512_maskz_loadu_epi16(m, xb + k)),
                                      BH(_mm512_maskz_loadu_epi16(m, row + k * 2)));
        }
        __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        y[r] = _mm512_reduce_add_ps(sum) + (b ? b[r] : 0.0f);
    }
}

/* All n input rows against the NR weight rows at w: blocks of XROWS input rows, then the rest. */
INLINE void dot_inputs(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n, int64_t K, const char *w,
                       size_t stride, const float *b, const int NR) {
    int64_t i = 0;
    for (; i + XROWS <= n; i += XROWS) dot_tile(y + i * ldy, ldy, xb + i * ldx, ldx, K, w, stride, b, XROWS, NR);
    switch (n - i) {
    case 1: dot_tile(y + i * ldy, ldy, xb + i * ldx, ldx, K, w, stride, b, 1, NR); break;
    case 2: dot_tile(y + i * ldy, ldy, xb + i * ldx, ldx, K, w, stride, b, 2, NR); break;
    case 3: dot_tile(y + i * ldy, ldy, xb + i * ldx, ldx, K, w, stride, b, 3, NR); break;
    default: break;
    }
}

/* y[i, r] = xb[i, :] . W[r, :] + b[r] for i < n, r0 <= r < r1: W BF16 [rows, K], xb[n, ldx], y[n, ldy].
 * n = 1: one stream over the rows (gemv_rows).  n > 1: a tile of ROWS weight rows at a time against every
 * input row, so the weights are read from memory once however many input rows there are. */
static void dot(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n, const sv_matrix *W,
                const float *b, int64_t r0, int64_t r1) {
    const int64_t K = W->cols;
    const size_t stride = (size_t)K * 2;
    const char *w = W->data;
    if (n == 1) {
        gemv_rows(y, xb, K, w, stride, b, r0, r1, sv_stream_prefetch());
        return;
    }
    int64_t r = r0;
    for (; r + ROWS <= r1; r += ROWS) dot_inputs(y + r, ldy, xb, ldx, n, K, w + r * stride, stride, b ? b + r : NULL, ROWS);
    for (; r < r1; r++) dot_inputs(y + r, ldy, xb, ldx, n, K, w + r * stride, stride, b ? b + r : NULL, 1);
}

/* panel[p, c] = the BF16 pair W[r0 + c, 2p : 2p + 2] as one 32-bit word (low half first, as vdpbf16ps reads
 * it), for W = w[., K] with rows ldw apart, p < ceil(K / 2), c < PANEL; a missing second element (odd K) and
 * columns past r1 - r0 are zero.  Each step
 * loads 16 pairs of 16 rows (masked at the tail, so odd K reads nothing past its row) and transposes them.
 * One group of 16 rows is read start to end before the next: 16 streams from memory rather than 32 (the
 * pack waits on its loads; this order cut its share of a 512-token prefill from 8% to 5.7%, perf). */
static void pack(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t K, int64_t r0, int64_t r1) {
    for (int h = 0; h < PANEL; h += 16)
        for (int64_t k = 0; k < K; k += 32) {
            int64_t len = K - k < 32 ? K - k : 32, pairs = (len + 1) / 2;
            __mmask32 m = len == 32 ? 0xFFFFFFFFu : (__mmask32)((1u << len) - 1);
            __m512 v[16];
            UNROLL
            for (int c = 0; c < 16; c++)
                v[c] = r0 + h + c < r1 ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, w + (r0 + h + c) * ldw + k))
                                       : _mm512_setzero_ps();
            transpose16(v);
            for (int64_t p = 0; p < pairs; p++) _mm512_store_ps((float *)panel + (k / 2 + p) * PANEL + h, v[p]);
        }
}

/* y[i, c] = xb[i, :] . W[r0 + c, :] + b[c] for i < NI, c < width (masks m0, m1 select c); NV = 1 when
 * width <= 16 computes only the panel's first half. */
INLINE void gemm_tile(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t pairs, const uint32_t *panel,
                      __mmask16 m0, __mmask16 m1, __m512 b0, __m512 b1, const int NI, const int NV) {
    __m512 acc[GEMM_XROWS][2];
    UNROLL
    for (int i = 0; i < NI; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++) {
        const __m512bh w0 = BH(_mm512_load_si512(panel + p * PANEL));
        const __m512bh w1 = NV == 2 ? BH(_mm512_load_si512(panel + p * PANEL + 16)) : w0;
        UNROLL
        for (int i = 0; i < NI; i++) {
            uint32_t pair;
            memcpy(&pair, xb + i * ldx + 2 * p, sizeof pair);
            const __m512bh xv = BH(_mm512_set1_epi32((int)pair));
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], xv, w0);
            if (NV == 2) acc[i][1] = _mm512_dpbf16_ps(acc[i][1], xv, w1);
        }
    }
    UNROLL
    for (int i = 0; i < NI; i++) {
        _mm512_mask_storeu_ps(y + i * ldy, m0, _mm512_add_ps(acc[i][0], b0));
        if (NV == 2) _mm512_mask_storeu_ps(y + i * ldy + 16, m1, _mm512_add_ps(acc[i][1], b1));
    }
}

/* Row blocks of GEMM_XROWS, 4 and 1 input rows through gemm_tile. */
INLINE void gemm_rows(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n, int64_t pairs,
                      const uint32_t *panel, __mmask16 m0, __mmask16 m1, __m512 b0, __m512 b1, const int NV) {
    int64_t i = 0;
    for (; i + GEMM_XROWS <= n; i += GEMM_XROWS)
        gemm_tile(y + i * ldy, ldy, xb + i * ldx, ldx, pairs, panel, m0, m1, b0, b1, GEMM_XROWS, NV);
    for (; i + 4 <= n; i += 4) gemm_tile(y + i * ldy, ldy, xb + i * ldx, ldx, pairs, panel, m0, m1, b0, b1, 4, NV);
    for (; i < n; i++) gemm_tile(y + i * ldy, ldy, xb + i * ldx, ldx, pairs, panel, m0, m1, b0, b1, 1, NV);
}

/* y[i, c] = xb[i, :] . panel[:, c] + b[c] for i < n, c < width: xb[n, ldx], panel[ldx / 2, PANEL], y[n, ldy].
 * A panel of at most 16 columns (a matrix's last, or the attention's value panels for a head_dim of 72)
 * runs half the multiplies. */
static void gemm(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n, const uint32_t *panel,
                 int64_t width, const float *b) {
    const int64_t pairs = ldx / 2;
    __mmask16 m0 = width >= 16 ? 0xFFFF : (__mmask16)((1u << width) - 1);
    __mmask16 m1 = width >= 32 ? 0xFFFF : width > 16 ? (__mmask16)((1u << (width - 16)) - 1) : 0;
    __m512 b0 = b ? _mm512_maskz_loadu_ps(m0, b) : _mm512_setzero_ps();
    __m512 b1 = b ? _mm512_maskz_loadu_ps(m1, b + 16) : _mm512_setzero_ps();
    if (width > 16) gemm_rows(y, ldy, xb, ldx, n, pairs, panel, m0, m1, b0, b1, 2);
    else gemm_rows(y, ldy, xb, ldx, n, pairs, panel, m0, m1, b0, b1, 1);
}

/* out[r] = scale * (xb . rows[r * stride : r * stride + len]) for r < n_rows, all BF16: decode attention's
 * two products against a BF16 KV cache (attention.c), q . each key row and the probabilities . each row of
 * V^T.  16 rows side by side share each load of xb and one transpose sums all 16 (rows of 64 elements, the
 * keys, would otherwise spend more on the sums across lanes than on the products); leftover rows one at a
 * time.  On Intel the rows ahead are prefetched (where they follow one another, the keys, the block two
 * ahead; else the next block's, a line per row as this block reads its own): decode attention reads the
 * whole cache once per step and waited on it.  Decode of 8 q8 sequences after 256 tokens, Sapphire
 * Rapids: attention 29 -> 25 ms a step (fp32 products over widened BF16 before); q8 decode at 1.5k
 * context 14.1 -> 14.4 tok/s. */
static void dot_rows(float *out, const uint16_t *xb, const uint16_t *rows, int64_t n_rows, int64_t len,
                     int64_t stride, float scale) {
    const int prefetch = sv_stream_prefetch() > 0; /* Intel only, as the GEMV's (gemv_rows) */
    const int64_t full = len / 32 * 32;
    const __mmask32 tail = (__mmask32)((1ull << (len - full)) - 1);
    const __m512 scaled = _mm512_set1_ps(scale);
    int64_t r = 0;
    for (; r + 16 <= n_rows; r += 16) {
        const uint16_t *block = rows + r * stride;
        if (prefetch && stride == len)
            for (int64_t line = 0; line < 16 * len * 2; line += 64)
                __builtin_prefetch((const char *)(block + 32 * stride) + line, 0, 3);
        __m512 acc[16];
        UNROLL
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        const int ahead = prefetch && stride != len && r + 32 <= n_rows;
        for (int64_t k = 0; k < full; k += 32) {
            const __m512bh xv = BH(_mm512_loadu_si512(xb + k));
            if (ahead)
                UNROLL
                for (int i = 0; i < 16; i++) __builtin_prefetch(block + (i + 16) * stride + k, 0, 3);
            UNROLL
            for (int i = 0; i < 16; i++)
                acc[i] = _mm512_dpbf16_ps(acc[i], xv, BH(_mm512_loadu_si512(block + i * stride + k)));
        }
        if (tail) {
            const __m512bh xv = BH(_mm512_maskz_loadu_epi16(tail, xb + full));
            UNROLL
            for (int i = 0; i < 16; i++)
                acc[i] = _mm512_dpbf16_ps(acc[i], xv, BH(_mm512_maskz_loadu_epi16(tail, block + i * stride + full)));
        }
        transpose16(acc); /* acc[j] lane i: lane j of row i's sums */
        UNROLL
        for (int half = 8; half > 0; half /= 2)
            UNROLL
            for (int i = 0; i < half; i++) acc[i] = _mm512_add_ps(acc[i], acc[i + half]);
        _mm512_storeu_ps(out + r, _mm512_mul_ps(acc[0], scaled));
    }
    for (; r < n_rows; r++) {
        const uint16_t *row = rows + r * stride;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t k = 0; k < full; k += 32)
            acc = _mm512_dpbf16_ps(acc, BH(_mm512_loadu_si512(xb + k)), BH(_mm512_loadu_si512(row + k)));
        if (tail)
            acc = _mm512_dpbf16_ps(acc, BH(_mm512_maskz_loadu_epi16(tail, xb + full)),
                                   BH(_mm512_maskz_loadu_epi16(tail, row + full)));
        out[r] = _mm512_reduce_add_ps(acc) * scale;
    }
}

const sv_bf16_isa sv_bf16_isa_avx512bf16 = {
    .name = "avx512bf16",
    .round_rows = round_rows,
    .dot = dot,
    .dot_max_n = 16,
    .panel_width = PANEL,
    .pack = pack,
    .gemm = gemm,
    .dot_rows = dot_rows,
};

#endif
