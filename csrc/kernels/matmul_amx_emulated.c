/* matmul_amx_emulated.c - the AMX BF16 GEMM of matmul_amx_impl.h, the same
 * source as matmul_amx.c, on amx_emulation.h's plain-C model of the tile
 * instructions.  Built on every CPU and reached only through the test hooks
 * (sv_debug_matmul_amx_emulated, sv_debug_amx_self_check): it lets the
 * kernel's packing, blocking and edge handling be tested where there is no
 * AMX.  The panels are packed in plain C into the layout isa.h gives
 * sv_bf16_isa's pack (which the real build calls instead). */
#define SV_AMX_EMULATED
#include "../quant.h"
#include "isa.h"

/* panel[p, c] = W[r0 + c, 2p] | W[r0 + c, 2p + 1] << 16 for p < ceil(cols / 2), c < PANEL; zero past the
 * row's end (odd cols) and for c >= r1 - r0. */
static void pack_pairs(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1) {
    for (int64_t p = 0; p < (cols + 1) / 2; p++)
        for (int64_t c = 0; c < 32; c++) {
            int have = r0 + c < r1;
            const uint16_t *row = have ? w + (r0 + c) * ldw : w;
            uint32_t lo = have ? row[2 * p] : 0, hi = have && 2 * p + 1 < cols ? row[2 * p + 1] : 0;
            panel[p * 32 + c] = lo | hi << 16;
        }
}

static void dequantize_row(uint16_t *dst, const sv_matrix *W, int64_t r) { sv_q_dequantize_bf16(dst, W, r, 0); }

#define AMX_TABLE sv_amx_isa_emulated
#define AMX_NAME "amx-emulated"
#define AMX_MIN_N 0 /* every n through the tiles: the tests want the edges at n = 1 too */
#include "matmul_amx_impl.h"
