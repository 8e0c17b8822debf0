/* kernel_check.c - every named ISA's kernels against the portable ones and
 * float64, through the test hooks of smolvision.h (sv_debug_matmul,
 * sv_debug_op).  Written for tools/neon_check.sh, which runs it under
 * qemu-aarch64 for "neon"; natively it checks the x86 ISAs the same way.
 *
 *   kernel_check ISA...       exit status 0 if every ISA that runs here agrees
 *   kernel_check --selected   prints the ISA this process selects (SMOLVISION_ISA lowers it)
 *
 * Matmul shapes: every n = 1..40 (across the dot / packed-GEMM switch) on
 * small W (K below one vector, odd K, row counts that leave tails of every
 * row block and panel), a few n on a larger W; F32, F16 and BF16 weights,
 * with and without bias, 1 and 3 threads, weights at an odd address.  Each
 * result must be within 1e-5 of sum |x_k w_k| + |b| of the float64 product
 * and of the portable kernels' result, and widening of special values
 * (subnormals, extremes, inf, NaN) must be exact.  An ISA this CPU or build
 * cannot run is reported and skipped. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smolvision.h"

enum { F32 = 0, F16 = 1, BF16 = 2 };
static const char *const DTYPE_NAMES[] = {"f32", "f16", "bf16"};
static const double TOLERANCE = 1e-5; /* of sum |x_k w_k| + |b|: fp32 sums over these K stay far below */

static int failures;
static long long differing; /* results not bit-identical to the portable kernels' */

/* xorshift64*: reproducible inputs without libc's rand. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t next_u64(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Du;
}
/* Uniform in [-1, 1). */
static float uniform(void) { return (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The value of an F16 bit pattern, decoded from its fields (independent of the library's widening). */
static double f16_value(uint16_t h) {
    int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    double v = exp == 0 ? ldexp(mant, -24) : exp == 31 ? (mant ? NAN : INFINITY) : ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

static double bf16_value(uint16_t h) { return (double)bits_to_float((uint32_t)h << 16); }

/* Weights W[rows, cols] of a dtype, random with magnitudes around 1, written at raw (elements of
 * 4 or 2 bytes, possibly misaligned), and their exact values in w64. */
static void make_weights(unsigned char *raw, double *w64, int dtype, int64_t count) {
    for (int64_t i = 0; i < count; i++) {
        float f = uniform() * 2.0f;
        if (dtype == F32) {
            memcpy(raw + 4 * i, &f, 4);
            w64[i] = f;
            continue;
        }
        uint16_t h;
        if (dtype == BF16) {
            uint32_t u;
            memcpy(&u, &f, 4);
            h = (uint16_t)(u >> 16);
            w64[i] = bf16_value(h);
        } else { /* a normal F16 between 2^-6 and 2^2, random sign and mantissa */
            uint64_t r = next_u64();
            h = (uint16_t)(((r & 1) << 15) | ((9 + (r >> 1) % 8) << 10) | ((r >> 8) & 0x3FF));
            w64[i] = f16_value(h);
        }
        memcpy(raw + 2 * i, &h, 2);
    }
}

/* One matmul problem against float64 and the portable kernels; returns 0 if the ISA cannot run here. */
static int check_matmul(const char *isa, int64_t n, int64_t rows, int64_t cols, int dtype, int bias, int threads,
                        int misaligned, double *worst) {
    size_t elem = dtype == F32 ? 4 : 2;
    float *x = malloc((size_t)(n * cols) * sizeof *x), *b = malloc((size_t)rows * sizeof *b);
    float *y = malloc((size_t)(n * rows) * sizeof *y), *ref = malloc((size_t)(n * rows) * sizeof *ref);
    double *w64 = malloc((size_t)(rows * cols) * sizeof *w64);
    unsigned char *raw = malloc((size_t)(rows * cols) * elem + 1);
    int ran = 1;
    if (!x || !b || !y || !ref || !w64 || !raw) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (int64_t i = 0; i < n * cols; i++) x[i] = uniform();
    for (int64_t r = 0; r < rows; r++) b[r] = uniform();
    unsigned char *w = raw + (misaligned ? 1 : 0);
    make_weights(w, w64, dtype, rows * cols);
    const float *bp = bias ? b : NULL;
    for (int64_t i = 0; i < n * rows; i++) y[i] = ref[i] = NAN;
    sv_status s = sv_debug_matmul("portable", 2, x, n, w, dtype, rows, cols, bp, ref, 1, 1, NULL);
    if (s != SV_OK) {
        fprintf(stderr, "portable: %s\n", sv_last_error());
        exit(2);
    }
    s = sv_debug_matmul(isa, 2, x, n, w, dtype, rows, cols, bp, y, threads, 1, NULL);
    if (s == SV_ERR_UNSUPPORTED) {
        ran = 0;
    } else if (s != SV_OK) {
        fprintf(stderr, "%s: %s\n", isa, sv_last_error());
        failures++;
    } else {
        for (int64_t i = 0; i < n; i++)
            for (int64_t r = 0; r < rows; r++) {
                double exact = bias ? b[r] : 0.0, scale = bias ? fabs(b[r]) : 0.0;
                for (int64_t k = 0; k < cols; k++) {
                    exact += (double)x[i * cols + k] * w64[r * cols + k];
                    scale += fabs((double)x[i * cols + k] * w64[r * cols + k]);
                }
                double got = y[i * rows + r], err = fabs(got - exact) / scale;
                double diff = fabs(got - ref[i * rows + r]) / scale;
                if (!(err < TOLERANCE) || !(diff < TOLERANCE)) {
                    if (failures++ < 20)
                        fprintf(stderr,
                                "MISMATCH %s n=%lld W[%lldx%lld] %s bias=%d threads=%d%s y[%lld,%lld]=%.9g: float64 "
                                "%.9g, portable %.9g (errors %.2e, %.2e of sum|x w|)\n",
                                isa, (long long)n, (long long)rows, (long long)cols, DTYPE_NAMES[dtype], bias, threads,
                                misaligned ? " misaligned" : "", (long long)i, (long long)r, got, exact,
                                ref[i * rows + r], err, diff);
                } else if (err > *worst) {
                    *worst = err;
                }
                differing += got != ref[i * rows + r];
            }
    }
    free(x);
    free(b);
    free(y);
    free(ref);
    free(w64);
    free(raw);
    return ran;
}

/* y = 1 * w for K = 1: subnormals, extremes, inf and NaN must widen exactly, in the dot kernel (n = 1)
 * and the GEMM path (n = 40). */
static void check_special_values(const char *isa) {
    static const uint16_t f16[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF,
                                   0x7C00, 0xFC00, 0x7E00, 0x3E00, 0xC180};
    static const uint16_t bf16[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F,
                                    0x7F80, 0xFF80, 0x7FC0, 0x3FC0, 0xC030};
    enum { N = 40, ROWS = (int)(sizeof f16 / sizeof f16[0]) };
    float x[N], y[N * ROWS];
    for (int i = 0; i < N; i++) x[i] = 1.0f;
    for (int dtype = F16; dtype <= BF16; dtype++) {
        const uint16_t *w = dtype == F16 ? f16 : bf16;
        for (int n = 1; n <= N; n += N - 1) {
            if (sv_debug_matmul(isa, 2, x, n, w, dtype, ROWS, 1, NULL, y, 1, 1, NULL) != SV_OK) return;
            for (int i = 0; i < n; i++)
                for (int r = 0; r < ROWS; r++) {
                    double want = dtype == F16 ? f16_value(w[r]) : bf16_value(w[r]), got = y[i * ROWS + r];
                    if (isnan(want) ? !isnan(got) : got != want) {
                        failures++;
                        fprintf(stderr, "MISMATCH %s %s special value 0x%04x at n=%d: %.9g, not %.9g\n", isa,
                                DTYPE_NAMES[dtype], w[r], n, got, want);
                    }
                }
        }
    }
}

/* The small kernels against the portable ones: relative 1e-5 (the portable ones are tested against float64
 * in tests/test_kernels.py). */
static void check_ops(const char *isa) {
    static const char *const ops[] = {"layernorm", "rmsnorm", "gelu_tanh", "silu_mul", "add",
                                      "softmax",   "dot_rows", "dot_rows_bf16"};
    static const int64_t dims[] = {1, 3, 7, 16, 33, 1152};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        int64_t n = 5, dim = dims[d], count = n * dim;
        float *x = malloc((size_t)count * sizeof *x), *mine = malloc((size_t)count * sizeof *mine);
        float *ref = malloc((size_t)count * sizeof *ref), *other = malloc((size_t)count * sizeof *other);
        float *w = malloc((size_t)dim * sizeof *w), *b = malloc((size_t)dim * sizeof *b);
        if (!x || !mine || !ref || !other || !w || !b) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        for (int64_t i = 0; i < count; i++) x[i] = uniform() * 8.0f, other[i] = uniform();
        for (int64_t k = 0; k < dim; k++) w[k] = uniform(), b[k] = uniform();
        for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++) {
            /* dot_rows: rows are x, the vector is other[0:dim], results land in x[0:n] */
            float eps = strncmp(ops[o], "dot_rows", 8) == 0 ? 0.125f : 1e-5f;
            memcpy(ref, x, (size_t)count * sizeof *x);
            memcpy(mine, x, (size_t)count * sizeof *x);
            if (sv_debug_op("portable", ops[o], ref, n, dim, w, b, other, eps) != SV_OK) {
                fprintf(stderr, "portable %s: %s\n", ops[o], sv_last_error());
                exit(2);
            }
            sv_status s = sv_debug_op(isa, ops[o], mine, n, dim, w, b, other, eps);
            if (s == SV_ERR_UNSUPPORTED) break;
            if (s != SV_OK) {
                failures++;
                fprintf(stderr, "%s %s: %s\n", isa, ops[o], sv_last_error());
                continue;
            }
            int64_t m = strncmp(ops[o], "dot_rows", 8) == 0 ? n : count;
            for (int64_t i = 0; i < m; i++) {
                double scale = fabs(ref[i]) > 1e-3 ? fabs(ref[i]) : 1e-3;
                if (!(fabs((double)mine[i] - ref[i]) <= 1e-5 * scale)) {
                    if (failures++ < 40)
                        fprintf(stderr, "MISMATCH %s %s dim=%lld [%lld]: %.9g, portable %.9g\n", isa, ops[o],
                                (long long)dim, (long long)i, mine[i], ref[i]);
                }
            }
        }
        free(x);
        free(mine);
        free(ref);
        free(other);
        free(w);
        free(b);
    }
}

static int check_isa(const char *isa) {
    static const int64_t small[][2] = {{1, 1}, {3, 3}, {5, 7}, {17, 9}, {19, 33}, {33, 67}}; /* (rows, cols) */
    static const int64_t large_n[] = {1, 2, 3, 7, 8, 9, 16, 17, 40};
    int before = failures;
    long long cases = 0;
    differing = 0;
    double worst = 0.0;
    for (int dtype = F32; dtype <= BF16; dtype++)
        for (int threads = 1; threads <= 3; threads += 2)
            for (int bias = 0; bias <= 1; bias++) {
                for (int64_t n = 1; n <= 40; n++)
                    for (size_t s = 0; s < sizeof small / sizeof small[0]; s++, cases++)
                        if (!check_matmul(isa, n, small[s][0], small[s][1], dtype, bias, threads, (int)(n % 3 == 0),
                                          &worst)) {
                            printf("%-10s skipped: %s\n", isa, sv_last_error());
                            return 1;
                        }
                for (size_t i = 0; i < sizeof large_n / sizeof large_n[0]; i++, cases++)
                    check_matmul(isa, large_n[i], 100, 1000, dtype, bias, threads, i % 2, &worst);
            }
    /* Other kernels sum in another order: identical results everywhere would mean the portable ones ran. */
    if (strcmp(isa, "portable") != 0 && differing == 0) {
        failures++;
        fprintf(stderr, "%s: every result is bit-identical to the portable kernels': are its kernels dispatched?\n",
                isa);
    }
    check_special_values(isa);
    check_ops(isa);
    printf("%-10s %s: %lld matmul cases (%lld results not bit-identical to portable), worst error %.2e of "
           "sum|x w| (tolerance %.0e); special values; ops\n",
           isa, failures == before ? "ok" : "FAILED", cases, differing, worst, TOLERANCE);
    return failures == before;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s ISA...  (portable, avx2, avx512, avx512bf16, neon)\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* lines in order with stderr when piped */
    if (strcmp(argv[1], "--selected") == 0) {
        printf("%s\n", sv_kernels_isa());
        return 0;
    }
    printf("kernels selected here: %s\n", sv_kernels_isa());
    for (int i = 1; i < argc; i++) check_isa(argv[i]);
    if (failures) fprintf(stderr, "%d mismatches\n", failures);
    return failures ? 1 : 0;
}
