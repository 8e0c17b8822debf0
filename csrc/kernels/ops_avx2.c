/* ops_avx2.c - the small kernels built for AVX2 + FMA: ops_impl.h compiled with this
 * file's target flags (see CMakeLists.txt); dispatch.c hands the table out
 * only on CPUs that run it. */
#ifdef SV_X86_KERNELS
#define OPS_TABLE sv_ops_avx2
#include "ops_impl.h"
#endif
