/* fuzz_safetensors.c - libFuzzer harness for the safetensors header parser
 * (st_open_memory, the same code that validates mapped files).  Every tensor
 * it accepts must lie inside the input: its first and last bytes are read, so
 * ASan flags any view that escapes the buffer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A private copy so the buffer ends exactly where the input does. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    st_archive a;
    if (st_open_memory(&a, copy, size, "fuzz.safetensors") == SV_OK) {
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < a.n_tensors; i++) {
            const st_tensor *t = &a.tensors[i];
            if (t->nbytes != (size_t)t->numel * st_dtype_size(t->dtype)) abort();
            if (t->nbytes) sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
            if (st_find(&a, t->name) != t) abort();
        }
        (void)sink;
        st_close(&a);
    }
    free(copy);
    return 0;
}
