/* fuzz_config.c - libFuzzer harness for sv_parse_config: any config.json text
 * must parse into sizes inside the documented limits or be refused. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sv_config cfg;
    if (sv_parse_config((const char *)data, size, "fuzz/config.json", &cfg) == SV_OK) {
        /* What later code divides by or allocates from must be sane. */
        if (cfg.vision_heads < 1 || cfg.text_heads < 1 || cfg.text_kv_heads < 1 || cfg.patch_size < 1 ||
            cfg.scale_factor < 1 || cfg.image_seq_len < 1 || cfg.vision_hidden % cfg.vision_heads ||
            cfg.text_heads % cfg.text_kv_heads || cfg.head_dim < 2 || cfg.image_token_id >= cfg.vocab_size ||
            cfg.image_token_id < 0)
            abort();
    }
    return 0;
}
