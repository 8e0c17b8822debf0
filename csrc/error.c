/* error.c - see error.h. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];

sv_status sv_fail(sv_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

void sv_clear_error(void) { last_error[0] = 0; }

const char *sv_last_error(void) { return last_error; }
