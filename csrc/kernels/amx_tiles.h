/* amx_tiles.h - the seam between the AMX GEMM (matmul_amx_impl.h) and the
 * tile instructions: every tile operation the kernel issues goes through
 * these macros.  matmul_amx.c gets the real instructions (compiled with
 * -mamx-tile -mamx-bf16); matmul_amx_emulated.c defines SV_AMX_EMULATED
 * and gets amx_emulation.h's plain-C model of them, so the same kernel
 * source is tested on CPUs without AMX.  Tile numbers are compile-time
 * constants, as the instructions encode them. */
#ifndef SV_KERNELS_AMX_TILES_H
#define SV_KERNELS_AMX_TILES_H

#ifdef SV_AMX_EMULATED
#include "amx_emulation.h"
#define TILE_CONFIG(config) emu_loadconfig(config)
#define TILE_ZERO(t) emu_zero(t)
#define TILE_LOAD(t, base, stride) emu_load(t, base, stride)
#define TILE_DPBF16PS(c, a, b) emu_dpbf16ps(c, a, b)
#define TILE_STORE(t, base, stride) emu_store(t, base, stride)
#define TILE_RELEASE() emu_release()
#else
#include <immintrin.h>
#define TILE_CONFIG(config) _tile_loadconfig(config)
#define TILE_ZERO(t) _tile_zero(t)
/* GCC 12's tileloadd asm names no memory operand: the barrier keeps every store before it (the panel,
 * xb) from being moved past the load. */
#define TILE_LOAD(t, base, stride)                                                                           \
    do {                                                                                                     \
        __asm__ volatile("" ::: "memory");                                                                   \
        _tile_loadd(t, base, stride);                                                                        \
    } while (0)
#define TILE_DPBF16PS(c, a, b) _tile_dpbf16ps(c, a, b)
#define TILE_STORE(t, base, stride) _tile_stored(t, base, stride)
#define TILE_RELEASE() _tile_release()
#endif

#endif
