/* quant.h - the quantized weight formats of load option quant (q8, q4) and
 * the portable code that writes and reads them.
 *
 * Both formats cut each row of W[rows, cols] into blocks of SV_QBLOCK = 32
 * columns (the last block zero-padded) with one fp16 scale d per block:
 *
 *   ST_Q8: w = d * q, q in [-128, 127] (d = max|w| / 127), stored as the byte q + 128;
 *          a row is nb * 32 bytes, block b at byte 32 b.
 *   ST_Q4: w = d * q, q in [-8, 7] (d = -m / 8 for the block's value m of largest
 *          magnitude, so m is exactly -8 d), stored as the nibble q + 8; a row is
 *          nb * 16 bytes.  Blocks go in groups of 4 (the last group may hold fewer,
 *          g): a group of g blocks is 16 g bytes at byte 64 * group, byte j holding
 *          the group's element j in its low nibble and element 16 g + j in its high
 *          one, so one 64-byte load and a mask/shift give 128 codes in element order.
 *
 * (nb = ceil(cols / 32).)  A quantized matrix is one region, 64-byte aligned:
 * the codes [rows, row_bytes], then from the next multiple of 64 the scales
 * [rows, nb] as fp16.  Storing codes with an offset (q + 128, q + 8) lets the
 * int8 dot kernels multiply unsigned codes by signed activations (VNNI's
 * vpdpbusd) and subtract offset * sum(x) once per block.
 *
 * Activations are quantized the same way per block of 32, to int8 with an
 * fp32 scale (x = d * q, d = max|x| / 127), once per matmul. */
#ifndef SV_QUANT_H
#define SV_QUANT_H

#include <stdint.h>

#include "model.h"

#define SV_QBLOCK 32

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

/* One activation row: xq[nb * 32] (zero-padded), xd[nb], x ~ xd[b] * xq (block b). */
void sv_q_quantize_activations(int8_t *xq, float *xd, const float *x, int64_t k);

/* sum over blocks b0 <= b < b1 of (scale_w * xd[b]) * sum_j (q_w * xq): row r of W against one
 * activation row (xq, xd as sv_q_quantize_activations writes them).  The reference the kernels
 * follow, and their tail. */
float sv_q_dot_blocks(const sv_matrix *W, int64_t r, const int8_t *xq, const float *xd, int64_t b0, int64_t b1);

/* Load option quant (quant_cache.c): quantizes the text decoder's linear weights of a loaded model
 * (its pool running) to quant, through the cache file at cache_path (NULL: in memory), and points
 * the model's matrices at them.  SV_QUANT_NONE does nothing. */
sv_status sv_quant_apply(sv_model *m, int32_t quant, const char *cache_path, sv_log_fn log, void *log_user);

#endif
