/* threadpool.c - see threadpool.h.  Workers sleep on a condition variable
 * between jobs; a job is published under the mutex with a generation counter
 * so each worker runs it exactly once. */
#include "threadpool.h"

#include <pthread.h>
#include <stdlib.h>

struct sv_pool {
    int n_threads;
    pthread_t *workers;
    float **scratch;      /* [n_scratch], SV_POOL_SCRATCH_BYTES each */
    int n_scratch;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;  /* bumped for every job */
    int pending;          /* workers still running the current job */
    int quit;
    sv_task_fn fn;
    void *arg;
    int64_t n;
};

typedef struct {
    sv_pool *pool;
    int index;
} worker_arg;

static void run_chunk(sv_pool *p, int t) {
    int64_t begin = p->n * t / p->n_threads, end = p->n * (t + 1) / p->n_threads;
    if (begin < end) p->fn(p->arg, begin, end, t);
}

static void *worker_main(void *raw) {
    worker_arg a = *(worker_arg *)raw;
    free(raw);
    sv_pool *p = a.pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_chunk(p, a.index);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
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
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads && p->workers; i++) pthread_join(p->workers[i], NULL);
    free(p->workers);
    for (int i = 0; i < p->n_scratch; i++) free(p->scratch[i]);
    free(p->scratch);
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->pending = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_chunk(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
