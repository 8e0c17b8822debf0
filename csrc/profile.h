/* profile.h - where a model's time goes, per phase (vision, prefill, decode)
 * and op class (matmul, attention, norms, activations, LM head).
 *
 * Off by default: then every call below is one branch.  When on, the ops of
 * kernels.h time themselves (sv_profile_op_begin / _end, through the sv_ctx
 * they run in) and each phase entry point is bracketed with
 * sv_profile_phase_begin() / _end(), so the time not attributed to a class
 * (embedding lookups, RoPE, residual adds, pixel shuffle) is the phase total
 * minus the classes.  One profile per model, written only by the thread
 * running that model's call. */
#ifndef SV_PROFILE_H
#define SV_PROFILE_H

#include "smolvision.h"

struct sv_profile {
    int enabled;
    int phase;     /* the sv_profile_phase being timed */
    int open_ops;  /* ops now running: only the outermost one is timed */
    double phase_start;
    double seconds[SV_PHASE_COUNT][SV_OP_COUNT];
    double total[SV_PHASE_COUNT];
    int64_t calls[SV_PHASE_COUNT];
};
typedef struct sv_profile sv_profile;

/* Monotonic seconds. */
double sv_seconds(void);

/* An op starts: returns the time now if profiling and no other op is open, else 0 (no clock read).
 * Ops nest (the fp32 attention runs matmuls): the time goes to the outermost op's class.
 * p may be NULL (not profiled). */
static inline double sv_profile_op_begin(sv_profile *p) {
    if (!p || !p->enabled) return 0.0;
    return p->open_ops++ ? 0.0 : sv_seconds();
}

/* The op begun at `since` ends: its time goes to class op in the current phase if it was the outermost. */
static inline void sv_profile_op_end(sv_profile *p, sv_profile_op op, double since) {
    if (!p || !p->enabled || p->open_ops == 0) return; /* enabled, or reset, while the op ran */
    if (--p->open_ops == 0) p->seconds[p->phase][op] += sv_seconds() - since;
}

void sv_profile_phase_begin(sv_profile *p, sv_profile_phase phase);
void sv_profile_phase_end(sv_profile *p);

#endif
