/* matmul_amx.c - the AMX BF16 GEMM (matmul_amx_impl.h) on the real tile
 * instructions, for x86-64 CPUs with AMX-TILE and AMX-BF16 (Sapphire Rapids
 * and later).  CMake compiles this one file with -mamx-tile -mamx-bf16 and
 * the AVX-512 flags (SV_AMX_KERNELS: when the compiler has them); dispatch.c
 * hands its table out only after cpuid, Linux's grant of the tile state and
 * a self-check against plain C (amx_check.c) all pass.
 *
 * Panels are packed by the AVX512_BF16 GEMM's pack (every AMX CPU has
 * AVX512_BF16; level amx sits above avx512bf16): its layout is the one the
 * B tiles read. */
#if defined(SV_AMX_KERNELS) && defined(SV_BF16_KERNELS)
#include "isa.h"

static void pack_pairs(uint32_t *panel, const uint16_t *w, int64_t ldw, int64_t cols, int64_t r0, int64_t r1) {
    sv_bf16_isa_avx512bf16.pack(panel, w, ldw, cols, r0, r1);
}

#define AMX_TABLE sv_amx_isa_tiles
#define AMX_NAME "amx"
/* Products of 2 to 16 rows whose K is whole tiles take gemm_few (the weights read in place; 2.2B decoder,
 * Sapphire Rapids, 2 / 4 / 8 sequences: 13.7 / 24.5 / 44 tok/s against 11.9 / 19.8 / 35 before).  The
 * packed GEMM takes the rest above 4 rows: up to 4 the AVX512_BF16 dot kernel measured faster than it, and
 * one sequence's decode stays a GEMV. */
#define AMX_MIN_N 4
#include "matmul_amx_impl.h"

_Static_assert(PANEL == 32, "pack_pairs is the AVX512_BF16 pack, whose panels are 32 wide");

#endif
