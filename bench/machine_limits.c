/* machine_limits.c - the machine's own ceilings, measured with the same
 * thread count the engines get: memory read bandwidth (streaming AVX-512 or
 * AVX2 loads over an array far larger than the caches), the FP32 FMA peak
 * (independent FMA chains, no memory traffic), where the CPU has
 * AVX512_BF16, the BF16 dot-product peak (vdpbf16ps), and where it has AMX
 * (and Linux grants the tile state), the AMX BF16 tile peak (tdpbf16ps) three
 * ways: operands held in the tiles (the instruction's own peak), and loaded
 * each round from L1 and from L2 with pseudo-random values, as a GEMM feeds
 * them (on Sapphire Rapids tiles loaded with varied data run ~15% below that
 * peak even from L1, and a GEMM's operands, tens of KB a block, come from L2);
 * a figure the CPU cannot measure is null, with the reason on stderr.
 *
 * bench/bench.py compiles this on the fly and reads one JSON line:
 *     cc -O2 -pthread machine_limits.c -o machine_limits
 *     ./machine_limits THREADS MEGABYTES [FMA_MILLIONS [FILE...]]
 * FILEs (the model's weight files): the same read, over the files mapped as
 * the engine maps them, where the page cache holds them.  Decode streams those
 * pages, and on a VM their bandwidth can differ from fresh memory's: the same
 * 2.2 GB file read at 23.5 GB/s from pages cached hours before and at 31 GB/s
 * from a fresh copy's (Sapphire Rapids VM, 2 threads, 2026-12-01).
 * Peaks are FLOP/s with a multiply-add counted as two FLOPs.  Each figure comes
 * twice: from wall time and from the slowest thread's CPU time ("_cpu"), which
 * on a shared machine still shows what the hardware can do. */
#define _GNU_SOURCE /* syscall() */
#include <cpuid.h>
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* FMA rounds per thread per run: 20 million (~0.1-0.2 s at 3-4 GHz) unless argv says otherwise. */
static long fma_iters = 20000000L;
#define RUNS 5              /* best of RUNS: the machine may be shared */

enum test { READ_AVX512, READ_AVX2, FMA_AVX512, FMA_AVX2, DPBF16, AMX_BF16, AMX_BF16_L1, AMX_BF16_L2 };

struct job {
    enum test test;
    const float *data; /* READ_*: this thread's slice */
    size_t n;          /* READ_*: floats in the slice */
    float sink;        /* keeps the result alive so nothing is optimised away */
    double cpu_seconds; /* CPU time this thread got */
};

static double seconds_of(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Sum of data[n] through four 512-bit accumulators (n a multiple of 64). */
__attribute__((target("avx512f"))) static float read_avx512(const float *data, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(data + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(data + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(data + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(data + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* Sum of data[n] through four 256-bit accumulators (n a multiple of 32). */
__attribute__((target("avx2"))) static float read_avx2(const float *data, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(data + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(data + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(data + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(data + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

/* The twelve accumulators of the FMA tests, spelled out so that they stay in
 * registers: twelve independent chains cover the FMA latency (4 cycles) times
 * two FMA pipes. */
#define TWELVE(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define DECLARE(k) acc##k = init + (float)k,
#define SUM(k) total += acc##k;

/* fma_iters rounds of 12 independent 16-wide FMA chains: 12 * 16 * 2 FLOPs a round. */
__attribute__((target("avx512f"))) static float fma_avx512(void) {
    __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(1e-7f), init = _mm512_setzero_ps(), total = init;
    __m512 TWELVE(DECLARE) unused = init;
    (void)unused;
#define STEP(k) acc##k = _mm512_fmadd_ps(acc##k, x, y);
    for (long i = 0; i < fma_iters; i++) { TWELVE(STEP) }
#undef STEP
    TWELVE(SUM)
    return _mm512_reduce_add_ps(total);
}

/* As fma_avx512 with 8-wide FMAs: 12 * 8 * 2 FLOPs a round. */
__attribute__((target("avx2,fma"))) static float fma_avx2(void) {
    __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-7f), init = _mm256_setzero_ps(), total = init;
    __m256 TWELVE(DECLARE) unused = init;
    (void)unused;
#define STEP(k) acc##k = _mm256_fmadd_ps(acc##k, x, y);
    for (long i = 0; i < fma_iters; i++) { TWELVE(STEP) }
#undef STEP
    TWELVE(SUM)
    float out[8];
    _mm256_storeu_ps(out, total);
    return out[0];
}

/* fma_iters rounds of 12 independent vdpbf16ps chains: each instruction is
 * 16 lanes x 2 BF16 products accumulated in FP32, so 12 * 64 FLOPs a round. */
__attribute__((target("avx512f,avx512bf16"))) static float dpbf16(void) {
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380); /* 1.0, ~6e-8 */
    __m512 init = _mm512_setzero_ps(), total = init;
    __m512 TWELVE(DECLARE) unused = init;
    (void)unused;
#define STEP(k) acc##k = _mm512_dpbf16_ps(acc##k, a, b);
    for (long i = 0; i < fma_iters; i++) { TWELVE(STEP) }
#undef STEP
    TWELVE(SUM)
    return _mm512_reduce_add_ps(total);
}

/* LDTILECFG's operand, palette 1: all eight tiles 16 rows of 64 bytes. */
static const unsigned char TILE_CONFIG[64] = {
    [0] = 1,
    [16] = 64, [18] = 64, [20] = 64, [22] = 64, [24] = 64, [26] = 64, [28] = 64, [30] = 64,
    [48] = 16, [49] = 16, [50] = 16, [51] = 16, [52] = 16, [53] = 16, [54] = 16, [55] = 16,
};
static const unsigned short TILE_ONES[16 * 32] = {[0 ... 16 * 32 - 1] = 0x3f80}; /* BF16 1.0 */

/* Both AMX tests' start: every tile 16 x 64 bytes, the four accumulator tiles (0-3) zero. */
__attribute__((target("amx-tile"))) static void start_accumulators(void) {
    _tile_loadconfig(TILE_CONFIG);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* AMX_ROUNDS(fma_iters) rounds of four tdpbf16ps into four independent accumulator tiles (two A tiles
 * times two B tiles, as a GEMM blocks them): each is a 16 x 32 by 32 x 16 BF16 product, 16 * 16 * 32 * 2
 * FLOPs.  Operands stay in the tiles: this is the instruction's own peak, no memory traffic. */
#define AMX_ROUNDS(iters) ((iters) / 4)
__attribute__((target("amx-tile,amx-bf16"))) static float amx_bf16(void) {
    float out[16 * 16];
    start_accumulators();
    _tile_loadd(4, TILE_ONES, 64);
    _tile_loadd(5, TILE_ONES, 64);
    _tile_loadd(6, TILE_ONES, 64);
    _tile_loadd(7, TILE_ONES, 64);
    for (long i = 0; i < AMX_ROUNDS(fma_iters); i++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}

/* Operand regions of the fed AMX tests (bytes, powers of two): from L1, 4 KB of A tiles and 4 KB of B; from
 * L2, a GEMM's block: 128 KB of A (32 rows of x over K = 2048) against 1 MB of B (the packed weights). */
enum { L1_A_BYTES = 4 << 10, L1_B_BYTES = 4 << 10, L2_A_BYTES = 128 << 10, L2_B_BYTES = 1 << 20 };

/* The fed tests' operands, A then B (L2_A_BYTES + L2_B_BYTES), made once before any timing and only read
 * after, by every thread: BF16 values in +-[0.5, 2) from a xorshift, so that the tiles multiply varied data
 * as a GEMM's do.  NULL until amx_operands_made. */
static unsigned short *amx_operands;

static int amx_operands_made(void) {
    const size_t count = (L2_A_BYTES + L2_B_BYTES) / 2;
    amx_operands = aligned_alloc(64, count * 2);
    if (!amx_operands) {
        fprintf(stderr, "machine_limits: cannot allocate the AMX operands: AMX figures skipped\n");
        return 0;
    }
    uint64_t state = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < count; i++) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        amx_operands[i] = (unsigned short)(0x3f00 | (state & 0x80ff)); /* +-[0.5, 2) */
    }
    return 1;
}

/* amx_bf16's rounds with the four operand tiles loaded before each: two A tiles from the first a_bytes of A,
 * two B tiles from the first b_bytes of B, each region read in order and over again. */
__attribute__((target("amx-tile,amx-bf16"))) static float amx_bf16_fed(size_t a_bytes, size_t b_bytes) {
    const char *a = (const char *)amx_operands, *b = a + L2_A_BYTES;
    float out[16 * 16];
    start_accumulators();
    size_t at = 0, bt = 0;
    for (long i = 0; i < AMX_ROUNDS(fma_iters); i++) {
        _tile_loadd(4, a + at, 64);
        _tile_loadd(6, b + bt, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b + bt + 1024, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a + at + 1024, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
        at = (at + 2048) & (a_bytes - 1);
        bt = (bt + 2048) & (b_bytes - 1);
    }
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}

/* AMX-TILE and AMX-BF16 (cpuid 7.0 edx bits 24, 22), the OS managing the tile state (XCR0 bits 17, 18),
 * and Linux granting it to this process; else 0 and why on stderr. */
static int amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 22) & 1)) {
        fprintf(stderr, "machine_limits: no AMX-BF16 on this CPU: AMX peak skipped\n");
        return 0;
    }
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x60000) != 0x60000) {
        fprintf(stderr, "machine_limits: the OS does not enable the AMX tile state: AMX peak skipped\n");
        return 0;
    }
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
        fprintf(stderr, "machine_limits: Linux refused the AMX tile state (%s): AMX peak skipped\n", strerror(errno));
        return 0;
    }
    return 1;
}

static void *run_job(void *arg) {
    struct job *job = arg;
    double start = seconds_of(CLOCK_THREAD_CPUTIME_ID);
    switch (job->test) {
    case READ_AVX512: job->sink = read_avx512(job->data, job->n); break;
    case READ_AVX2: job->sink = read_avx2(job->data, job->n); break;
    case FMA_AVX512: job->sink = fma_avx512(); break;
    case FMA_AVX2: job->sink = fma_avx2(); break;
    case DPBF16: job->sink = dpbf16(); break;
    case AMX_BF16: job->sink = amx_bf16(); break;
    case AMX_BF16_L1: job->sink = amx_bf16_fed(L1_A_BYTES, L1_B_BYTES); break;
    case AMX_BF16_L2: job->sink = amx_bf16_fed(L2_A_BYTES, L2_B_BYTES); break;
    }
    job->cpu_seconds = seconds_of(CLOCK_THREAD_CPUTIME_ID) - start;
    return NULL;
}

/* Best wall seconds of RUNS runs of `test` on `threads` threads; data[n] is
 * split into equal slices for the read tests.  *best_cpu receives the best
 * run's slowest thread CPU time: on a shared machine, what an idle one would
 * show.  -1 if a thread fails to start. */
static double best_seconds(enum test test, int threads, const float *data, size_t n, double *best_cpu) {
    pthread_t tid[64];
    struct job jobs[64];
    size_t slice = n / threads / 64 * 64;
    double best = -1;
    for (int run = 0; run < RUNS; run++) {
        double start = seconds_of(CLOCK_MONOTONIC), cpu = 0;
        for (int t = 0; t < threads; t++) {
            jobs[t] = (struct job){test, data + t * slice, slice, 0, 0};
            if (pthread_create(&tid[t], NULL, run_job, &jobs[t]) != 0) return -1;
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            if (jobs[t].cpu_seconds > cpu) cpu = jobs[t].cpu_seconds;
        }
        double seconds = seconds_of(CLOCK_MONOTONIC) - start;
        if (best < 0 || seconds < best) best = seconds;
        if (run == 0 || cpu < *best_cpu) *best_cpu = cpu;
    }
    return best;
}

/* kB after `key` in /proc/self/smaps_rollup (Linux), or -1. */
static long smaps_kb(const char *key) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kb = -1;
    size_t len = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, len) == 0) kb = atol(line + len);
    if (f) fclose(f);
    return kb;
}

/* The FILE read: the files mapped read-only and advised for huge pages (as csrc/safetensors.c maps weights),
 * every page faulted in, then each read as best_seconds reads memory; the GB/s over all of them (wall, CPU)
 * and how many MB are mapped in 2 MiB pages (-1: not known).  0 if a file cannot be mapped. */
static int file_read(char **files, int count, int threads, int has512, double *gb_s, double *gb_s_cpu,
                     double *pmd_mb) {
    void *maps[64];
    size_t sizes[64];
    int mapped = 0, ok = count <= 64;
    if (!ok) fprintf(stderr, "machine_limits: %d files, at most 64\n", count);
    for (; ok && mapped < count; mapped++) {
        int fd = open(files[mapped], O_RDONLY);
        struct stat st;
        ok = fd >= 0 && fstat(fd, &st) == 0 && st.st_size >= 4096;
        maps[mapped] = ok ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
        if (fd >= 0) close(fd);
        if (maps[mapped] == MAP_FAILED) {
            fprintf(stderr, "machine_limits: cannot map %s: %s\n", files[mapped], strerror(errno));
            ok = 0;
            break;
        }
        sizes[mapped] = (size_t)st.st_size;
        madvise(maps[mapped], sizes[mapped], MADV_HUGEPAGE);
        volatile const char *bytes = maps[mapped];
        for (size_t at = 0; at < sizes[mapped]; at += 4096) (void)bytes[at];
    }
    double bytes = 0, wall = 0, cpu = 0;
    if (ok) {
        long pmd_kb = smaps_kb("FilePmdMapped:");
        *pmd_mb = pmd_kb < 0 ? -1 : pmd_kb / 1024.0;
        for (int f = 0; f < count; f++) {
            size_t n = sizes[f] / sizeof(float) / (64 * (size_t)threads) * (64 * (size_t)threads);
            double file_cpu = 0;
            wall += best_seconds(has512 ? READ_AVX512 : READ_AVX2, threads, maps[f], n, &file_cpu);
            cpu += file_cpu;
            bytes += (double)n * sizeof(float);
        }
        *gb_s = bytes / 1e9 / wall;
        *gb_s_cpu = bytes / 1e9 / cpu;
    }
    for (int f = 0; f < mapped; f++) munmap(maps[f], sizes[f]);
    return ok;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    long megabytes = argc > 2 ? atol(argv[2]) : 1024;
    if (argc > 3) fma_iters = atol(argv[3]) * 1000000L;
    char **files = argv + 4;
    int file_count = argc > 4 ? argc - 4 : 0;
    if (threads < 1 || threads > 64 || megabytes < 1 || fma_iters < 1) {
        fprintf(stderr, "usage: %s THREADS(1-64) MEGABYTES [FMA_MILLIONS [FILE...]]\n", argv[0]);
        return 2;
    }
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f"), has2 = __builtin_cpu_supports("avx2") &&
                                                         __builtin_cpu_supports("fma");
    int hasbf16 = has512 && __builtin_cpu_supports("avx512bf16");
    int hasamx = amx_usable() && amx_operands_made();
    if (!has2) {
        fprintf(stderr, "machine_limits: this CPU has no AVX2/FMA\n");
        return 1;
    }
    size_t n = (size_t)megabytes * 1024 * 1024 / sizeof(float);
    float *data = aligned_alloc(64, n * sizeof(float));
    if (!data) {
        fprintf(stderr, "machine_limits: cannot allocate %ld MB\n", megabytes);
        return 1;
    }
    for (size_t i = 0; i < n; i++) data[i] = (float)(i & 7); /* touch every page before timing */
    size_t slice = n / threads / 64 * 64;
    double read_cpu = 0, fma_cpu = 0, bf16_cpu = 0, amx_cpu = 0, amx_l1_cpu = 0, amx_l2_cpu = 0;
    double read_s = best_seconds(has512 ? READ_AVX512 : READ_AVX2, threads, data, n, &read_cpu);
    double fma_s = best_seconds(has512 ? FMA_AVX512 : FMA_AVX2, threads, NULL, 0, &fma_cpu);
    double bf16_s = hasbf16 ? best_seconds(DPBF16, threads, NULL, 0, &bf16_cpu) : 0;
    double amx_s = hasamx ? best_seconds(AMX_BF16, threads, NULL, 0, &amx_cpu) : 0;
    double amx_l1_s = hasamx ? best_seconds(AMX_BF16_L1, threads, NULL, 0, &amx_l1_cpu) : 0;
    double amx_l2_s = hasamx ? best_seconds(AMX_BF16_L2, threads, NULL, 0, &amx_l2_cpu) : 0;
    free(data);
    free(amx_operands);
    double file_gb_s = 0, file_gb_s_cpu = 0, pmd_mb = -1;
    int files_read = file_count && file_read(files, file_count, threads, has512, &file_gb_s, &file_gb_s_cpu, &pmd_mb);
    if (read_s <= 0 || fma_s <= 0 || bf16_s < 0 || amx_s < 0 || amx_l1_s < 0 || amx_l2_s < 0) {
        fprintf(stderr, "machine_limits: could not start threads\n");
        return 1;
    }
    double read_gb = (double)slice * threads * sizeof(float) / 1e9;
    double fma_gflop = (double)threads * fma_iters * 12 * (has512 ? 16 : 8) * 2 / 1e9;
    double bf16_gflop = (double)threads * fma_iters * 12 * 64 / 1e9;
    double amx_gflop = (double)threads * AMX_ROUNDS(fma_iters) * 4 * (16 * 16 * 32 * 2) / 1e9;
    printf("{\"isa\": \"%s\", \"threads\": %d, \"read_gb_s\": %.2f, \"read_gb_s_cpu\": %.2f, "
           "\"fp32_gflop_s\": %.1f, \"fp32_gflop_s_cpu\": %.1f, ",
           has512 ? "avx512" : "avx2", threads, read_gb / read_s, read_gb / read_cpu, fma_gflop / fma_s,
           fma_gflop / fma_cpu);
    if (hasbf16)
        printf("\"bf16_gflop_s\": %.1f, \"bf16_gflop_s_cpu\": %.1f, ", bf16_gflop / bf16_s, bf16_gflop / bf16_cpu);
    else
        printf("\"bf16_gflop_s\": null, \"bf16_gflop_s_cpu\": null, ");
    if (files_read)
        printf("\"file_read_gb_s\": %.2f, \"file_read_gb_s_cpu\": %.2f, \"file_pmd_mapped_mb\": %.0f, ", file_gb_s,
               file_gb_s_cpu, pmd_mb);
    else
        printf("\"file_read_gb_s\": null, \"file_read_gb_s_cpu\": null, \"file_pmd_mapped_mb\": null, ");
    if (hasamx)
        printf("\"amx_bf16_gflop_s\": %.1f, \"amx_bf16_gflop_s_cpu\": %.1f, \"amx_bf16_l1_gflop_s\": %.1f, "
               "\"amx_bf16_l1_gflop_s_cpu\": %.1f, \"amx_bf16_l2_gflop_s\": %.1f, \"amx_bf16_l2_gflop_s_cpu\": %.1f}\n",
               amx_gflop / amx_s, amx_gflop / amx_cpu, amx_gflop / amx_l1_s, amx_gflop / amx_l1_cpu,
               amx_gflop / amx_l2_s, amx_gflop / amx_l2_cpu);
    else
        printf("\"amx_bf16_gflop_s\": null, \"amx_bf16_gflop_s_cpu\": null, \"amx_bf16_l1_gflop_s\": null, "
               "\"amx_bf16_l1_gflop_s_cpu\": null, \"amx_bf16_l2_gflop_s\": null, \"amx_bf16_l2_gflop_s_cpu\": null}\n");
    return 0;
}
