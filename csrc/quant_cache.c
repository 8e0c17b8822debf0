/* quant_cache.c - load option quant: quantizes the text decoder's linear
 * weights once, keeps them in a cache file, and points the model at them.
 *
 * The cache file (native byte order; a per-machine cache, not a format to ship):
 *
 *   [0, 64)             header: magic, format version, quant, tensor count, key length, table and data
 *                       offsets, file size, FNV-1a checksum of bytes [0, data_offset) (this field zeroed)
 *   [64, 64 + key)      the key: format version, quant and each checkpoint file's name, size and mtime_ns
 *   table               per tensor: rows, cols, offset of its region (quant.h layout)
 *   data_offset..       the regions, in bind order (layer by layer q, k, v, o, gate, up, down; the head)
 *
 * Nothing in a file is trusted: the expected header, key and table are computed
 * from the model and must match byte for byte, and the file size exactly, before
 * the regions are used.  A missing or mismatching file is rebuilt in a temporary
 * file next to it (fallocated, so a full disk is an error and never SIGBUS), made
 * durable (msync, fsync) and renamed over the old one; a failure removes it.  If
 * the cache cannot be written the weights are quantized into anonymous memory.
 *
 * Either way the weights end up in anonymous memory advised for transparent huge
 * pages (a valid file is copied in, in parallel, and unmapped): decode streams
 * them once per token, and on 2 MiB pages the int8 kernels stream 5-10% faster
 * than through the 4 KiB pages of a file mapping (A/B in one process, README). */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MADV_HUGEPAGE */
#include "quant.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif
#include "kernels.h"
#include "model.h"

#define CACHE_MAGIC "SVQUANT\0"
#define CACHE_VERSION 1u /* bump when the layout or the quantizer changes: old files are then rebuilt */
enum { ROW_BLOCK = 16 };

typedef struct {
    char magic[8];
    uint32_t version, quant, n_tensors, key_bytes;
    uint64_t table_offset, data_offset, file_bytes, checksum;
    uint64_t reserved;
} cache_header;

typedef struct {
    int64_t rows, cols, offset;
} cache_entry;

_Static_assert(sizeof(cache_header) == 64, "the header is 64 bytes");

/* What is built: the matrices to quantize and the file image expected. */
typedef struct {
    sv_model *m;
    st_dtype type;
    int32_t quant;
    sv_matrix **targets; /* [n] in the model's text weights */
    int64_t n;
    char *key;
    size_t key_bytes;
    cache_header header;  /* checksum 0 until the image is written */
    cache_entry *table;   /* [n] */
    sv_log_fn log;
    void *log_user;
} plan;

static void say(const plan *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const plan *p, const char *fmt, ...) {
    if (!p->log) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->log(p->log_user, msg);
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
    const unsigned char *b = data;
    for (size_t i = 0; i < len; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Appends to a growing heap string; 0 on out of memory (and frees it). */
static int append(char **s, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int append(char **s, size_t *len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *grown = need < 0 ? NULL : realloc(*s, *len + (size_t)need + 1);
    if (!grown) {
        free(*s);
        *s = NULL;
        return 0;
    }
    va_start(ap, fmt);
    vsnprintf(grown + *len, (size_t)need + 1, fmt, ap);
    va_end(ap);
    *s = grown;
    *len += (size_t)need;
    return 1;
}

static int64_t mtime_ns(const struct stat *st) {
#ifdef __APPLE__
    return (int64_t)st->st_mtimespec.tv_sec * 1000000000 + st->st_mtimespec.tv_nsec;
#else
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
#endif
}

static sv_status make_key(plan *p) {
    size_t len = 0;
    char *key = NULL;
    if (!append(&key, &len, "smolvision quant cache v%u; %s; block %d;", CACHE_VERSION,
                p->type == ST_Q8 ? "q8" : "q4", SV_QBLOCK))
        return sv_fail(SV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < p->m->st.n_files; i++) {
        const char *path = p->m->st.files[i].path, *slash = strrchr(path, '/');
        struct stat st;
        if (stat(path, &st) != 0) {
            free(key);
            return sv_fail(SV_ERR_IO, "%s: %s", path, strerror(errno));
        }
        if (!append(&key, &len, " %s %lld %lld;", slash ? slash + 1 : path, (long long)st.st_size,
                    (long long)mtime_ns(&st)))
            return sv_fail(SV_ERR_NOMEM, "out of memory");
    }
    p->key = key;
    p->key_bytes = len;
    return SV_OK;
}

static sv_status make_plan(plan *p) {
    text_weights *w = &p->m->text;
    int64_t layers = p->m->cfg.text_layers;
    p->n = layers * 7 + 1;
    p->targets = calloc((size_t)p->n, sizeof *p->targets);
    p->table = calloc((size_t)p->n, sizeof *p->table);
    if (!p->targets || !p->table) return sv_fail(SV_ERR_NOMEM, "out of memory");
    int64_t k = 0;
    for (int64_t i = 0; i < layers; i++) {
        text_layer *l = &w->layers[i];
        sv_matrix *list[7] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
        for (int j = 0; j < 7; j++) p->targets[k++] = list[j];
    }
    p->targets[k++] = &w->lm_head;
    sv_status s = make_key(p);
    if (s) return s;
    int64_t offset = sv_align64(sv_align64(64 + (int64_t)p->key_bytes) + p->n * (int64_t)sizeof(cache_entry));
    cache_header *h = &p->header;
    memcpy(h->magic, CACHE_MAGIC, 8);
    h->version = CACHE_VERSION;
    h->quant = (uint32_t)p->quant;
    h->n_tensors = (uint32_t)p->n;
    h->key_bytes = (uint32_t)p->key_bytes;
    h->table_offset = (uint64_t)sv_align64(64 + (int64_t)p->key_bytes);
    h->data_offset = (uint64_t)offset;
    for (int64_t i = 0; i < p->n; i++) {
        const sv_matrix *t = p->targets[i];
        p->table[i] = (cache_entry){t->rows, t->cols, offset};
        offset += sv_q_matrix_bytes(p->type, t->rows, t->cols);
    }
    h->file_bytes = (uint64_t)offset;
    return SV_OK;
}

static uint64_t image_checksum(const unsigned char *image, uint64_t data_offset) {
    cache_header h;
    memcpy(&h, image, sizeof h);
    h.checksum = 0;
    uint64_t sum = fnv1a(0xcbf29ce484222325ull, &h, sizeof h);
    return fnv1a(sum, image + sizeof h, (size_t)data_offset - sizeof h);
}

/* NULL if the mapped file image is exactly what the plan expects, else why not. */
static const char *mismatch(const plan *p, const unsigned char *image, uint64_t size) {
    const cache_header *want = &p->header;
    cache_header got;
    if (size < sizeof got) return "it is truncated";
    memcpy(&got, image, sizeof got);
    if (memcmp(got.magic, CACHE_MAGIC, 8) != 0) return "it is not a smolvision quantization cache";
    if (got.version != want->version) return "it has another format version";
    if (got.quant != want->quant) return "it holds another quantization";
    if (size != want->file_bytes || got.file_bytes != want->file_bytes) return "it is truncated or has the wrong size";
    if (got.key_bytes != want->key_bytes || got.table_offset != want->table_offset ||
        memcmp(image + 64, p->key, p->key_bytes) != 0)
        return "the checkpoint changed since it was written (stale)";
    if (got.n_tensors != want->n_tensors || got.data_offset != want->data_offset ||
        memcmp(image + want->table_offset, p->table, (size_t)p->n * sizeof *p->table) != 0)
        return "its tensor table does not match the model";
    if (got.checksum != image_checksum(image, want->data_offset)) return "its header checksum is wrong (corrupt)";
    return NULL;
}

/* ---- quantizing into an image ---- */

typedef struct {
    const plan *p;
    unsigned char *image;
    sv_pool *pool;
    int64_t t; /* the tensor being quantized */
} fill_job;

static void fill_task(void *arg, int64_t begin, int64_t end, int thread) {
    const fill_job *j = arg;
    const sv_matrix *src = j->p->targets[j->t];
    sv_matrix dst = {j->image + j->p->table[j->t].offset, j->p->type, src->rows, src->cols};
    float *row = sv_pool_scratch(j->pool, thread); /* cols <= 2^20 floats: the scratch holds one row */
    int64_t r1 = end * ROW_BLOCK < src->rows ? end * ROW_BLOCK : src->rows;
    for (int64_t r = begin * ROW_BLOCK; r < r1; r++) {
        sv_matrix_row(row, src, r);
        sv_q_quantize_row(dst.dtype, (uint8_t *)sv_q_codes(&dst, r), (uint16_t *)sv_q_scales(&dst, r), row,
                          src->cols);
    }
}

/* Writes the whole image (header, key, table, every quantized tensor) into image[file_bytes]. */
static void fill_image(const plan *p, unsigned char *image) {
    memcpy(image, &p->header, sizeof p->header);
    memcpy(image + sizeof p->header, p->key, p->key_bytes);
    memcpy(image + p->header.table_offset, p->table, (size_t)p->n * sizeof *p->table);
    fill_job job = {p, image, p->m->ctx.pool, 0};
    for (job.t = 0; job.t < p->n; job.t++)
        sv_pool_run(p->m->ctx.pool, fill_task, &job, (p->targets[job.t]->rows + ROW_BLOCK - 1) / ROW_BLOCK);
    uint64_t sum = image_checksum(image, p->header.data_offset);
    memcpy(image + offsetof(cache_header, checksum), &sum, sizeof sum);
}

/* Builds the cache file at path via a temporary file.  On failure nothing is left behind and *why
 * says what went wrong (errno text), for the caller's message. */
static int write_cache(const plan *p, const char *path, char *why, size_t why_len) {
    size_t n = strlen(path) + 64;
    char *tmp = malloc(n);
    if (!tmp) {
        snprintf(why, why_len, "out of memory");
        return 0;
    }
    static unsigned counter;
    snprintf(tmp, n, "%s.tmp.%ld.%u", path, (long)getpid(), __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    const char *step = "create";
    void *map = MAP_FAILED;
    int ok = 0, err = 0;
    if (fd >= 0) {
        size_t size = (size_t)p->header.file_bytes;
        step = "allocate";
        if ((err = posix_fallocate(fd, 0, (off_t)size)) == 0) {
            step = "map";
            map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (map != MAP_FAILED) {
                fill_image(p, map);
                step = "sync";
                ok = msync(map, size, MS_SYNC) == 0 && fsync(fd) == 0;
                if (!ok) err = errno;
                munmap(map, size);
            } else {
                err = errno;
            }
        }
        if (close(fd) != 0 && ok) ok = 0, err = errno, step = "close";
        if (ok && rename(tmp, path) != 0) ok = 0, err = errno, step = "rename";
        if (!ok) unlink(tmp);
    } else {
        err = errno;
    }
    if (ok) { /* make the rename durable too */
        char *dir = strdup(path);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash) *slash = '\0';
        int dfd = dir ? open(slash ? (dir[0] ? dir : "/") : ".", O_RDONLY | O_CLOEXEC) : -1;
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    } else {
        snprintf(why, why_len, "cannot %s %s: %s", step, tmp, strerror(err));
    }
    free(tmp);
    return ok;
}

/* Maps path read-only if it is exactly the expected image; else NULL with *why (a missing file: why = ""). */
static void *map_valid(const plan *p, const char *path, char *why, size_t why_len) {
    why[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno != ENOENT) snprintf(why, why_len, "it cannot be opened (%s)", strerror(errno));
        return NULL;
    }
    struct stat st;
    void *map = MAP_FAILED;
    const char *bad = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        bad = "it is not a regular file";
    } else if ((uint64_t)st.st_size < sizeof(cache_header) || (uint64_t)st.st_size != p->header.file_bytes) {
        bad = "it is truncated or has the wrong size";
    } else {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) bad = "it cannot be mapped";
        else if ((bad = mismatch(p, map, (uint64_t)st.st_size))) munmap(map, (size_t)st.st_size), map = MAP_FAILED;
    }
    close(fd);
    if (bad) snprintf(why, why_len, "%s", bad);
    return map == MAP_FAILED ? NULL : map;
}

/* Anonymous memory for the weights: `bytes` at a 2 MiB boundary, advised for huge pages where the
 * system has them (only advice: small pages work the same, a little slower).  raw and raw_bytes say
 * what to munmap.  NULL when out of memory. */
static unsigned char *alloc_weights(size_t bytes, void **raw, size_t *raw_bytes) {
    const size_t huge = (size_t)2 << 20;
    *raw_bytes = bytes + huge;
    *raw = mmap(NULL, *raw_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (*raw == MAP_FAILED) return NULL;
    unsigned char *aligned = (unsigned char *)(((uintptr_t)*raw + huge - 1) & ~(uintptr_t)(huge - 1));
#ifdef MADV_HUGEPAGE
    madvise(aligned, bytes, MADV_HUGEPAGE);
#endif
    return aligned;
}

typedef struct {
    unsigned char *dst;
    const unsigned char *src;
    size_t bytes;
} copy_job;

enum { COPY_CHUNK = 1 << 20 };

/* Copies chunks [begin, end), dropping each chunk's file pages once copied so that peak RSS does not
 * hold the weights twice. */
static void copy_task(void *arg, int64_t begin, int64_t end, int thread) {
    (void)thread;
    const copy_job *j = arg;
    for (int64_t c = begin; c < end; c++) {
        size_t lo = (size_t)c * COPY_CHUNK, hi = lo + COPY_CHUNK < j->bytes ? lo + COPY_CHUNK : j->bytes;
        memcpy(j->dst + lo, j->src + lo, hi - lo);
        madvise((void *)(j->src + lo), hi - lo, MADV_DONTNEED);
    }
}

static sv_status quantize(plan *p, const char *path) {
    sv_model *m = p->m;
    const char *name = p->type == ST_Q8 ? "q8" : "q4";
    double mb = (double)p->header.file_bytes / 1e6;
    void *map = NULL;
    if (path) {
        char why[512];
        map = map_valid(p, path, why, sizeof why);
        if (!map) {
            if (why[0]) say(p, "%s: %s; rebuilding it", path, why);
            say(p, "quantizing the text decoder of %s to %s (once): writing %s (%.0f MB)", m->dir, name, path, mb);
            double start = sv_seconds();
            if (write_cache(p, path, why, sizeof why)) {
                char again[256];
                map = map_valid(p, path, again, sizeof again);
                if (map) say(p, "quantized in %.1f s", sv_seconds() - start);
                else snprintf(why, sizeof why, "the file written does not read back (%s)", again);
            }
            if (!map) say(p, "%s; quantizing in memory for this load only", why);
        }
    }
    size_t bytes = (size_t)p->header.file_bytes;
    unsigned char *image = alloc_weights(bytes, &m->qmap, &m->qmap_bytes);
    if (!image) {
        m->qmap = NULL;
        if (map) munmap(map, bytes);
        return sv_fail(SV_ERR_NOMEM, "out of memory quantizing to %s (%.0f MB)", name, mb);
    }
    if (map) {
        copy_job job = {image, map, bytes};
        sv_pool_run(m->ctx.pool, copy_task, &job, (int64_t)((bytes + COPY_CHUNK - 1) / COPY_CHUNK));
        munmap(map, bytes);
    } else {
        fill_image(p, image);
    }
    for (int64_t i = 0; i < p->n; i++) {
        sv_matrix *t = p->targets[i];
        *t = (sv_matrix){image + p->table[i].offset, p->type, t->rows, t->cols};
    }
    return SV_OK;
}

sv_status sv_quant_apply(sv_model *m, int32_t quant, const char *cache_path, sv_log_fn log, void *log_user) {
    if (quant == SV_QUANT_NONE) return SV_OK;
    plan p = {.m = m, .type = quant == SV_QUANT_Q8 ? ST_Q8 : ST_Q4, .quant = quant, .log = log, .log_user = log_user};
    sv_status s = make_plan(&p);
    if (s == SV_OK) s = quantize(&p, cache_path && cache_path[0] ? cache_path : NULL);
    if (s == SV_OK) m->quant = quant;
    free(p.targets);
    free(p.table);
    free(p.key);
    return s;
}
