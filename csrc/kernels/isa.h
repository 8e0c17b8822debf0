/* isa.h - the contract between the matmul driver (matmul.c) and the per-ISA
 * kernel files (matmul_generic.c, matmul_avx2.c, matmul_avx512.c, matmul_neon.c).
 *
 * Each ISA file fills one sv_isa table with the same matmul kernels, and
 * ops_*.c one sv_ops table with the small kernels; callers go through the
 * tables dispatch.c hands out, so AVX code runs only on CPUs that have been
 * checked for it.  Internal to the library: nothing here is public API. */
#ifndef SV_KERNELS_ISA_H
#define SV_KERNELS_ISA_H

#include <stddef.h>
#include <stdint.h>

#include "../threadpool.h"
#include "matrix.h"

/* x86-64 climbs portable < avx2 < avx512 < avx512bf16 < amx; aarch64 has portable < neon.  Level amx is
 * avx512bf16's kernels plus the AMX GEMM for BF16 products with enough rows (sv_amx_isa). */
typedef enum {
    SV_ISA_PORTABLE, SV_ISA_AVX2, SV_ISA_AVX512, SV_ISA_AVX512BF16, SV_ISA_AMX, SV_ISA_NEON, SV_ISA_COUNT
} sv_isa_level;

/* AArch64 (little-endian: Linux, macOS): Advanced SIMD is baseline, matmul_neon.c needs no CPU check. */
#if defined(__aarch64__) && !defined(__AARCH64EB__)
#define SV_NEON_KERNELS
#endif

typedef struct {
    const char *name;
    /* Direct product for small n (decode): streams each weight row once, widening in registers.
     * y[i, r] = x[i, :] . W[r, :] + b[r] for i < n, r0 <= r < r1: x[n, W.cols], y[n, ldy], b NULL or [W.rows]. */
    void (*dot)(float *y, int64_t ldy, const float *x, int64_t n, const sv_matrix *W, const float *b, int64_t r0,
                int64_t r1);
    int dot_max_n; /* the driver uses dot up to this n: above it packing (or BLAS) measured faster */
    /* dst = W[r0:r1, :] widened to fp32, row-major: dst[r1 - r0, W.cols] (the B operand for BLAS). */
    void (*widen)(float *dst, const sv_matrix *W, int64_t r0, int64_t r1);
    /* Blocked fp32 GEMM without BLAS; NULL where the ISA has none (dot is used instead).
     * panel_width: rows of W per packed panel; pack writes panel[W.cols, panel_width] = W[r0:r1, :]^T,
     * zero-padded when r1 - r0 < panel_width; gemm adds y[i, c] = x[i, :] . panel[:, c] + b[c] for c < width. */
    int panel_width;
    void (*pack)(float *panel, const sv_matrix *W, int64_t r0, int64_t r1);
    void (*gemm)(float *y, int64_t ldy, const float *x, int64_t n, int64_t k, const float *panel, int64_t width,
                 const float *b);
} sv_isa;

/* The BF16 x BF16 kernels of precision "bf16" (matmul_avx512bf16.c): products of BF16 pairs summed in
 * fp32.  Only BF16 weights take them.  The driver rounds the activations once per matmul into
 * xb[n, ldx], ldx = W.cols rounded up to even (zero-padded), which every thread then reads. */
/* xb[i, :] = x[i, :k] rounded to BF16 (nearest even), zero-padded: x's rows ldsrc apart, xb[n, ldx]. */
typedef void sv_round_rows_fn(uint16_t *xb, int64_t ldx, const float *x, int64_t ldsrc, int64_t n, int64_t k);

typedef struct {
    const char *name;
    sv_round_rows_fn *round_rows;
    /* y[i, r] = xb[i, :] . W[r, :] + b[r] for i < n, r0 <= r < r1, weights read from the mapping:
     * xb[n, ldx], W BF16, y[n, ldy], b NULL or [W.rows]. */
    void (*dot)(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n, const sv_matrix *W,
                const float *b, int64_t r0, int64_t r1);
    int dot_max_n; /* the driver uses dot up to this n, pack + gemm above */
    /* panel[ceil(cols / 2), panel_width]: BF16 pairs of W[r0:r1, :]^T as 32-bit words, zero-padded, for
     * W = w[rows, cols] BF16 with rows ldw elements apart; gemm: y[i, c] = xb[i, :] . W[r0 + c, :] + b[c]
     * for c < width (xb[n, ldx], y[n, ldy]). */
    int panel_width;
    void (*pack)(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1);
    void (*gemm)(float *y, int64_t ldy, const uint16_t *xb, int64_t ldx, int64_t n, const uint32_t *panel,
                 int64_t width, const float *b);
    /* out[r] = scale * (xb[0:len] . rows[r * stride : r * stride + len]) for r < n_rows, both BF16 (decode
     * attention against a BF16 cache; sv_ops' dot_rows_bf16 takes fp32 x instead). */
    void (*dot_rows)(float *out, const uint16_t *xb, const uint16_t *rows, int64_t n_rows, int64_t len,
                     int64_t stride, float scale);
} sv_bf16_isa;

/* The A operand of the AMX GEMM: BF16 rows of x, zero-padded to whole tiles (16 rows x 32 elements); the
 * tile of rows 16t.. and elements 32s.. starts at base + t * block + s * step, its rows row_bytes apart.
 * Row-major xb[rows, ldx] is {xb, 2 ldx, 32, 16 ldx}; the tiled layout the matmul driver writes (each
 * tile's 1 KB contiguous, so every tile load is one sequential stream, whatever ldx) is
 * {xt, 64, 512, 512 steps}. */
typedef struct {
    const uint16_t *base;
    int64_t row_bytes, step, block;
} sv_amx_operand;

/* The AMX BF16 GEMM (matmul_amx_impl.h): the BF16 GEMM of precision "bf16" on tiles, for BF16 weights (and
 * quantized ones rounded to BF16: sv_matmul_amx_quant) and more than min_n input rows (fewer take the dot
 * kernels; 2 to few_max_n rows of BF16 weights whose K is whole tiles take gemm_few).  pack writes one
 * panel of panel_width weight rows, panel[steps * k_align / 2, panel_width], steps = ceil(W.cols / k_align),
 * in sv_bf16_isa's pair layout (the layout AMX reads B in), zero-padded; gemm: y[i, c] = a[i, :] . W[c, :] + b[c] for
 * i < n, c < width, a's rows padded with zeros to a multiple of row_align, W's rows packed in
 * ceil(width / panel_width) panels panel_words apart, b NULL or [width]. */
typedef struct {
    const char *name;
    int min_n;
    int panel_width, k_align, row_align;
    void (*pack)(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1);
    void (*gemm)(float *y, int64_t ldy, const sv_amx_operand *a, int64_t n, int64_t steps, const uint32_t *panels,
                 int64_t panel_words, int64_t width, const float *b);
    /* Products of 2 to few_max_n input rows (matmul_amx_impl.h): y[i, r] = x[i, :] . W[r, :] + b[r] for i < n,
     * r < rows, the weights read in place, w[rows rounded up to row_align, ldw] BF16 (steps * k_align
     * columns used), x as xt[steps][k_align / 2][few_max_n] words of BF16 pairs, zero past n. */
    int few_max_n;
    void (*gemm_few)(float *y, int64_t ldy, const uint32_t *xt, int64_t n, int64_t steps, const uint16_t *w,
                     int64_t ldw, int64_t rows, const float *b);
    /* sv_q_dequantize_bf16 (quant.h) from group 0, the same values (vectorised where the tiles are real): a
     * quantized W's rows for the GEMM, which then takes x's columns in the group order too. */
    void (*dequantize_row)(uint16_t *dst, const sv_matrix *W, int64_t r);
} sv_amx_isa;

/* Input i of gemm_few's xt (m = few_max_n columns): the BF16 row[0:k] (k even) as pairs, one word each. */
static inline void sv_amx_few_column(uint32_t *xt, int64_t m, int64_t i, const uint16_t *row, int64_t k) {
    for (int64_t p = 0; p < k / 2; p++) xt[p * m + i] = (uint32_t)row[2 * p] | (uint32_t)row[2 * p + 1] << 16;
}

/* The int8 dot kernels of load option quant (quant.h formats ST_Q8, ST_Q4): the driver
 * (matmul_quant.c) quantizes the activations once per matmul to int8 blocks, codes xq[n, ldq] with
 * scales xd[n, nb] and code sums xs[n, nb] (sv_q_quantize_activations), which every thread reads. */
typedef struct {
    const char *name;
    /* One activation row, as sv_q_quantize_activations (quant.h) and with the same codes for finite x. */
    void (*quantize)(int8_t *xq, float *xd, int32_t *xs, const float *x, int64_t k);
    /* y[i, r] = sum over blocks b of scale(W[r], b) * xd[i, b] * (W[r]'s codes . xq[i]'s, in block b) + b[r],
     * for i < n, r0 <= r < r1: W ST_Q8 or ST_Q4, y[n, ldy], b NULL or [W.rows]. */
    void (*dot)(float *y, int64_t ldy, const int8_t *xq, int64_t ldq, const float *xd, const int32_t *xs,
                int64_t n, const sv_matrix *W, const float *b, int64_t r0, int64_t r1);
    int dot_max_n; /* the driver uses dot up to this n; above it dequantized panels through the fp32 GEMM */
} sv_quant_isa;

/* The small kernels of kernels.h, same shapes as there. */
typedef struct {
    void (*layernorm)(float *y, const float *x, const float *w, const float *b, int64_t n, int64_t dim, float eps);
    void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, int64_t dim, float eps);
    void (*gelu_tanh)(float *x, int64_t n);
    void (*silu_mul)(float *gate, const float *up, int64_t n);
    void (*softmax)(float *x, int64_t n);
    float (*softmax_bf16)(uint16_t *p, int64_t ld, const float *x, int64_t n);
    void (*add)(float *y, const float *x, int64_t n);
    void (*dot_rows)(float *out, const float *x, const float *rows, int64_t n_rows, int64_t len, int64_t stride,
                     float scale);
    void (*dot_rows_bf16)(float *out, const float *x, const uint16_t *rows, int64_t n_rows, int64_t len,
                          int64_t stride, float scale);
} sv_ops;

extern const sv_isa sv_isa_portable;
extern const sv_ops sv_ops_portable;
#ifdef SV_X86_KERNELS
extern const sv_isa sv_isa_avx2, sv_isa_avx512;
extern const sv_ops sv_ops_avx2, sv_ops_avx512;
#endif
#ifdef SV_NEON_KERNELS
extern const sv_isa sv_isa_neon;
#endif
#ifdef SV_BF16_KERNELS
extern const sv_ops sv_ops_avx512bf16;
extern const sv_bf16_isa sv_bf16_isa_avx512bf16;
#endif
#ifdef SV_AMX_KERNELS
extern const sv_amx_isa sv_amx_isa_tiles; /* matmul_amx.c: the real instructions */
#endif
extern const sv_amx_isa sv_amx_isa_emulated; /* matmul_amx_emulated.c: the same kernel on amx_emulation.h */
extern const sv_quant_isa sv_quant_isa_portable;
#ifdef SV_X86_KERNELS
extern const sv_quant_isa sv_quant_isa_avx2;
#endif
#ifdef SV_VNNI_KERNELS
extern const sv_quant_isa sv_quant_isa_avx512vnni;
#endif

/* The drivers (matmul.c, matmul_quant.c) split W's rows over the pool in blocks of SV_ROW_BLOCK rows:
 * task items [begin, end) are rows [r0, r1). */
enum { SV_ROW_BLOCK = 16 };
static inline int64_t sv_row_blocks(int64_t rows) { return (rows + SV_ROW_BLOCK - 1) / SV_ROW_BLOCK; }
static inline void sv_block_rows(int64_t begin, int64_t end, int64_t rows, int64_t *r0, int64_t *r1) {
    *r0 = begin * SV_ROW_BLOCK;
    *r1 = end * SV_ROW_BLOCK < rows ? end * SV_ROW_BLOCK : rows;
}

/* The tables for a level, or NULL when this CPU (or this build) cannot run it. */
const sv_isa *sv_isa_for(sv_isa_level level);
const sv_ops *sv_ops_for(sv_isa_level level);
/* The BF16 x BF16 kernels for a level: NULL below SV_ISA_AVX512BF16 (precision "bf16" then runs fp32). */
const sv_bf16_isa *sv_bf16_isa_for(sv_isa_level level);
/* The AMX GEMM for a level: NULL below SV_ISA_AMX, and where Linux refuses the tile state or the kernel
 * fails its self-check (both tried once per process, on the first call at level amx). */
const sv_amx_isa *sv_amx_for(sv_isa_level level);
/* What became of AMX in this process: "on", "absent" (CPU or build), "off (SMOLVISION_ISA=...)",
 * "refused: ..." or "failed self-check: ...".  Runs the first-call check of sv_amx_for. */
const char *sv_amx_status(void);
/* Whether an AMX GEMM's pack and gemm agree with a plain-C evaluation on small products of edge shapes:
 * exactly where every sum is exact in fp32, to fp32 rounding on real values (amx_check.c).  If not, or
 * out of memory, 0 and why. */
int sv_amx_self_check(const sv_amx_isa *amx, char *why, size_t why_size);
/* sv_matmul's AMX path for quantized weights (matmul_quant.c's prompts): each group of rows dequantized to
 * BF16 in the codes' group order (dequantize_row; x's columns put in the same order), then multiplied on
 * tiles as BF16 weights are.  0 (nothing done) where it does not run:
 * no AMX, n not above its min_n, a shape beyond the scratch, or the shared buffer cannot grow. */
int sv_matmul_amx_quant(sv_pool *pool, const sv_bf16_isa *bf16, const sv_amx_isa *amx, float *y, const float *x,
                        int64_t n, const sv_matrix *W, const float *b);
/* sv_matmul's driver with explicit kernels (bf16 or amx may be NULL; isa takes what they do not), for the
 * test hooks of the emulated AMX kernels (amx_debug.c). */
void sv_matmul_with(sv_pool *pool, const sv_isa *isa, const sv_bf16_isa *bf16, const sv_amx_isa *amx, float *y,
                    const float *x, int64_t n, const sv_matrix *W, const float *b);

/* The int8 kernels of quantized weights for a level: AVX-512 VNNI where the level is AVX-512 or above
 * and the CPU has AVX512_VNNI, else AVX2 from level AVX2 up, else portable; NULL above what the CPU runs. */
const sv_quant_isa *sv_quant_isa_for(sv_isa_level level);
/* sv_matmul for W quantized (ST_Q8, ST_Q4) with the kernels of a level (matmul_quant.c). */
void sv_matmul_quant(sv_pool *pool, sv_precision precision, sv_isa_level level, float *y, const float *x, int64_t n, const sv_matrix *W,
                     const float *b);
/* Bytes ahead of the loads that the memory-bound dot kernels (BF16 n = 1, AVX-512 VNNI q8 / q4) prefetch
 * their weight stream: 1536 on Intel CPUs, 0 elsewhere (measured on Sapphire Rapids and Zen 4: see
 * matmul_avx512bf16.c's gemv_rows and quant_avx512vnni.c). */
int64_t sv_stream_prefetch(void);
/* The level this process uses: the best the CPU supports, lowered by SMOLVISION_ISA if set. */
sv_isa_level sv_isa_selected(void);
/* "portable", "avx2", "avx512", "avx512bf16", "amx", "neon" -> level; -1 for an unknown name. */
int sv_isa_parse(const char *name);
const char *sv_isa_level_name(sv_isa_level level);

/* dst[n] = x[n] rounded to BF16, nearest even, in plain C (finite inputs; sv_to_bf16_rows where there are
 * no AVX512_BF16 kernels). */
void sv_to_bf16_plain(uint16_t *dst, const float *x, int64_t n);

/* One KV head's n keys and values (each row ld floats apart, hd values of the head) rounded to BF16 by
 * round (a round_rows, or sv_to_bf16_rows): keys into kb [n, hd], values transposed into vt [hd, n] (rows
 * ldvt apart), a block of them at a time through scratch (scratch_bytes).  kv_cache.c's store and the
 * vision attention's split both lay K and V^T out this way. */
void sv_head_kv_to_bf16(sv_round_rows_fn *round, uint16_t *kb, uint16_t *vt, int64_t ldvt, const float *k,
                        const float *v, int64_t ld, int64_t n, int64_t hd, uint16_t *scratch, int64_t scratch_bytes);

/* e^r = 1 + r (C1 + r (C2 + r (C3 + r (C4 + r C5)))) for |r| <= ln2 / 2: ops_impl.h's exp_poly and
 * ops_avx512.c's exp16 evaluate the same polynomial. */
#define SV_EXP_C1 0.999999702f
#define SV_EXP_C2 0.499991506f
#define SV_EXP_C3 0.166676357f
#define SV_EXP_C4 0.0418979302f
#define SV_EXP_C5 0.00829031505f

/* Scalar widening for the portable kernels, branch-free so loops over it vectorise. */
static inline float sv_bits_to_float(uint32_t bits) {
    union { uint32_t u; float f; } v = {bits};
    return v.f;
}

static inline float sv_bf16_to_float(uint16_t h) { return sv_bits_to_float((uint32_t)h << 16); }

/* x rounded to BF16, nearest even (finite x): add half an ulp of BF16 and the kept part's lowest bit, keep
 * the high half. */
static inline uint16_t sv_float_to_bf16(float x) {
    union { float f; uint32_t u; } v = {x};
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

/* F16 -> F32: the exponent and mantissa shifted into place read as a float
 * that is 2^112 too small (for subnormals too, exactly), so scale it; all-ones
 * exponents (inf, NaN) map to the float all-ones exponent instead. */
static inline float sv_f16_to_float(uint16_t h) {
    uint32_t magnitude = (uint32_t)(h & 0x7FFF) << 13, sign = (uint32_t)(h & 0x8000) << 16;
    float scaled = sv_bits_to_float(magnitude) * 0x1p112f;
    union { float f; uint32_t u; } v = {scaled};
    uint32_t bits = (h & 0x7C00) == 0x7C00 ? magnitude | 0x7F800000 : v.u;
    return sv_bits_to_float(bits | sign);
}

#endif
