/* quant.c - the q8 / q4 formats of quant.h: quantizing and dequantizing
 * rows, quantizing activations, and the reference block dot product.
 * Portable C; the SIMD dot kernels live in kernels/quant_*.c. */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "kernels/isa.h"

uint16_t sv_float_to_f16(float f) {
    union { float f; uint32_t u; } v = {f};
    uint32_t x = v.u & 0x7FFFFFFFu, sign = (v.u >> 16) & 0x8000u;
    if (x > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);     /* NaN */
    if (x >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);    /* rounds to 65520 or more: inf */
    if (x < 0x38800000u) {                                      /* below 2^-14: a subnormal (or zero) */
        union { uint32_t u; float f; } a = {x};
        return (uint16_t)(sign | (uint32_t)nearbyintf(a.f * 0x1p24f)); /* 0x400 when it rounds up to 2^-14 */
    }
    uint32_t rounded = x + 0xFFFu + ((x >> 13) & 1u);          /* nearest even on the 13 dropped bits */
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));  /* rebias the exponent 127 -> 15 */
}

static int clamp_int(float v, int lo, int hi) {
    float r = nearbyintf(v);
    return r >= (float)lo ? (r <= (float)hi ? (int)r : hi) : lo; /* NaN -> lo: never an undefined cast */
}

/* Byte and shift of element e (< 32 nb) of a row of type t: see the group layout in quant.h. */
static int64_t locate(st_dtype t, int64_t nb, int64_t e, int *shift) {
    int64_t chunk, pos = sv_q_position(nb, e, &chunk);
    *shift = 0;
    if (t == ST_Q8) return pos;
    int64_t grp = e / (SV_QBLOCK * SV_QGROUP), base = grp * SV_QGROUP * SV_QBLOCK;
    int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
    *shift = (int)(chunk & 1) * 4;
    return base / 2 + (pos - base) - 4 * g * chunk + 4 * g * (chunk / 2); /* chunk c -> 4 g (c / 2) */
}

/* Rounds v (|v| <= 2^22) to the nearest integer, ties to even, in the default rounding mode: adding and
 * subtracting 1.5 * 2^23 drops the fraction (compilers keep the pair: without -ffast-math it is not an
 * identity).  Unlike nearbyintf it vectorises with SSE2. */
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

/* The q4 code of w at 1 / scale inv: round to nearest, clamp to [-8, 7] (NaN: 0). */
static inline float q4_code(float w, float inv) {
    float r = round_even(w * inv);
    r = r < -8.0f ? -8.0f : r;
    r = r > 7.0f ? 7.0f : r;
    return r == r ? r : 0.0f;
}

/* The squared error of block w[32] stored at fp16 scale d16 (8 partial sums, so it vectorises). */
static float q4_error(const float *w, uint16_t d16) {
    float d = sv_f16_to_float(d16), inv = d != 0.0f ? 1.0f / d : 0.0f, part[8] = {0};
    for (int j = 0; j < SV_QBLOCK; j += 8)
        for (int l = 0; l < 8; l++) {
            float e = w[j + l] - d * q4_code(w[j + l], inv);
            part[l] += e * e;
        }
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/* Q4 scale search: -m / s for the block's value m of largest magnitude and s in 7, 7.5, 8, keeping the
 * one with the least squared error of the stored values (ties: s = 8, then the smaller s); codes into
 * q[32].  s = 8 maps m exactly to -8; smaller s keep m unclamped too but place the grid differently.
 * On SmolLM2-135M (bench/quant_accuracy.py) this lowered the mean KL from 0.40 to 0.38 nats; letting s
 * go above 8 (clamping m for a finer grid) lowers the RMS error of Gaussian blocks further but raised
 * the KL to 0.48: the largest weights matter most. */
static uint16_t q4_block(int8_t *q, const float *w, float m) {
    uint16_t best = sv_float_to_f16(-m / 8.0f);
    float best_err = q4_error(w, best);
    for (int k = 0; k < 2; k++) {
        uint16_t d16 = sv_float_to_f16(-m / (7.0f + 0.5f * (float)k));
        float err = q4_error(w, d16);
        if (err < best_err) best_err = err, best = d16;
    }
    float d = sv_f16_to_float(best), inv = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < SV_QBLOCK; j++) q[j] = (int8_t)q4_code(w[j], inv);
    return best;
}

void sv_q_quantize_row(st_dtype t, uint8_t *codes, uint16_t *scales, const float *w, int64_t cols) {
    int64_t nb = sv_q_blocks(cols);
    if (t == ST_Q4) memset(codes, 0, (size_t)sv_q_row_bytes(t, cols));
    for (int64_t b = 0; b < nb; b++) {
        int64_t c0 = b * SV_QBLOCK, len = cols - c0 < SV_QBLOCK ? cols - c0 : SV_QBLOCK;
        float v[SV_QBLOCK] = {0}, amax = 0.0f, m = 0.0f; /* m: the value of largest magnitude */
        memcpy(v, w + c0, (size_t)len * sizeof *v);
        for (int64_t j = 0; j < len; j++)
            if (fabsf(v[j]) > amax) amax = fabsf(v[j]), m = v[j];
        int8_t q[SV_QBLOCK];
        if (t == ST_Q8) {
            float d = amax / 127.0f;
            scales[b] = sv_float_to_f16(d > 65504.0f ? 65504.0f : d);
            float stored = sv_f16_to_float(scales[b]), inv = stored != 0.0f ? 1.0f / stored : 0.0f;
            for (int j = 0; j < SV_QBLOCK; j++) q[j] = (int8_t)clamp_int(v[j] * inv, -127, 127);
        } else {
            if (m > 65504.0f * 8.0f) m = 65504.0f * 8.0f;
            if (m < -65504.0f * 8.0f) m = -65504.0f * 8.0f;
            scales[b] = q4_block(q, v, m);
        }
        for (int64_t j = 0; j < SV_QBLOCK; j++) {
            int shift;
            int64_t byte = locate(t, nb, c0 + j, &shift);
            if (t == ST_Q8) codes[byte] = (uint8_t)(q[j] + 128);
            else codes[byte] |= (uint8_t)((q[j] + 8) << shift);
        }
    }
}

/* The signed code q at byte `lane` (4 u + j: element 4 c + j of block u) of chunk c in group grp of g blocks
 * of a row's codes (quant.h's layout; Q4: chunk c's nibbles share their bytes with chunk c ^ 1's). */
static inline int stored_code(st_dtype t, const uint8_t *codes, int64_t grp, int64_t g, int64_t c, int64_t lane) {
    if (t == ST_Q8) return (int)codes[grp * SV_QGROUP * SV_QBLOCK + 4 * g * c + lane] - 128;
    int byte = codes[grp * SV_QGROUP * SV_QBLOCK / 2 + 4 * g * (c / 2) + lane];
    return ((c & 1) ? byte >> 4 : byte & 0xF) - 8;
}

void sv_q_dequantize_row(float *dst, const sv_matrix *W, int64_t r) {
    const uint8_t *codes = sv_q_codes(W, r);
    const uint16_t *scales = sv_q_scales(W, r);
    int64_t nb = sv_q_blocks(W->cols), cols = W->cols;
    float block[SV_QBLOCK];
    /* walk each group in its stored order: chunk c of block u is elements 4c .. 4c + 3 of that block */
    for (int64_t grp = 0; grp * SV_QGROUP < nb; grp++) {
        int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
        for (int64_t u = 0; u < g; u++) {
            int64_t b = grp * SV_QGROUP + u;
            float d = sv_f16_to_float(scales[b]);
            for (int64_t c = 0; c < SV_QBLOCK / 4; c++)
                for (int64_t j = 0; j < 4; j++) block[4 * c + j] = d * (float)stored_code(W->dtype, codes, grp, g, c, 4 * u + j);
            int64_t c0 = b * SV_QBLOCK, len = cols - c0 < SV_QBLOCK ? cols - c0 : SV_QBLOCK;
            memcpy(dst + c0, block, (size_t)len * sizeof *dst);
        }
    }
}

void sv_q_dequantize_bf16(uint16_t *dst, const sv_matrix *W, int64_t r, int64_t g0) {
    const int64_t nb = sv_q_blocks(W->cols);
    const uint8_t *codes = sv_q_codes(W, r);
    const uint16_t *scales = sv_q_scales(W, r);
    for (int64_t grp = g0; grp * SV_QGROUP < nb; grp++) {
        const int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
        uint16_t *out = dst + (grp - g0) * SV_QGROUP * SV_QBLOCK;
        for (int64_t i = 0; i < SV_QBLOCK * g; i++) { /* chunk c = i / 4 g, byte i % 4 g of it, block u */
            int64_t c = i / (4 * g), lane = i % (4 * g), u = lane / 4;
            out[i] = sv_float_to_bf16(sv_f16_to_float(scales[grp * SV_QGROUP + u]) *
                                      (float)stored_code(W->dtype, codes, grp, g, c, lane));
        }
    }
}

void sv_q_group_order(uint16_t *dst, const uint16_t *x, int64_t k) {
    const int64_t nb = sv_q_blocks(k);
    for (int64_t b = 0; b < nb; b++) { /* block b's chunk c (elements 4c .. 4c + 3) at sv_q_position */
        const int64_t grp = b / SV_QGROUP, u = b % SV_QGROUP;
        const int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
        uint16_t *out = dst + grp * SV_QGROUP * SV_QBLOCK + 4 * u;
        if ((b + 1) * SV_QBLOCK <= k) {
            for (int64_t c = 0; c < SV_QBLOCK / 4; c++) memcpy(out + 4 * g * c, x + b * SV_QBLOCK + 4 * c, 4 * sizeof *x);
        } else {
            for (int64_t e = 0; e < SV_QBLOCK; e++) out[4 * g * (e / 4) + e % 4] = b * SV_QBLOCK + e < k ? x[b * SV_QBLOCK + e] : 0;
        }
    }
}

void sv_q_quantize_activations(int8_t *xq, float *xd, int32_t *xs, const float *x, int64_t k) {
    int64_t nb = sv_q_blocks(k);
    for (int64_t b = 0; b < nb; b++) {
        int64_t c0 = b * SV_QBLOCK, len = k - c0 < SV_QBLOCK ? k - c0 : SV_QBLOCK;
        int64_t grp = b / SV_QGROUP, u = b % SV_QGROUP;
        int64_t g = nb - grp * SV_QGROUP < SV_QGROUP ? nb - grp * SV_QGROUP : SV_QGROUP;
        float v[SV_QBLOCK], amax = 0.0f;
        for (int64_t j = 0; j < SV_QBLOCK; j++) v[j] = j < len ? x[c0 + j] : 0.0f;
        for (int64_t j = 0; j < SV_QBLOCK; j++) amax = fabsf(v[j]) > amax ? fabsf(v[j]) : amax;
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int8_t *dst = xq + grp * SV_QGROUP * SV_QBLOCK + 4 * u;
        int32_t sum = 0;
        for (int64_t c = 0; c < SV_QBLOCK / 4; c++)
            for (int64_t j = 0; j < 4; j++) {
                float r = round_even(v[4 * c + j] * inv); /* |r| <= 127: x * (127 / amax) rounds at most to 127 */
                int q = r >= -127.0f && r <= 127.0f ? (int)r : 0; /* (NaN inputs: 0) */
                dst[4 * g * c + j] = (int8_t)q;
                sum += q;
            }
        xd[b] = amax / 127.0f;
        xs[b] = sum;
    }
}
