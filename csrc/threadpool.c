/* threadpool.c - see threadpool.h.
 *
 * A job is published by bumping an atomic generation counter; each worker
 * runs it exactly once and counts itself out of `pending`.  Decode issues a
 * few hundred short jobs per token, so both sides first spin briefly (a few
 * tens of microseconds: the gaps between the jobs of one token) and only then
 * sleep on a condition variable: waking a sleeping thread costs about 10 us,
 * as much as a small job.  The mutex guards only the sleeping: a side about to
 * sleep announces it under the mutex and re-checks, and the other side
 * signals under the mutex, so no wake-up is lost. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* Spin iterations before sleeping: a pause is ~15-65 cycles, so this is roughly 20-80 us. */
enum { SPIN_ROUNDS = 4096, YIELD_EVERY = 64 };

struct sv_pool {
    int n_threads;
    pthread_t *workers;
    float **scratch;           /* [n_scratch], SV_POOL_SCRATCH_BYTES each */
    int n_scratch;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    _Atomic uint64_t generation; /* bumped for every job, and once more to quit */
    atomic_int pending;        /* workers still running the current job */
    int sleeping_workers;      /* under mu */
    int caller_sleeping;       /* under mu */
    atomic_int quit;
    sv_task_fn fn;             /* the job: written before generation is bumped */
    void *arg;
    int64_t n;
    void *shared;              /* sv_pool_shared's buffer */
    size_t shared_bytes;
};

typedef struct {
    sv_pool *pool;
    int index;
} worker_arg;

/* One round of a spin: a pause, and now and then a yield, so that on a machine with more busy threads
 * than cores the thread being waited for gets to run. */
static void spin_pause(int round) {
    if (round % YIELD_EVERY == YIELD_EVERY - 1) sched_yield();
    else cpu_relax();
}

static void run_chunk(sv_pool *p, int t) {
    int64_t begin = p->n * t / p->n_threads, end = p->n * (t + 1) / p->n_threads;
    if (begin < end) p->fn(p->arg, begin, end, t);
}

/* Waits until generation differs from seen; returns the new value. */
static uint64_t wait_for_job(sv_pool *p, uint64_t seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        uint64_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen) return g;
        spin_pause(i);
    }
    pthread_mutex_lock(&p->mu);
    p->sleeping_workers++;
    uint64_t g;
    while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) pthread_cond_wait(&p->wake, &p->mu);
    p->sleeping_workers--;
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *raw) {
    worker_arg a = *(worker_arg *)raw;
    free(raw);
    sv_pool *p = a.pool;
    uint64_t seen = 0;
    for (;;) {
        seen = wait_for_job(p, seen);
        if (atomic_load(&p->quit)) break;
        run_chunk(p, a.index);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            if (p->caller_sleeping) pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

/* Publishes the next generation (a job, or quit) and wakes sleeping workers. */
static void publish(sv_pool *p) {
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_acq_rel);
    pthread_mutex_lock(&p->mu);
    if (p->sleeping_workers) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

sv_pool *sv_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    sv_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    p->scratch = calloc((size_t)n_threads, sizeof *p->scratch);
    if (!p->workers || !p->scratch) {
        sv_pool_free(p);
        return NULL;
    }
    for (; p->n_scratch < n_threads; p->n_scratch++) {
        void *buf;
        if (posix_memalign(&buf, 64, (size_t)SV_POOL_SCRATCH_BYTES) != 0) {
            sv_pool_free(p);
            return NULL;
        }
        p->scratch[p->n_scratch] = buf;
    }
    /* Thread 0 is the caller; workers are 1..n-1. */
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) *a = (worker_arg){p, i};
        if (!a || pthread_create(&p->workers[i], NULL, worker_main, a) != 0) {
            free(a);
            p->n_threads = i; /* only join what started */
            sv_pool_free(p);
            return NULL;
        }
    }
    return p;
}

void sv_pool_free(sv_pool *p) {
    if (!p) return;
    atomic_store(&p->quit, 1);
    publish(p);
    for (int i = 1; i < p->n_threads && p->workers; i++) pthread_join(p->workers[i], NULL);
    free(p->workers);
    for (int i = 0; i < p->n_scratch; i++) free(p->scratch[i]);
    free(p->scratch);
    free(p->shared);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p);
}

int sv_pool_threads(const sv_pool *p) { return p->n_threads; }

float *sv_pool_scratch(sv_pool *p, int thread) { return p->scratch[thread]; }

void sv_pool_run(sv_pool *p, sv_task_fn fn, void *arg, int64_t n) {
    if (n <= 0) return;
    if (p->n_threads == 1 || n == 1) {
        fn(arg, 0, n, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
    publish(p);
    run_chunk(p, 0);
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0) return;
        spin_pause(i);
    }
    pthread_mutex_lock(&p->mu);
    p->caller_sleeping = 1;
    while (atomic_load_explicit(&p->pending, memory_order_acquire)) pthread_cond_wait(&p->done, &p->mu);
    p->caller_sleeping = 0;
    pthread_mutex_unlock(&p->mu);
}

void *sv_pool_shared(sv_pool *p, size_t bytes) {
    if (bytes <= p->shared_bytes) return p->shared;
    void *buf;
    if (posix_memalign(&buf, 64, bytes) != 0) return NULL;
    free(p->shared);
    p->shared = buf;
    p->shared_bytes = bytes;
    return buf;
}
