/* model.h - the loaded model: config (shapes), weights (read-only views into
 * the mapped safetensors) and what the engine owns.  Written once by
 * sv_model_load(); the vision encoder and decoder only read it. */
#ifndef SV_MODEL_H
#define SV_MODEL_H

#include "kernels.h"
#include "safetensors.h"
#include "smolvision.h"

typedef struct {
    const float *ln1_w, *ln1_b;          /* [hidden] */
    sv_matrix q, k, v, o;                /* [hidden, hidden] */
    const float *q_b, *k_b, *v_b, *o_b;  /* [hidden] */
    const float *ln2_w, *ln2_b;          /* [hidden] */
    sv_matrix fc1;                       /* [intermediate, hidden] */
    const float *fc1_b;                  /* [intermediate] */
    sv_matrix fc2;                       /* [hidden, intermediate] */
    const float *fc2_b;                  /* [hidden] */
} vision_layer;

typedef struct {
    sv_matrix patch;          /* [hidden, 3*patch*patch]: the conv kernel flattened in (c, y, x) order */
    const float *patch_b;     /* [hidden] */
    sv_matrix pos;            /* [(image_size/patch)^2, hidden] */
    vision_layer *layers;     /* [vision_layers] */
    const float *post_ln_w, *post_ln_b;
    sv_matrix connector;      /* [text_hidden, hidden*scale^2] */
} vision_weights;

typedef struct {
    const float *attn_norm;                      /* [hidden] */
    sv_matrix q;                                 /* [heads*head_dim, hidden] */
    sv_matrix k, v;                              /* [kv_heads*head_dim, hidden] */
    sv_matrix o;                                 /* [hidden, heads*head_dim] */
    const float *q_b, *k_b, *v_b, *o_b;          /* NULL unless attention_bias */
    const float *mlp_norm;                       /* [hidden] */
    sv_matrix gate, up;                          /* [intermediate, hidden] */
    sv_matrix down;                              /* [hidden, intermediate] */
    const float *gate_b, *up_b, *down_b;         /* NULL unless mlp_bias */
} text_layer;

typedef struct {
    sv_matrix embed;          /* [vocab, hidden] */
    text_layer *layers;       /* [text_layers] */
    const float *norm;        /* [hidden] */
    sv_matrix lm_head;        /* [vocab, hidden]; the embedding itself when tied */
} text_weights;

struct sv_model {
    sv_config cfg;
    char *dir;
    st_archive st;
    vision_weights vision;
    text_weights text;
    float **vectors;          /* owned fp32 copies of all 1-D weights (norms, biases) */
    size_t n_vectors;
    int n_threads;
    sv_ctx ctx;               /* what the forward passes run in: the pool (owned), the precision, the profile */
    sv_tokenizer *tokenizer;  /* owned; NULL when the directory has no tokenizer.json */
    struct sv_decoder *decoder; /* the decoder's shared scratch, made by the first decoder call (decoder.h) */
    int decoder_busy;         /* a decoder call is running (calls on one model must not overlap) */
    sv_seq *oneshot;          /* the sequence of sv_generate / sv_logits, kept for the next call */
    int32_t quant;            /* load option quant (sv_quant) */
    void *qmap;               /* the region holding the quantized weights (quant_cache.c), for munmap */
    size_t qmap_bytes;
};

/* Parses config.json text into cfg, checking every size for sanity before
 * anything is allocated.  path is only used in messages. */
sv_status sv_parse_config(const char *json_text, size_t len, const char *path, sv_config *cfg);

/* Load option quant (quant_cache.c): quantizes the text decoder's linear weights of a loaded model
 * (its pool running) to quant, through the cache file at cache_path (NULL: in memory), and points
 * the model's matrices at them.  SV_QUANT_NONE does nothing. */
sv_status sv_quant_apply(sv_model *m, int32_t quant, const char *cache_path, sv_log_fn log, void *log_user);

#endif
