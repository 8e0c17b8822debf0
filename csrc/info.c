/* info.c - version and build facts, and the deallocator for memory the
 * library hands to callers. */
#include <stdlib.h>

#include "smolvision.h"

#ifndef SV_VERSION
#error "SV_VERSION is defined by CMakeLists.txt from pyproject.toml"
#endif
#ifndef SV_BLAS_NAME
#define SV_BLAS_NAME "none"
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SV_SANITIZE "on"
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SV_SANITIZE "on"
#endif
#endif
#ifndef SV_SANITIZE
#define SV_SANITIZE "off"
#endif

const char *sv_version(void) { return SV_VERSION; }

const char *sv_build_info(void) { return "blas=" SV_BLAS_NAME " sanitize=" SV_SANITIZE; }

void sv_free(void *p) { free(p); }
