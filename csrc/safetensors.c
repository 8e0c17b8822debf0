/* safetensors.c - see safetensors.h.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header,
 * then the data region; each tensor's data_offsets are relative to the data
 * region. */
#define _DEFAULT_SOURCE /* MADV_HUGEPAGE */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "json.h"

static const struct {
    const char *name;
    st_dtype dtype;
    size_t size;
} dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_F64, 8},
    {"I64", ST_I64, 8}, {"I32", ST_I32, 4}, {"I16", ST_I16, 2},   {"I8", ST_I8, 1},
    {"U8", ST_U8, 1},   {"BOOL", ST_BOOL, 1},
};

const char *st_dtype_name(st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dtype == t) return dtypes[i].name;
    return "?";
}

size_t st_dtype_size(st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dtype == t) return dtypes[i].size;
    return 0;
}

static int lookup_dtype(const char *name, st_dtype *out) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0) {
            *out = dtypes[i].dtype;
            return 1;
        }
    return 0;
}

static uint64_t read_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Maps path and appends it to a->files. */
static sv_status map_file(st_archive *a, const char *path, int *index) {
    if (a->n_files >= ST_MAX_SHARDS) return sv_fail(SV_ERR_FORMAT, "%s: more than %d shards", path, ST_MAX_SHARDS);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* O_NONBLOCK: a FIFO must not block the open */
    if (fd < 0) return sv_fail(SV_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sv_fail(SV_ERR_IO, "%s is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return sv_fail(SV_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return sv_fail(SV_ERR_IO, "cannot map %s: %s", path, strerror(errno));
#ifdef MADV_HUGEPAGE
    /* Only advice: where the kernel keeps file pages in 2 MiB folios (ext4, xfs on Linux 6.x) the
     * pages this mapping reads in from disk become huge ones, mapped with one TLB entry each; decode
     * streams every decoder weight per token and reads them ~25% faster so.  Pages already cached
     * in small folios stay as they are. */
    madvise(map, size, MADV_HUGEPAGE);
#endif
    st_file *files = realloc(a->files, (size_t)(a->n_files + 1) * sizeof *files);
    char *copy = strdup(path);
    if (!files || !copy) {
        if (files) a->files = files;
        free(copy);
        munmap(map, size);
        return sv_fail(SV_ERR_NOMEM, "out of memory opening %s", path);
    }
    a->files = files;
    a->files[a->n_files] = (st_file){copy, map, size, 1, (uint64_t)st.st_dev, (uint64_t)st.st_ino};
    *index = a->n_files++;
    return SV_OK;
}

static int cmp_offset(const void *x, const void *y) {
    const st_tensor *a = *(const st_tensor *const *)x, *b = *(const st_tensor *const *)y;
    const char *pa = a->data, *pb = b->data;
    return pa < pb ? -1 : pa > pb;
}

/* Parses one tensor entry of a header into t (name set by the caller). */
static sv_status parse_entry(const char *path, const json_member *m, const unsigned char *data,
                             uint64_t data_size, st_tensor *t) {
    const json_value *v = &m->value;
    if (v->type != JSON_OBJECT) return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' is not an object", path, m->key);
    const char *dt = json_get_string(v, "dtype");
    if (!dt) return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has no dtype", path, m->key);
    if (!lookup_dtype(dt, &t->dtype))
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", path, m->key, dt);
    const json_value *shape = json_get(v, "shape");
    if (!shape || shape->type != JSON_ARRAY)
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has no shape", path, m->key);
    if (shape->len > ST_MAX_DIMS)
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has %zu dimensions (max %d)", path, m->key, shape->len,
                       ST_MAX_DIMS);
    t->ndim = (int)shape->len;
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        const json_value *d = &shape->items[i];
        if (d->type != JSON_NUMBER || !d->is_integer || d->integer < 0)
            return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has a bad shape", path, m->key);
        t->shape[i] = d->integer;
        if (d->integer && numel > UINT64_MAX / (uint64_t)d->integer)
            return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' shape product overflows", path, m->key);
        numel *= (uint64_t)d->integer;
    }
    size_t esize = st_dtype_size(t->dtype);
    if (numel > UINT64_MAX / esize)
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' byte size overflows", path, m->key);
    const json_value *off = json_get(v, "data_offsets");
    if (!off || off->type != JSON_ARRAY || off->len != 2 || off->items[0].type != JSON_NUMBER ||
        off->items[1].type != JSON_NUMBER || !off->items[0].is_integer || !off->items[1].is_integer ||
        off->items[0].integer < 0 || off->items[1].integer < off->items[0].integer)
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has bad data_offsets", path, m->key);
    uint64_t begin = (uint64_t)off->items[0].integer, end = (uint64_t)off->items[1].integer;
    if (end > data_size)
        return sv_fail(SV_ERR_FORMAT,
                       "%s: tensor '%s' data_offsets [%llu, %llu] run past the end of the file (data region is "
                       "%llu bytes; truncated file?)",
                       path, m->key, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)data_size);
    if (end - begin != numel * esize)
        return sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' has %llu bytes but its %s shape needs %llu", path, m->key,
                       (unsigned long long)(end - begin), dt, (unsigned long long)(numel * esize));
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(end - begin);
    t->data = data + begin;
    return SV_OK;
}

/* Parses the header of a->files[fi] and appends its tensors. */
static sv_status read_header(st_archive *a, int fi) {
    const st_file *f = &a->files[fi];
    const unsigned char *base = f->map;
    if (f->size < 8)
        return sv_fail(SV_ERR_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", f->path, f->size);
    uint64_t header_len = read_u64_le(base);
    if (header_len > ST_MAX_HEADER_BYTES)
        return sv_fail(SV_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", f->path,
                       (unsigned long long)header_len, ST_MAX_HEADER_BYTES);
    if (header_len > f->size - 8)
        return sv_fail(SV_ERR_FORMAT, "%s: header length %llu runs past the end of the %zu-byte file", f->path,
                       (unsigned long long)header_len, f->size);
    char err[256];
    json_doc *doc = json_parse((const char *)base + 8, (size_t)header_len, err, sizeof err);
    if (!doc) return sv_fail(SV_ERR_FORMAT, "%s: header is not valid JSON (%s)", f->path, err);
    const json_value *root = json_root(doc);
    if (root->type != JSON_OBJECT) {
        json_free(doc);
        return sv_fail(SV_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    }
    if (a->n_tensors + root->len > ST_MAX_TENSORS) {
        json_free(doc);
        return sv_fail(SV_ERR_FORMAT, "%s: more than %d tensors", f->path, ST_MAX_TENSORS);
    }
    st_tensor *tensors = realloc(a->tensors, (a->n_tensors + root->len + 1) * sizeof *tensors);
    if (!tensors) {
        json_free(doc);
        return sv_fail(SV_ERR_NOMEM, "out of memory reading %s", f->path);
    }
    a->tensors = tensors;
    const unsigned char *data = base + 8 + header_len;
    uint64_t data_size = f->size - 8 - header_len;
    size_t first = a->n_tensors;
    sv_status s = SV_OK;
    for (size_t i = 0; i < root->len && s == SV_OK; i++) {
        const json_member *m = &root->members[i];
        if (strcmp(m->key, "__metadata__") == 0) continue;
        st_tensor *t = &a->tensors[a->n_tensors];
        memset(t, 0, sizeof *t);
        t->file = fi;
        s = parse_entry(f->path, m, data, data_size, t);
        if (s == SV_OK) {
            t->name = strdup(m->key);
            if (!t->name) s = sv_fail(SV_ERR_NOMEM, "out of memory reading %s", f->path);
            else a->n_tensors++;
        }
    }
    json_free(doc);
    if (s != SV_OK) return s;

    /* No two tensors of this file may share bytes. */
    size_t n = a->n_tensors - first;
    const st_tensor **order = malloc((n + 1) * sizeof *order);
    if (!order) return sv_fail(SV_ERR_NOMEM, "out of memory reading %s", f->path);
    for (size_t i = 0; i < n; i++) order[i] = &a->tensors[first + i];
    qsort(order, n, sizeof *order, cmp_offset);
    const unsigned char *covered = data;
    const char *prev = NULL;
    for (size_t i = 0; i < n && s == SV_OK; i++) {
        const unsigned char *start = order[i]->data;
        if (order[i]->nbytes == 0) continue;
        if (start < covered)
            s = sv_fail(SV_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", f->path, prev, order[i]->name);
        covered = start + order[i]->nbytes;
        prev = order[i]->name;
    }
    free(order);
    return s;
}

static int cmp_name(const void *x, const void *y) {
    return strcmp(((const st_tensor *)x)->name, ((const st_tensor *)y)->name);
}

static sv_status finish(st_archive *a) {
    qsort(a->tensors, a->n_tensors, sizeof *a->tensors, cmp_name);
    for (size_t i = 1; i < a->n_tensors; i++)
        if (strcmp(a->tensors[i - 1].name, a->tensors[i].name) == 0)
            return sv_fail(SV_ERR_FORMAT, "tensor '%s' appears twice (in %s and %s)", a->tensors[i].name,
                           a->files[a->tensors[i - 1].file].path, a->files[a->tensors[i].file].path);
    return SV_OK;
}

sv_status st_open_memory(st_archive *a, const void *bytes, size_t size, const char *name) {
    memset(a, 0, sizeof *a);
    a->files = malloc(sizeof *a->files);
    char *copy = strdup(name);
    if (!a->files || !copy) {
        free(copy);
        st_close(a);
        return sv_fail(SV_ERR_NOMEM, "out of memory opening %s", name);
    }
    a->files[0] = (st_file){copy, (void *)bytes, size, 0, 0, 0};
    a->n_files = 1;
    sv_status s = read_header(a, 0);
    if (s == SV_OK) s = finish(a);
    if (s != SV_OK) st_close(a);
    return s;
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* A shard name from an index must stay inside the model directory. */
static int is_plain_file_name(const char *name) {
    return name[0] && name[0] != '.' && !strchr(name, '/') && !strchr(name, '\\');
}

static sv_status open_index(st_archive *a, const char *dir, const char *index_path) {
    char err[256];
    size_t len;
    char *text = json_read_file(index_path, 64u << 20, &len, err, sizeof err);
    if (!text) return sv_fail(SV_ERR_IO, "%s", err);
    json_doc *doc = json_parse(text, len, err, sizeof err);
    free(text);
    if (!doc) return sv_fail(SV_ERR_FORMAT, "%s: not valid JSON (%s)", index_path, err);
    const json_value *map = json_get(json_root(doc), "weight_map");
    sv_status s = SV_OK;
    if (!map || map->type != JSON_OBJECT || map->len == 0)
        s = sv_fail(SV_ERR_FORMAT, "%s: no weight_map object", index_path);
    /* Open each distinct shard once, in order of first mention. */
    for (size_t i = 0; s == SV_OK && i < map->len; i++) {
        const json_value *fname = &map->members[i].value;
        if (fname->type != JSON_STRING || !is_plain_file_name(fname->str)) {
            s = sv_fail(SV_ERR_FORMAT, "%s: weight_map entry '%s' does not name a file in the model directory",
                        index_path, map->members[i].key);
            break;
        }
        int seen = 0;
        for (int k = 0; k < a->n_files && !seen; k++) {
            const char *base = strrchr(a->files[k].path, '/');
            seen = strcmp(base ? base + 1 : a->files[k].path, fname->str) == 0;
        }
        if (seen) continue;
        char *path = join_path(dir, fname->str);
        if (!path) { s = sv_fail(SV_ERR_NOMEM, "out of memory"); break; }
        int fi = 0;
        s = map_file(a, path, &fi);
        free(path);
        if (s == SV_OK) s = read_header(a, fi);
    }
    if (s == SV_OK) s = finish(a);
    /* Every tensor the index promises must be in the shard it names. */
    for (size_t i = 0; s == SV_OK && i < map->len; i++) {
        const st_tensor *t = st_find(a, map->members[i].key);
        const char *base = t ? strrchr(a->files[t->file].path, '/') : NULL;
        if (!t || strcmp(base ? base + 1 : a->files[t->file].path, map->members[i].value.str) != 0)
            s = sv_fail(SV_ERR_FORMAT, "%s: tensor '%s' is not in %s", index_path, map->members[i].key,
                        map->members[i].value.str);
    }
    json_free(doc);
    return s;
}

sv_status st_open_dir(st_archive *a, const char *dir) {
    memset(a, 0, sizeof *a);
    char *index = join_path(dir, "model.safetensors.index.json");
    char *single = join_path(dir, "model.safetensors");
    sv_status s;
    if (!index || !single) {
        s = sv_fail(SV_ERR_NOMEM, "out of memory");
    } else if (access(index, F_OK) == 0 || errno != ENOENT) { /* a link loop is an error, not "absent" */
        s = open_index(a, dir, index);
    } else if (access(single, F_OK) == 0 || errno != ENOENT) {
        int fi = 0;
        s = map_file(a, single, &fi);
        if (s == SV_OK) s = read_header(a, fi);
        if (s == SV_OK) s = finish(a);
    } else {
        s = sv_fail(SV_ERR_IO, "%s has no model.safetensors or model.safetensors.index.json", dir);
    }
    free(index);
    free(single);
    if (s != SV_OK) st_close(a);
    return s;
}

void st_read(const st_archive *a, const st_tensor *t, void *dst) {
    const st_file *f = &a->files[t->file];
    size_t done = 0;
    int fd = f->mapped ? open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC) : -1;
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || (uint64_t)st.st_dev != f->device || (uint64_t)st.st_ino != f->inode ||
                    (size_t)st.st_size != f->size)) {
        close(fd); /* not the file that was mapped (replaced since?): read the mapping */
        fd = -1;
    }
    if (fd >= 0) {
        off_t at = (off_t)((const char *)t->data - (const char *)f->map);
        while (done < t->nbytes) {
            ssize_t got = pread(fd, (char *)dst + done, t->nbytes - done, at + (off_t)done);
            if (got <= 0) break;
            done += (size_t)got;
        }
        close(fd);
    }
    if (done < t->nbytes) memcpy((char *)dst + done, (const char *)t->data + done, t->nbytes - done);
}

const st_tensor *st_find(const st_archive *a, const char *name) {
    size_t lo = 0, hi = a->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(a->tensors[mid].name, name);
        if (c == 0) return &a->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

void st_close(st_archive *a) {
    for (size_t i = 0; i < a->n_tensors; i++) free((char *)a->tensors[i].name);
    free(a->tensors);
    for (int i = 0; i < a->n_files; i++) {
        if (a->files[i].mapped) munmap(a->files[i].map, a->files[i].size);
        free(a->files[i].path);
    }
    free(a->files);
    memset(a, 0, sizeof *a);
}
