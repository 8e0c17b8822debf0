/* safetensors.h - memory-mapped safetensors checkpoints, single-file or
 * sharded (model.safetensors.index.json).
 *
 * Every header is validated before any tensor is handed out: known dtype,
 * shape product without overflow, data_offsets matching the shape, inside the
 * file and not overlapping.  Tensor data points straight into the mapping
 * (read-only); nothing is copied at open time. */
#ifndef SV_SAFETENSORS_H
#define SV_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/matrix.h" /* st_dtype */
#include "smolvision.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER_BYTES (100u << 20) /* the format's own limit */
#define ST_MAX_TENSORS 1000000
#define ST_MAX_SHARDS 1024

typedef struct {
    const char *name;   /* NUL-terminated, owned by the archive */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;   /* inside the read-only mapping */
    size_t nbytes;
    int file;           /* index into st_archive.files */
} st_tensor;

typedef struct {
    char *path;
    void *map;
    size_t size;
    int mapped;  /* 1: map is our mmap (unmapped by st_close); 0: the caller's buffer */
    uint64_t device, inode; /* of the file mapped: st_read reads only that file */
} st_file;

typedef struct {
    st_file *files;
    int n_files;
    st_tensor *tensors;  /* sorted by name for st_find */
    size_t n_tensors;
} st_archive;

/* Opens model_dir/model.safetensors.index.json if present, otherwise
 * model_dir/model.safetensors.  On failure sets the last error and leaves
 * *a empty (safe to st_close). */
sv_status st_open_dir(st_archive *a, const char *model_dir);

/* Parses a whole safetensors file already in memory, bytes[0..size) (the
 * fuzz harness's entry; files go through the same header parser).  The
 * buffer is borrowed and must outlive the archive; name is for messages. */
sv_status st_open_memory(st_archive *a, const void *bytes, size_t size, const char *name);

const st_tensor *st_find(const st_archive *a, const char *name);

/* Copies t's bytes into dst[t->nbytes] with pread rather than through the mapping, so that reading
 * a small tensor does not map (and count in RSS) the whole 2 MiB page-cache folio around it; from
 * the mapping where the file cannot be read or is no longer the one mapped (same device and inode),
 * and for st_open_memory archives. */
void st_read(const st_archive *a, const st_tensor *t, void *dst);
void st_close(st_archive *a);

const char *st_dtype_name(st_dtype t);
size_t st_dtype_size(st_dtype t);

#endif
