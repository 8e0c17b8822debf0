/* matrix.h - the weight view every kernel takes: a row-major matrix in one of
 * the element types below.  The bottom of the kernel layer: it depends on
 * nothing, and the safetensors reader takes its dtypes from here. */
#ifndef SV_KERNELS_MATRIX_H
#define SV_KERNELS_MATRIX_H

#include <stdint.h>

/* The element types of a checkpoint's tensors.  ST_Q8 and ST_Q4 never occur in a file: they are the
 * engine's quantized weight formats (quant.h), here so one sv_matrix type carries every weight the
 * matmul driver takes. */
typedef enum { ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_Q8, ST_Q4 } st_dtype;

/* A weight matrix W[rows, cols], row-major, in the checkpoint's dtype (ST_F32, ST_F16 or ST_BF16),
 * pointing into the mapping; or quantized (ST_Q8, ST_Q4: codes then block scales in one region, laid
 * out as quant.h says, pointing into the quantization cache). */
typedef struct {
    const void *data;
    st_dtype dtype;
    int64_t rows, cols;
} sv_matrix;

#endif
