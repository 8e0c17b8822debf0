/* error.h - the last-error message behind sv_last_error().
 *
 * The message is thread-local (like errno), so two models used from two
 * threads never see each other's errors. */
#ifndef SV_ERROR_H
#define SV_ERROR_H

#include "smolvision.h"

/* Formats the message, stores it and returns code, so failures read as
 * `return sv_fail(SV_ERR_FORMAT, "%s: bad header", path);` */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
sv_status sv_fail(sv_status code, const char *fmt, ...);

void sv_clear_error(void);

#endif
