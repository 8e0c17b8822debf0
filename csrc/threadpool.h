/* threadpool.h - a persistent pool of worker threads owned by one model.
 *
 * sv_pool_run() splits the index range [0, n) into contiguous chunks, one per
 * thread, runs fn on each and returns when all are done.  The caller's thread
 * takes a chunk too, so a pool of 1 thread runs everything inline.
 *
 * Each thread also owns a scratch buffer allocated with the pool, so kernels
 * (e.g. widening a weight panel for BLAS) need no allocation per call. */
#ifndef SV_THREADPOOL_H
#define SV_THREADPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "smolvision.h"

typedef struct sv_pool sv_pool;

/* fn processes items [begin, end); thread is 0..n_threads-1 (for per-thread scratch). */
typedef void (*sv_task_fn)(void *arg, int64_t begin, int64_t end, int thread);

/* Bytes of scratch per thread: 64-byte aligned, contents undefined on entry to a task. */
#define SV_POOL_SCRATCH_BYTES ((int64_t)4 << 20)

sv_pool *sv_pool_create(int n_threads); /* NULL on failure */
void sv_pool_free(sv_pool *pool);
int sv_pool_threads(const sv_pool *pool);
/* Thread t's scratch (SV_POOL_SCRATCH_BYTES): only that thread may use it, and only inside a task. */
float *sv_pool_scratch(sv_pool *pool, int thread);
void sv_pool_run(sv_pool *pool, sv_task_fn fn, void *arg, int64_t n);

/* A buffer of at least `bytes`, 64-byte aligned, that the caller of sv_pool_run fills before a run
 * and every thread may read during it (e.g. activations rounded to BF16 once per matmul).  Grown on
 * demand, never shrunk, freed with the pool; NULL if it cannot grow.  Call it only outside tasks. */
void *sv_pool_shared(sv_pool *pool, size_t bytes);

#endif
