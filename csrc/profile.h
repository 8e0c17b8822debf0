/* profile.h - where a model's time goes, per phase (vision, prefill, decode)
 * and op class (matmul, attention, norms, activations, LM head).
 *
 * Off by default: then every call below is one branch.  When on, the model
 * code brackets its op classes with sv_profile_now() / sv_profile_add() and
 * each phase entry point with sv_profile_phase_begin() / _end(), so the time
 * not attributed to a class (embedding lookups, RoPE, residual adds, pixel
 * shuffle) is the phase total minus the classes.  One profile per model,
 * written only by the thread running that model's call. */
#ifndef SV_PROFILE_H
#define SV_PROFILE_H

#include "smolvision.h"

struct sv_profile {
    int enabled;
    int phase; /* the sv_profile_phase being timed */
    double phase_start;
    double seconds[SV_PHASE_COUNT][SV_OP_COUNT];
    double total[SV_PHASE_COUNT];
    int64_t calls[SV_PHASE_COUNT];
};
typedef struct sv_profile sv_profile;

/* Monotonic seconds. */
double sv_seconds(void);

/* The time now if profiling, else 0 (no clock read). */
static inline double sv_profile_now(const sv_profile *p) { return p->enabled ? sv_seconds() : 0.0; }

/* Adds the time since `since` (from sv_profile_now) to op in the current phase. */
static inline void sv_profile_add(sv_profile *p, sv_profile_op op, double since) {
    if (p->enabled) p->seconds[p->phase][op] += sv_seconds() - since;
}

void sv_profile_phase_begin(sv_profile *p, sv_profile_phase phase);
void sv_profile_phase_end(sv_profile *p);

#endif
