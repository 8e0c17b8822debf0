/* matmul_amx_impl.h - the AMX BF16 GEMM (isa.h: sv_amx_isa), written once
 * against amx_tiles.h and compiled twice: matmul_amx.c on the real tile
 * instructions, matmul_amx_emulated.c on their plain-C model (for tests on
 * any CPU).  The including file defines, before including this:
 *   AMX_TABLE, AMX_NAME   the sv_amx_isa table's identifier and name
 *   AMX_MIN_N             its min_n
 *   pack_pairs(panel, w, ldw, cols, r0, r1)
 *                         sv_bf16_isa's pack for PANEL columns (isa.h layout)
 *   dequantize_row(dst, W, r)
 *                         sv_q_dequantize_bf16 from group 0 (quant.h), or a faster one
 * Everything else here is plain C, so the emulated build runs it unchanged.
 *
 * TDPBF16PS multiplies a 16 x 32 BF16 tile A by a 32 x 16 BF16 tile B into
 * a 16 x 16 fp32 tile C: A's rows are 32 consecutive BF16 of a row of x (a
 * row-major xb is A as it is, 16 rows a stride apart; isa.h's sv_amx_operand
 * also takes x laid out tile by tile), and B's row k holds the pairs
 * (W[c, 2k], W[c, 2k + 1]) for its 16 columns c as 32-bit words: exactly the
 * panel layout of the AVX512_BF16 GEMM, whose pack is reused.  A product of
 * two BF16 is exact in fp32, so as with vdpbf16ps the only errors are x's
 * rounding to BF16 and the fp32 sums.
 *
 * Blocking: 32 rows of x against one panel of 32 weight rows at a time, in
 * 2 x 2 accumulator tiles (C 0-3) fed by two A tiles (4, 5) and the panel's
 * two 16-column halves (B 6, 7): four tile loads per four tile products,
 * over the whole K, then the next panel.  The driver (matmul.c) sizes the
 * rows of x and the group of panels of one call so that both stay in L2:
 * every tile load is then an L2 hit, and x is read from memory once per
 * group of panels rather than once per panel.
 * Edges cost no special cases inside the loop: x is padded with zero columns
 * to a multiple of 32 and zero rows to a multiple of 16, pack pads the panel
 * with zero pair rows to match, the accumulators start from the bias, and a
 * block at an edge goes through memory, from which only the results that
 * exist are copied out. */
#include <stdint.h>
#include <string.h>

#include "amx_tiles.h"
#include "isa.h"

enum {
    PANEL = 32,   /* weight rows per packed panel: two B tiles of 16 columns */
    K_BLOCK = 32, /* BF16 elements in one A tile row (64 bytes) */
    M_BLOCK = 16, /* rows of a tile */
    M_STEP = 32   /* input rows per step: two A tiles */
};

/* LDTILECFG's 64-byte operand, palette 1 (SDM vol. 2, LDTILECFG). */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;
_Static_assert(sizeof(tile_config) == 64, "LDTILECFG reads 64 bytes");

/* Every tile whole: 16 rows of 64 bytes.  A constant rather than a local filled in before use: GCC 12's
 * _tile_loadconfig tells the compiler it reads only the first 8 bytes, so stores to the rest of a local
 * could legally be dropped. */
static const tile_config CONFIG = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {M_BLOCK, M_BLOCK, M_BLOCK, M_BLOCK, M_BLOCK, M_BLOCK, M_BLOCK, M_BLOCK},
};

/* The sv_amx_isa pack: pack_pairs, then zero pair rows up to the K_BLOCK multiple the last B tiles read. */
static void pack(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1) {
    pack_pairs(panel, w, ldw, cols, r0, r1);
    int64_t pairs = (cols + 1) / 2, padded = (cols + K_BLOCK - 1) / K_BLOCK * K_BLOCK / 2;
    memset(panel + pairs * PANEL, 0, (size_t)((padded - pairs) * PANEL) * sizeof *panel);
}

/* The four accumulator tiles: 0, 1 the first 16 rows (columns 0-15, 16-31), 2, 3 the next 16. */
static inline void zero_accumulators(void) {
    TILE_ZERO(0);
    TILE_ZERO(1);
    TILE_ZERO(2);
    TILE_ZERO(3);
}

/* Each accumulator row starts as b: a tile load with stride 0 reads the same 16 floats into all 16 rows. */
static inline void bias_accumulators(const float *b) {
    TILE_LOAD(0, b, 0);
    TILE_LOAD(1, b + 16, 0);
    TILE_LOAD(2, b, 0);
    TILE_LOAD(3, b + 16, 0);
}

/* Adds the products of the 32 rows starting at row i of a (16 if !two) with the whole panel. */
static inline void accumulate(const sv_amx_operand *a, int64_t i, int two, const uint32_t *panel, int64_t steps) {
    const uint16_t *first = a->base + i / M_BLOCK * a->block, *second = first + a->block;
    const int64_t step = a->step, row_bytes = a->row_bytes;
    for (int64_t s = 0; s < steps; s++) {
        const uint32_t *p = panel + s * (K_BLOCK / 2) * PANEL;
        TILE_LOAD(6, p, PANEL * sizeof *p);
        TILE_LOAD(7, p + 16, PANEL * sizeof *p);
        TILE_LOAD(4, first + s * step, row_bytes);
        TILE_DPBF16PS(0, 4, 6);
        TILE_DPBF16PS(1, 4, 7);
        if (two) {
            TILE_LOAD(5, second + s * step, row_bytes);
            TILE_DPBF16PS(2, 5, 6);
            TILE_DPBF16PS(3, 5, 7);
        }
    }
}

/* y[i, c] = a[i, :] . W[c, :] + b[c] for i < n, c < width: a's rows zero-padded to a multiple of M_BLOCK, W's
 * rows in ceil(width / PANEL) panels [steps * K_BLOCK / 2, PANEL] panel_words apart, y[n, ldy].  Each 32 rows
 * of a meet every panel in turn (while they are in cache).  Whole 32 x 32 blocks go from the tiles straight
 * to y (a copy through memory costs more than the products: vector loads of what a tile store just wrote
 * stall); the edges go through a block on the stack, from which only what exists is copied. */
static void gemm(float *y, int64_t ldy, const sv_amx_operand *a, int64_t n, int64_t steps, const uint32_t *panels,
                 int64_t panel_words, int64_t width, const float *b) {
    TILE_CONFIG(&CONFIG);
    _Alignas(64) float block[M_STEP][PANEL];
    _Alignas(64) float edge_bias[PANEL] = {0}; /* b of a last, partial panel, zero-padded for the tile load */
    const int64_t ldy_bytes = ldy * (int64_t)sizeof *y, ldb = sizeof block[0];
    for (int64_t i = 0; i < n; i += M_STEP) {
        const int64_t rows = n - i < M_STEP ? n - i : M_STEP;
        const int two = rows > M_BLOCK; /* a second A tile: a is padded to whole tiles, not to M_STEP */
        for (int64_t c = 0; c < width; c += PANEL) {
            const int64_t cols = width - c < PANEL ? width - c : PANEL;
            if (b && cols == PANEL) {
                bias_accumulators(b + c);
            } else if (b) {
                memcpy(edge_bias, b + c, (size_t)cols * sizeof *b);
                bias_accumulators(edge_bias);
            } else {
                zero_accumulators();
            }
            accumulate(a, i, two, panels + c / PANEL * panel_words, steps);
            float *out = y + i * ldy + c;
            if (rows == M_STEP && cols == PANEL) {
                TILE_STORE(0, out, ldy_bytes);
                TILE_STORE(1, out + 16, ldy_bytes);
                TILE_STORE(2, out + M_BLOCK * ldy, ldy_bytes);
                TILE_STORE(3, out + M_BLOCK * ldy + 16, ldy_bytes);
                continue;
            }
            TILE_STORE(0, &block[0][0], ldb);
            TILE_STORE(1, &block[0][16], ldb);
            TILE_STORE(2, &block[M_BLOCK][0], ldb);
            TILE_STORE(3, &block[M_BLOCK][16], ldb);
            for (int64_t r = 0; r < rows; r++) memcpy(out + r * ldy, block[r], (size_t)cols * sizeof *out);
        }
    }
    TILE_RELEASE(); /* back to the init state: the OS then need not save 8 KB of tiles per switch */
}

/* Few input rows (decode of several sequences at once): packing panels would cost more than the products,
 * so the weights are the A operand as they lie in memory (16 rows of 32 BF16, ldw elements apart: each
 * weight byte read once, straight from memory, nothing packed) and x is the B operand: xt holds x's BF16
 * pairs transposed, one tile per K step (row p of tile s: the words (x[i][32s + 2p], x[i][32s + 2p + 1])
 * for inputs i < 16, zero past n).  C = W x^T in blocks of 16 weight rows by 16 inputs, two blocks per step
 * sharing the B tile, written transposed into y: y[i, r] = W[r, :] . x[i, :] + b[r] for i < n, r < rows,
 * where w holds whole blocks of 16 rows (the driver pads a last partial one). */
static void gemm_few(float *y, int64_t ldy, const uint32_t *xt, int64_t n, int64_t steps, const uint16_t *w,
                     int64_t ldw, int64_t rows, const float *b) {
    TILE_CONFIG(&CONFIG);
    _Alignas(64) float c[2][M_BLOCK][16];
    const int64_t w_bytes = ldw * (int64_t)sizeof *w;
    for (int64_t r = 0; r < rows; r += 2 * M_BLOCK) {
        const int two = rows - r > M_BLOCK;
        const uint16_t *first = w + r * ldw, *second = first + M_BLOCK * ldw;
        TILE_ZERO(0);
        TILE_ZERO(1);
        for (int64_t s = 0; s < steps; s++) {
            TILE_LOAD(6, xt + s * M_BLOCK * 16, 16 * sizeof *xt);
            TILE_LOAD(4, first + s * K_BLOCK, w_bytes);
            TILE_DPBF16PS(0, 4, 6);
            if (two) {
                TILE_LOAD(5, second + s * K_BLOCK, w_bytes);
                TILE_DPBF16PS(1, 5, 6);
            }
        }
        TILE_STORE(0, &c[0][0][0], sizeof c[0][0]);
        if (two) TILE_STORE(1, &c[1][0][0], sizeof c[1][0]);
        for (int64_t k = 0; k < (two ? 2 : 1) * M_BLOCK && r + k < rows; k++)
            for (int64_t i = 0; i < n; i++) y[i * ldy + r + k] = c[k / M_BLOCK][k % M_BLOCK][i] + (b ? b[r + k] : 0.0f);
    }
    TILE_RELEASE();
}

const sv_amx_isa AMX_TABLE = {
    .name = AMX_NAME,
    .min_n = AMX_MIN_N,
    .panel_width = PANEL,
    .k_align = K_BLOCK,
    .row_align = M_BLOCK,
    .few_max_n = M_BLOCK,
    .pack = pack,
    .gemm = gemm,
    .gemm_few = gemm_few,
    .dequantize_row = dequantize_row,
};
