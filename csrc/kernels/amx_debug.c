/* amx_debug.c - the test hooks of the AMX GEMM (smolvision.h): its emulated
 * build (matmul_amx_emulated.c) through the matmul driver, and the
 * self-check, each also with a planted bug so the tests show they can fail;
 * and one emulated instruction, for checking the emulation against the SDM. */
#include "../error.h"
#include "amx_emulation.h"
#include "isa.h"

/* The emulated pack, then each BF16 pair's halves swapped: the kind of layout slip the tests must catch. */
static void pack_swapped(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1) {
    const sv_amx_isa *amx = &sv_amx_isa_emulated;
    amx->pack(panel, w, ldw, cols, r0, r1);
    int64_t words = (cols + amx->k_align - 1) / amx->k_align * amx->k_align / 2 * amx->panel_width;
    for (int64_t i = 0; i < words; i++) panel[i] = panel[i] >> 16 | panel[i] << 16;
}

static sv_amx_isa planted_kernels(void) {
    sv_amx_isa amx = sv_amx_isa_emulated;
    amx.name = "amx-emulated-planted-bug";
    amx.pack = pack_swapped;
    return amx;
}

sv_status sv_debug_matmul_amx_emulated(int32_t planted, const float *x, int64_t n, const uint16_t *w, int64_t rows,
                                       int64_t cols, const float *b, float *y, int32_t threads) {
    if (n < 0 || rows < 1 || cols < 1 || n > INT32_MAX || rows > INT32_MAX || cols > INT32_MAX || threads < 1)
        return sv_fail(SV_ERR_ARG, "bad matmul arguments n=%lld rows=%lld cols=%lld threads=%d", (long long)n,
                       (long long)rows, (long long)cols, threads);
    sv_amx_isa amx = planted ? planted_kernels() : sv_amx_isa_emulated;
    sv_pool *pool = sv_pool_create(threads);
    if (!pool) return sv_fail(SV_ERR_NOMEM, "cannot start %d threads", threads);
    sv_matrix W = {w, ST_BF16, rows, cols};
    sv_matmul_with(pool, &sv_isa_portable, NULL, &amx, y, x, n, &W, b);
    sv_pool_free(pool);
    return SV_OK;
}

sv_status sv_debug_amx_self_check(int32_t planted) {
    sv_amx_isa amx = planted ? planted_kernels() : sv_amx_isa_emulated;
    char why[200];
    if (!sv_amx_self_check(&amx, why, sizeof why)) return sv_fail(SV_ERR_UNSUPPORTED, "%s", why);
    return SV_OK;
}

sv_status sv_debug_amx_emulated_dpbf16ps(const uint8_t *config, const uint8_t *a, const uint8_t *b, uint8_t *c) {
    emu_loadconfig(config);
    emu_load(0, c, 64);
    emu_load(1, a, 64);
    emu_load(2, b, 64);
    emu_dpbf16ps(0, 1, 2);
    emu_store(0, c, 64);
    emu_release();
    return SV_OK;
}
