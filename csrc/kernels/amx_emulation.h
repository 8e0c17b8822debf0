/* amx_emulation.h - the AMX tile instructions the BF16 GEMM uses, in plain
 * C, so the kernel's packing, blocking and edge handling run and are tested
 * on any CPU (matmul_amx_emulated.c; tests/test_kernels.py).  Nothing here
 * ever runs on the real-instruction path.
 *
 * Written from the instructions' definitions in the Intel SDM (vol. 2,
 * LDTILECFG, TILEZERO, TILELOADD, TDPBF16PS, TILESTORED, TILERELEASE;
 * palette 1: 8 tiles of at most 16 rows of 64 bytes), not from the kernel:
 *   - LDTILECFG reads a 64-byte block: byte 0 palette, byte 1 start_row,
 *     bytes 16 + 2t: colsb of tile t (uint16), byte 48 + t: rows of tile t;
 *     palette 0 unconfigures; every tile is zeroed.
 *   - TILELOADD t, [base + stride * r]: row r < rows(t) gets colsb(t) bytes
 *     from base + r * stride; bytes past colsb and rows past rows are zero.
 *   - TDPBF16PS c, a, b: for each row m of c and fp32 column n,
 *     c[m][n] += sum over k < colsb(a) / 4 of a[m].bf16[2k] * b[k].bf16[2n]
 *                + a[m].bf16[2k + 1] * b[k].bf16[2n + 1],
 *     the even and odd products each summed in fp32 across k first (the
 *     SDM's temp1[2n], temp1[2n + 1]), then both added to c; BF16 inputs and
 *     fp32 results that are denormal count as zero.  It faults (#UD) unless
 *     rows(c) = rows(a), colsb(c) = colsb(b), colsb(a) = 4 * rows(b).
 *   - TILESTORED [base + stride * r], t: writes colsb(t) bytes of each of
 *     rows(t) rows.
 * A use the hardware would fault on is reported on stderr and poisons the
 * destination tile with NaN, so the results show it as well.
 *
 * Tiles are per-thread architectural state, as on the hardware: one
 * thread-local register file. */
#ifndef SV_KERNELS_AMX_EMULATION_H
#define SV_KERNELS_AMX_EMULATION_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { EMU_TILES = 8, EMU_ROWS = 16, EMU_COLSB = 64 };

typedef struct {
    int configured;
    uint16_t colsb[EMU_TILES];
    uint8_t rows[EMU_TILES];
    unsigned char data[EMU_TILES][EMU_ROWS][EMU_COLSB];
} emu_tiles;

static _Thread_local emu_tiles emu;

static inline float emu_f32(const unsigned char *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* A BF16 value (its bits at p) as fp32; a denormal counts as zero (DAZ). */
static inline float emu_bf16(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    uint32_t bits = (h & 0x7F80u) == 0 ? (uint32_t)(h & 0x8000u) << 16 : (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float emu_flush(float f) { return fabsf(f) < 0x1p-126f ? copysignf(0.0f, f) : f; } /* FTZ */

static inline void emu_poison(int t, const char *why) {
    fprintf(stderr, "smolvision: emulated AMX fault on tile %d: %s\n", t, why);
    if (t < 0 || t >= EMU_TILES) return;
    float nan = NAN;
    for (int r = 0; r < EMU_ROWS; r++)
        for (int c = 0; c < EMU_COLSB; c += 4) memcpy(&emu.data[t][r][c], &nan, sizeof nan);
}

static inline int emu_usable(int t) {
    if (t < 0 || t >= EMU_TILES || !emu.configured || emu.rows[t] == 0 || emu.colsb[t] == 0) {
        emu_poison(t, "tile not configured");
        return 0;
    }
    return 1;
}

static inline void emu_loadconfig(const void *config) {
    const unsigned char *c = config;
    memset(&emu, 0, sizeof emu);
    if (c[0] == 0) return; /* palette 0: the init state */
    int ok = c[0] == 1 && c[1] == 0;
    for (int t = 0; t < EMU_TILES; t++) {
        uint16_t colsb;
        memcpy(&colsb, c + 16 + 2 * t, sizeof colsb);
        emu.colsb[t] = colsb;
        emu.rows[t] = c[48 + t];
        ok &= colsb <= EMU_COLSB && emu.rows[t] <= EMU_ROWS && (colsb == 0) == (emu.rows[t] == 0);
    }
    emu.configured = ok;
    if (!ok) emu_poison(-1, "invalid tile configuration (#GP)");
}

static inline void emu_zero(int t) {
    if (emu_usable(t)) memset(emu.data[t], 0, sizeof emu.data[t]);
}

static inline void emu_load(int t, const void *base, int64_t stride) {
    if (!emu_usable(t)) return;
    memset(emu.data[t], 0, sizeof emu.data[t]);
    for (int r = 0; r < emu.rows[t]; r++) memcpy(emu.data[t][r], (const char *)base + r * stride, emu.colsb[t]);
}

static inline void emu_store(int t, void *base, int64_t stride) {
    if (!emu_usable(t)) return;
    for (int r = 0; r < emu.rows[t]; r++) memcpy((char *)base + r * stride, emu.data[t][r], emu.colsb[t]);
}

static inline void emu_dpbf16ps(int c, int a, int b) {
    if (!emu_usable(c) || !emu_usable(a) || !emu_usable(b)) return;
    if (c == a || c == b || a == b || emu.rows[c] != emu.rows[a] || emu.colsb[c] != emu.colsb[b] ||
        emu.colsb[a] != 4 * emu.rows[b] || emu.colsb[a] % 4 || emu.colsb[c] % 4) {
        emu_poison(c, "TDPBF16PS operand shapes disagree (#UD)");
        return;
    }
    int pairs = emu.colsb[a] / 4, cols = emu.colsb[c] / 4;
    float av[EMU_ROWS][EMU_COLSB / 2], bv[EMU_ROWS][EMU_COLSB / 2]; /* the BF16 elements widened, once */
    for (int r = 0; r < EMU_ROWS; r++)
        for (int e = 0; e < EMU_COLSB / 2; e++) {
            av[r][e] = emu_bf16(&emu.data[a][r][2 * e]);
            bv[r][e] = emu_bf16(&emu.data[b][r][2 * e]);
        }
    for (int m = 0; m < emu.rows[c]; m++) {
        for (int n = 0; n < cols; n++) {
            float even = 0.0f, odd = 0.0f;
            for (int k = 0; k < pairs; k++) {
                even = emu_flush(even + av[m][2 * k] * bv[k][2 * n]);
                odd = emu_flush(odd + av[m][2 * k + 1] * bv[k][2 * n + 1]);
            }
            float sum = emu_flush(emu_flush(emu_f32(&emu.data[c][m][4 * n]) + even) + odd);
            memcpy(&emu.data[c][m][4 * n], &sum, sizeof sum);
        }
        memset(&emu.data[c][m][4 * cols], 0, EMU_COLSB - 4 * cols);
    }
}

static inline void emu_release(void) { memset(&emu, 0, sizeof emu); }

#endif
