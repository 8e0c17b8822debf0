/* quant.h - the quantized weight formats of load option quant (q8, q4) and
 * the portable code that writes and reads them.
 *
 * Both formats cut each row of W[rows, cols] into blocks of SV_QBLOCK = 32
 * columns (the last block zero-padded) with one fp16 scale d per block:
 *
 *   ST_Q8: w = d * q, q in [-127, 127] (d = max|w| / 127), stored as the byte q + 128;
 *   ST_Q4: w = d * q, q in [-8, 7] (d = -m / s for the block's value m of largest magnitude,
 *          s in {7, 7.5, 8} chosen for the least squared error; s = 8 makes m exactly -8 d), stored
 *          as the nibble q + 8.
 *
 * Codes go in groups of 16 blocks (the row's last group may hold fewer, g), interleaved
 * so that one vector lane meets one block: the group is 8 chunks, chunk c holding
 * elements 4c .. 4c + 3 of each of its g blocks in turn (4 g bytes).  Q8 stores the
 * chunks one after the other (32 g bytes); Q4 packs chunk 2L in the low nibbles and
 * chunk 2L + 1 in the high nibbles of the same 4 g bytes (16 g bytes).  So a 64-byte
 * load of a full group is 16 lanes of 4 codes, lane u from block u, and 8 vpdpbusd
 * leave each block's whole sum in its own lane.  A row is nb * 32 (Q8) or nb * 16 (Q4)
 * bytes, group G at byte 512 G (Q8) or 256 G (Q4); nb = ceil(cols / 32).
 *
 * A quantized matrix is one region, 64-byte aligned: the codes [rows, row_bytes],
 * then from the next multiple of 64 the scales [rows, nb] as fp16 in block order.
 * Storing codes with an offset (q + 128, q + 8) lets the int8 kernels multiply
 * unsigned codes by signed activations (VNNI's vpdpbusd) and subtract
 * offset * sum(x) once per block.
 *
 * Activations are quantized the same way per block of 32, to int8 codes in the Q8
 * group order with an fp32 scale (x = d * q, d = max|x| / 127) and the block's code
 * sum, once per matmul. */
#ifndef SV_QUANT_H
#define SV_QUANT_H

#include <stdint.h>

#include "kernels/matrix.h"

#define SV_QBLOCK 32
#define SV_QGROUP 16 /* blocks per interleaved group */

static inline int sv_dtype_is_quant(st_dtype t) { return t == ST_Q8 || t == ST_Q4; }

/* Blocks per row: ceil(cols / 32). */
static inline int64_t sv_q_blocks(int64_t cols) { return (cols + SV_QBLOCK - 1) / SV_QBLOCK; }

/* Bytes of codes per row (ST_Q8: 32 per block, ST_Q4: 16). */
static inline int64_t sv_q_row_bytes(st_dtype t, int64_t cols) {
    return sv_q_blocks(cols) * (t == ST_Q8 ? SV_QBLOCK : SV_QBLOCK / 2);
}

static inline int64_t sv_align64(int64_t n) { return (n + 63) / 64 * 64; }

/* Offset of the scales in a quantized matrix's region, and the region's size (a multiple of 64). */
static inline int64_t sv_q_scales_offset(st_dtype t, int64_t rows, int64_t cols) {
    return sv_align64(rows * sv_q_row_bytes(t, cols));
}
static inline int64_t sv_q_matrix_bytes(st_dtype t, int64_t rows, int64_t cols) {
    return sv_align64(sv_q_scales_offset(t, rows, cols) + rows * sv_q_blocks(cols) * 2);
}

/* W's codes of row r, and its scales [nb] (W quantized). */
static inline const uint8_t *sv_q_codes(const sv_matrix *W, int64_t r) {
    return (const uint8_t *)W->data + r * sv_q_row_bytes(W->dtype, W->cols);
}
static inline const uint16_t *sv_q_scales(const sv_matrix *W, int64_t r) {
    const uint8_t *base = (const uint8_t *)W->data + sv_q_scales_offset(W->dtype, W->rows, W->cols);
    return (const uint16_t *)(const void *)base + r * sv_q_blocks(W->cols);
}

/* fp32 -> fp16, rounded to nearest even (subnormals included; beyond 65504 -> inf). */
uint16_t sv_float_to_f16(float f);

/* Quantizes one row w[cols] to type t (ST_Q8 or ST_Q4): codes[row_bytes], scales[nb]. */
void sv_q_quantize_row(st_dtype t, uint8_t *codes, uint16_t *scales, const float *w, int64_t cols);

/* dst[W.cols] = row r of the quantized W, as fp32 (exactly d * q). */
void sv_q_dequantize_row(float *dst, const sv_matrix *W, int64_t r);

/* Row r of the quantized W from group g0 on as BF16, d * q rounded to nearest even, in the codes' own order
 * (element e at sv_q_position: nothing shuffled, the other operand takes that order instead, see
 * sv_q_group_order): dst[(nb - 16 g0) * 32], zeros for the padding.  Portable C; the AMX kernels bring an
 * AVX-512 one (matmul_amx.c). */
void sv_q_dequantize_bf16(uint16_t *dst, const sv_matrix *W, int64_t r, int64_t g0);

/* dst[nb * 32] = the BF16 row x[k] in the group order (dst[sv_q_position(e)] = x[e], zeros past k), so that
 * its products with sv_q_dequantize_bf16's rows are x's products with W. */
void sv_q_group_order(uint16_t *dst, const uint16_t *x, int64_t k);

/* The byte of element e of a row in the group order (Q8 and activations; for Q4 halve the chunk:
 * byte 256 G + 4 g (c / 2) + 4 u + e % 4, the high nibble when c is odd). */
static inline int64_t sv_q_position(int64_t nb, int64_t e, int64_t *chunk) {
    int64_t b = e / SV_QBLOCK, grp = b / SV_QGROUP, u = b % SV_QGROUP, c = (e % SV_QBLOCK) / 4;
    int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
    if (chunk) *chunk = c;
    return grp * SV_QGROUP * SV_QBLOCK + 4 * g * c + 4 * u + e % 4;
}

/* One activation row x[k]: codes xq[nb * 32] in the group order (zero-padded), scales xd[nb] and the
 * blocks' code sums xs[nb]; x ~ xd[b] * q in block b. */
void sv_q_quantize_activations(int8_t *xq, float *xd, int32_t *xs, const float *x, int64_t k);

#endif
