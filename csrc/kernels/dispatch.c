/* dispatch.c - which kernels this CPU can run.
 *
 * The library is built for the baseline ISA; only the per-ISA kernel files
 * (*_avx2.c, *_avx512.c, matmul_avx512bf16.c, quant_avx512vnni.c: the list is
 * in CMakeLists.txt) are compiled with extra target flags.  Their tables are
 * handed out only after cpuid says the CPU has the instructions and xgetbv
 * says the OS saves the wider registers.  On aarch64 NEON is baseline: its
 * level is always there, and the small kernels are the portable ones
 * (ops_impl.h), which the compiler already vectorises with NEON there.
 * SMOLVISION_ISA=portable|avx2|avx512|avx512bf16|neon lowers the choice
 * (for tests and benchmarks); a name above what the CPU supports, one of
 * the other architecture, or an unknown one, is ignored.
 *
 * Level amx (AMX-TILE and AMX-BF16 on top of avx512bf16, and an OS that
 * enables the tile state in XCR0) needs two more things, tried once per
 * process on its first use (sv_amx_for): Linux must grant this process the
 * 8 KB tile data state (arch_prctl ARCH_REQ_XCOMP_PERM; it refuses, e.g.,
 * where a thread's alternate signal stack is too small for the larger
 * signal frame), and the kernel must pass its self-check (amx_check.c: a
 * few edge-shape products against plain C, cheap insurance against a CPU
 * or hypervisor that mishandles the tiles).  Either failing leaves the
 * AVX512_BF16 kernels in charge, silently except for sv_amx_status
 * (smolvision.cpu_features()["amx"]). */
#if defined(__linux__)
#define _GNU_SOURCE /* syscall() */
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

#if defined(SV_X86_KERNELS)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int has_vnni; /* AVX512_VNNI (vpdpbusd), set by detect() */
static int intel;    /* the vendor string is GenuineIntel, set by detect() */

static sv_isa_level detect(void) {
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) intel = b == 0x756E6547 && d == 0x49656E69 && c == 0x6C65746E;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return SV_ISA_PORTABLE;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(osxsave && avx && fma && f16c)) return SV_ISA_PORTABLE;
    uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return SV_ISA_PORTABLE; /* OS does not save ymm state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return SV_ISA_PORTABLE;
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    int amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1;
    if (!avx2) return SV_ISA_PORTABLE;
    if (!(avx512f && avx512bw && avx512vl) || (xcr0 & 0xE6) != 0xE6) return SV_ISA_AVX2; /* + opmask, zmm state */
    has_vnni = (c >> 11) & 1;
    if (!(__get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1))) return SV_ISA_AVX512;
    /* XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS manages the tile state */
#if defined(SV_AMX_KERNELS) && defined(__linux__)
    if (amx_tile && amx_bf16 && (xcr0 & 0x60000) == 0x60000) return SV_ISA_AMX;
#endif
    (void)amx_tile;
    (void)amx_bf16;
    return SV_ISA_AVX512BF16;
}
#elif defined(SV_NEON_KERNELS)
static const int has_vnni = 0, intel = 0;
static sv_isa_level detect(void) { return SV_ISA_NEON; }
#else
static const int has_vnni = 0, intel = 0;
static sv_isa_level detect(void) { return SV_ISA_PORTABLE; }
#endif

static const char *const level_names[SV_ISA_COUNT] = {"portable", "avx2", "avx512", "avx512bf16", "amx", "neon"};

static sv_isa_level supported, selected;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

/* Whether this process can run a level: at or below the detected one on its architecture's chain. */
static int runs(sv_isa_level level) {
    if (level == SV_ISA_NEON || supported == SV_ISA_NEON) return level == SV_ISA_PORTABLE || level == supported;
    return level <= supported;
}

static void choose(void) {
    supported = detect();
    selected = supported;
    const char *forced = getenv("SMOLVISION_ISA");
    int level = forced ? sv_isa_parse(forced) : -1;
    if (level >= 0 && level <= (int)supported && runs((sv_isa_level)level)) selected = (sv_isa_level)level;
}

int sv_isa_parse(const char *name) {
    for (int i = 0; i < SV_ISA_COUNT; i++)
        if (strcmp(name, level_names[i]) == 0) return i;
    return -1;
}

const char *sv_isa_level_name(sv_isa_level level) { return level_names[level]; }

sv_isa_level sv_isa_selected(void) {
    pthread_once(&detect_once, choose);
    return selected;
}

int64_t sv_stream_prefetch(void) {
    pthread_once(&detect_once, choose);
    return intel ? 1536 : 0;
}

const sv_isa *sv_isa_for(sv_isa_level level) {
    pthread_once(&detect_once, choose);
    if (!runs(level)) return NULL;
    switch (level) {
#if defined(SV_X86_KERNELS)
    /* The fp32 kernels gain nothing from AVX512_BF16: widening BF16 is a shift. */
    case SV_ISA_AMX:
    case SV_ISA_AVX512BF16:
    case SV_ISA_AVX512: return &sv_isa_avx512;
    case SV_ISA_AVX2: return &sv_isa_avx2;
#endif
#if defined(SV_NEON_KERNELS)
    case SV_ISA_NEON: return &sv_isa_neon;
#endif
    default: return &sv_isa_portable;
    }
}

const sv_ops *sv_ops_for(sv_isa_level level) {
    pthread_once(&detect_once, choose);
    if (!runs(level)) return NULL;
    switch (level) {
#if defined(SV_X86_KERNELS)
#if defined(SV_BF16_KERNELS)
    case SV_ISA_AMX:
    case SV_ISA_AVX512BF16: return &sv_ops_avx512bf16;
#else
    case SV_ISA_AMX:
    case SV_ISA_AVX512BF16:
#endif
    case SV_ISA_AVX512: return &sv_ops_avx512;
    case SV_ISA_AVX2: return &sv_ops_avx2;
#endif
    default: return &sv_ops_portable;
    }
}

const sv_bf16_isa *sv_bf16_isa_for(sv_isa_level level) {
    pthread_once(&detect_once, choose);
    if (!runs(level)) return NULL;
#if defined(SV_BF16_KERNELS)
    if (level == SV_ISA_AVX512BF16 || level == SV_ISA_AMX) return &sv_bf16_isa_avx512bf16;
#endif
    return NULL;
}

const sv_quant_isa *sv_quant_isa_for(sv_isa_level level) {
    pthread_once(&detect_once, choose);
    if (!runs(level)) return NULL;
    int avx512 = level == SV_ISA_AVX512 || level == SV_ISA_AVX512BF16 || level == SV_ISA_AMX;
#if defined(SV_VNNI_KERNELS)
    if (avx512 && has_vnni) return &sv_quant_isa_avx512vnni;
#endif
#if defined(SV_X86_KERNELS)
    if (avx512 || level == SV_ISA_AVX2) return &sv_quant_isa_avx2;
#endif
    (void)has_vnni;
    (void)avx512;
    return &sv_quant_isa_portable; /* NEON: the portable C, which the compiler vectorises there */
}

/* ---- AMX: the tile state from Linux, then the self-check; once per process ---- */

static pthread_once_t amx_once = PTHREAD_ONCE_INIT;
static const sv_amx_isa *amx_enabled; /* set by enable_amx if both pass */
static char amx_why[200] = "absent";  /* sv_amx_status() when amx_enabled is NULL */

#if defined(SV_AMX_KERNELS) && defined(SV_BF16_KERNELS) && defined(__linux__)
enum { ARCH_GET_XCOMP_PERM_ = 0x1022, ARCH_REQ_XCOMP_PERM_ = 0x1023, XFEATURE_XTILEDATA_ = 18 };

/* Linux (5.16+) starts every process without the tile data state: using a tile instruction before asking
 * for it is a SIGILL.  The grant is for the whole process, threads started earlier included. */
static int request_tile_state(char *why, size_t why_size) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA_) != 0) {
        snprintf(why, why_size, "refused: Linux did not grant the tile state (arch_prctl: %s)", strerror(errno));
        return 0;
    }
    unsigned long permitted = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM_, &permitted) != 0 || !(permitted >> XFEATURE_XTILEDATA_ & 1)) {
        snprintf(why, why_size, "refused: the tile state is not in this process's permitted features");
        return 0;
    }
    return 1;
}

static void enable_amx(void) {
    if (!request_tile_state(amx_why, sizeof amx_why)) return;
    char why[160];
    if (!sv_amx_self_check(&sv_amx_isa_tiles, why, sizeof why)) {
        snprintf(amx_why, sizeof amx_why, "failed self-check: %s", why);
        return;
    }
    amx_enabled = &sv_amx_isa_tiles;
}
#else
static void enable_amx(void) {} /* no AMX kernels in this build, or not Linux: level amx is never detected */
#endif

const sv_amx_isa *sv_amx_for(sv_isa_level level) {
    pthread_once(&detect_once, choose);
    /* Not where SMOLVISION_ISA chose a lower level: test hooks naming level amx get nothing then either. */
    if (level != SV_ISA_AMX || selected != SV_ISA_AMX) return NULL;
    pthread_once(&amx_once, enable_amx);
    return amx_enabled;
}

const char *sv_amx_status(void) {
    pthread_once(&detect_once, choose);
    if (supported != SV_ISA_AMX) return "absent";
    if (selected != SV_ISA_AMX) return "off (SMOLVISION_ISA)";
    return sv_amx_for(SV_ISA_AMX) ? "on" : amx_why;
}
