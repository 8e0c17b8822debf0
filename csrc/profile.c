/* profile.c - see profile.h; the public entry points are in smolvision.h. */
#include "profile.h"

#include <string.h>
#include <time.h>

#include "model.h"

double sv_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void sv_profile_phase_begin(sv_profile *p, sv_profile_phase phase) {
    p->phase = phase;
    if (p->enabled) p->phase_start = sv_seconds();
}

void sv_profile_phase_end(sv_profile *p) {
    if (!p->enabled) return;
    p->total[p->phase] += sv_seconds() - p->phase_start;
    p->calls[p->phase]++;
}

void sv_profile_enable(sv_model *m, int32_t on) {
    if (!m) return;
    memset(m->ctx.profile, 0, sizeof *m->ctx.profile);
    m->ctx.profile->enabled = on != 0;
}

int32_t sv_profile_enabled(const sv_model *m) { return m && m->ctx.profile->enabled; }

void sv_profile_read(const sv_model *m, double *seconds, double *totals, int64_t *calls) {
    if (!m) return;
    const sv_profile *p = m->ctx.profile;
    for (int ph = 0; ph < SV_PHASE_COUNT; ph++) {
        for (int op = 0; op < SV_OP_COUNT; op++) seconds[ph * SV_OP_COUNT + op] = p->seconds[ph][op];
        totals[ph] = p->total[ph];
        calls[ph] = p->calls[ph];
    }
}
